"""Real serving test artifacts: tiny exported models in a tmp BentoML home, and the shared server.

The models are the three families at a tiny size with random weights, exported and registered by
training.random_models exactly as `galaxyvit export` does, so the service loads what production
loads. Servers are serving.process.ServerProcess: 127.0.0.1, a free port, stopped by PID in teardown.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from serving.process import ServerProcess
from training.random_models import export_random_models

ROOT = Path(__file__).resolve().parents[1]
MODEL_NAMES = ("vit", "linformer", "vitbase")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    """(BentoML home holding galaxyvit-vit/linformer/vitbase, {name: exported model dir}).

    The checkpoints record a validation accuracy of 0.5, which the service reports in /metrics."""
    base = tmp_path_factory.mktemp("serving-models")
    home = base / "bentoml_home"
    return home, export_random_models(base, home, MODEL_NAMES, tiny=True, valid_acc=0.5)


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="session")
def server(tiny_models, tmp_path_factory):
    """One server, one API worker, all three models; default model vit."""
    home, _ = tiny_models
    settings = {
        "models": MODEL_NAMES,
        "default_model": "vit",
        "max_images": 8,
        "max_upload_bytes": 3 * 1024 * 1024,
        "max_pixels": 2000 * 2000,
        "intra_op_threads": 1,
        # the batcher's latency budget: 50 ms made it shed the concurrency test's requests (503) on a busy box
        "max_latency_ms": 5000,
    }
    with ServerProcess(settings, store=home, workdir=tmp_path_factory.mktemp("server1"), ready_timeout=180) as srv:
        yield srv
