"""Integrity: tampered artifacts stop the service, no unsafe deserialisation in the code, uploads stay in memory.

(The bento container's non-root user is checked by tests/test_serving_workers.py after `bentoml build`.)
"""

from __future__ import annotations

import ast
import io
import os
import secrets
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image, PngImagePlugin
from serving_fixtures import ROOT

from serving.process import ServerNotReady, ServerProcess

CODE_DIRS = ("galaxyvit", "training", "serving", "load_tests", "app", "benchmarks", "scripts", "tests")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "cloudpickle"}


def copy_store(models_home: Path, dest: Path) -> Path:
    """A private copy of the BentoML model store (the original stays intact for the other tests)."""
    shutil.copytree(models_home / "models", dest / "models", symlinks=True)
    return dest


@pytest.mark.parametrize("damage", ["flipped_byte", "missing_file", "card_sha256"])
def test_tampered_model_stops_the_service_with_a_clear_error(tiny_models, tmp_path, damage):
    home = copy_store(tiny_models[0], tmp_path / "store")
    (model_dir,) = [p for p in (home / "models" / "galaxyvit-vit").iterdir() if p.name != "latest"]
    onnx, card = model_dir / "fp32.onnx", model_dir / "fp32.card.json"
    if damage == "flipped_byte":
        data = bytearray(onnx.read_bytes())
        data[len(data) // 2] ^= 0x01
        onnx.write_bytes(bytes(data))
    elif damage == "missing_file":
        onnx.unlink()
    else:
        card.write_text(card.read_text().replace('"sha256": "', '"sha256": "0'))
    with pytest.raises(ServerNotReady, match="exited with code") as failure:
        ServerProcess({"models": "vit,linformer"}, store=home, workdir=tmp_path / "run", ready_timeout=120).start()
    message = str(failure.value)
    assert "IntegrityError: refusing to serve model 'vit'" in message, message[-2000:]
    assert ("does not match its model card" if damage != "missing_file" else "is missing") in message


def unsafe_deserialisation(source: str, filename: str = "<code>") -> list[str]:
    """Places that unpickle: pickle-family imports, torch.load without weights_only=True, allow_pickle=True."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                if name.split(".")[0] in PICKLE_MODULES:
                    problems.append(f"{where}: imports {name}")
        elif isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            keywords = {k.arg: k.value for k in node.keywords}
            if func.endswith("read_pickle"):
                problems.append(f"{where}: {func}")
            if func == "torch.load" or func.endswith(".torch.load"):
                safe = keywords.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}: torch.load without weights_only=True")
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                problems.append(f"{where}: {func}(allow_pickle=...)")
    return problems


def test_the_scanner_finds_unsafe_deserialisation():
    bad = (
        "import pickle\nfrom joblib import load\nimport torch, numpy as np\n"
        "torch.load('x.pt')\ntorch.load('x.pt', weights_only=False)\nnp.load('a.npy', allow_pickle=True)\n"
        "import pandas as pd\npd.read_pickle('f')\n"
    )
    assert len(unsafe_deserialisation(bad)) == 6
    good = "import torch\ntorch.load(path, map_location='cpu', weights_only=True)\nnp.load('a.npy')\n"
    assert unsafe_deserialisation(good) == []


def test_no_unsafe_deserialisation_in_the_project():
    files = [p for d in CODE_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 30 and ROOT / "training" / "checkpoint.py" in files
    problems = [msg for path in files for msg in unsafe_deserialisation(path.read_text(), str(path.relative_to(ROOT)))]
    assert problems == [], "\n".join(problems)


def marked_png(marker: str) -> bytes:
    """A 1.5 MB PNG (noise) carrying `marker` in a text chunk: big enough for Starlette to spool it."""
    info = PngImagePlugin.PngInfo()
    info.add_text("marker", marker)
    buf = io.BytesIO()
    noise = np.random.default_rng(1).integers(0, 256, (720, 720, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buf, format="PNG", pnginfo=info, compress_level=1)
    return buf.getvalue()


def files_containing(roots: list[Path], needle: bytes, since: float) -> list[Path]:
    """Files under `roots` modified since `since` whose bytes contain `needle`."""
    found = []
    for root in roots:
        for folder, dirs, names in os.walk(root):
            dirs[:] = [d for d in dirs if d not in (".git", ".venv", "__pycache__")]
            for name in names:
                path = Path(folder, name)
                try:
                    if path.is_file() and path.stat().st_mtime >= since and needle in path.read_bytes():
                        found.append(path)
                except OSError:
                    pass
    return found


def test_uploads_never_reach_the_filesystem(server):
    """Uploads are decoded from memory; the only place they may spool to is the system temp dir."""
    marker = secrets.token_hex(16)
    blob = marked_png(marker)
    assert len(blob) > 1024 * 1024 and marker.encode() in blob
    start = time.time() - 1
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for k in range(4):
            r = client.post("/classify", files=[("images", (f"upload{k}.png", blob))])
            assert r.status_code == 200, r.text
            r = client.post("/classify/raw", content=blob, headers={"Content-Type": "image/png"})
            assert r.status_code == 200, r.text
            r = client.post("/classify/raw", content=blob[:-1000], headers={"Content-Type": "image/png"})
            assert r.status_code == 400  # a truncated upload is refused, and leaves nothing behind either
    roots = [ROOT, server.log.parent, Path.home() / "bentoml"]
    assert files_containing([r for r in roots if r.exists()], marker.encode(), start) == []
