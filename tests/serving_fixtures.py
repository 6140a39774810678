"""Real serving test artifacts: tiny exported models in a tmp BentoML home, and `bentoml serve` subprocesses.

Models are genuinely trained-shape networks (random weights) exported by training.export.export_checkpoint,
so the service loads exactly what production loads. Servers run on 127.0.0.1 on a free port and are
stopped by PID in the fixture teardown.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import ServerNotReady, stop_server, wait_ready

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = ("vit", "linformer", "vitbase")


def build_tiny_models(home: Path, work: Path) -> dict[str, Path]:
    """Build, save (best.pt) and export three tiny models into BENTOML_HOME=home; name -> model dir."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run

    torch.manual_seed(0)
    hf_dir = work / "tiny-vitbase"
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=224, patch_size=32
    )
    ViTForImageClassification(config).save_pretrained(hf_dir)
    runs = {
        "vit": get_run("vit-102721").with_overrides(depth=2, dim=32, mlp_dim=64, heads=2),
        "linformer": get_run("linformer-010522").with_overrides(depth=1, dim=32, heads=2, k=16),
        "vitbase": get_run("vitbase-010822B"),
    }
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        dirs = {}
        for name, run in runs.items():
            model = build_model(run, weights=str(hf_dir) if run.family == "vitbase" else None)
            checkpoint = work / name / "best.pt"
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_model(checkpoint, model.eval(), run, epoch=1, valid_acc=0.5)
            export_checkpoint(checkpoint, out_root=work / "models", name=name, quiet=True, max_valid=0)
            dirs[name] = work / "models" / name
        return dirs
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """(BENTOML_HOME holding galaxyvit-vit/linformer/vitbase, {name: exported model dir})."""
    base = tmp_path_factory.mktemp("serving-models")
    home = base / "bentoml_home"
    return home, build_tiny_models(home, base)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A `bentoml serve` subprocess; `url`, `stop()`."""

    def __init__(self, models_home: Path, run_home: Path, env: dict[str, str], timeout: float = 180) -> None:
        run_home.mkdir(parents=True, exist_ok=True)
        (run_home / "models").symlink_to(models_home / "models")  # own home: BentoML's metrics dir is per home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = run_home / "server.log"
        full_env = {
            **os.environ,
            "BENTOML_HOME": str(run_home),
            "PYTHONPATH": str(ROOT),
            "BENTOML_DO_NOT_TRACK": "true",
        }
        full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        full_env.update(env)
        bentoml = Path(sys.executable).with_name("bentoml")
        self.process = subprocess.Popen(
            [
                str(bentoml),
                "serve",
                "serving.service:GalaxyClassifier",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            cwd=ROOT,
            env=full_env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(self.url, self.process, timeout, self.log)
        except ServerNotReady:
            self.stop()
            raise

    def stop(self) -> None:
        stop_server(self.process)


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory):
    """One server, one API worker, all three models; default model vit."""
    home, _ = tiny_models
    srv = Server(
        home,
        tmp_path_factory.mktemp("server1"),
        {
            "GALAXYVIT_MODELS": ",".join(MODEL_NAMES),
            "GALAXYVIT_DEFAULT_MODEL": "vit",
            "GALAXYVIT_MAX_IMAGES": "8",
            "GALAXYVIT_MAX_UPLOAD_BYTES": str(3 * 1024 * 1024),
            "GALAXYVIT_MAX_PIXELS": str(2000 * 2000),
            "GALAXYVIT_INTRA_OP_THREADS": "1",
            "GALAXYVIT_MAX_LATENCY_MS": "50",
        },
    )
    yield srv
    srv.stop()
