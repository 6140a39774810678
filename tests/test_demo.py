"""The README's main job, end to end at a tiny size: synthesise, train, export, serve, classify."""

import os
import re
import subprocess
import sys

from PIL import Image
from serving_fixtures import ROOT

from serving.process import free_port


def test_demo_runs_the_whole_pipeline(tmp_path):
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "bentoml_home"), "HF_HUB_OFFLINE": "1"}
    command = [
        sys.executable, "-m", "app", "demo", "--n", "96", "--epochs", "1", "--name", "tinydemo",
        "--dataset", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--port", str(free_port()),
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Predictions of galaxyvit-tinydemo:latest over HTTP" in out
    assert re.search(r"^web page: http://127\.0\.0\.1:\d+/ui ", out, re.MULTILINE), out[:3000]
    lines = out.splitlines()
    prediction = r" \d\.\d\d ±\d\.\d{3} +(yes|no)$"  # p, spread over the 8 views, the OOD flag (a rule is fitted)
    for name in ("106587.jpg", "16126.jpg", "91609.jpg"):
        assert any(re.match(rf"real GZ2 {re.escape(name)} .*{prediction}", line) for line in lines), out[-3000:]
        (path,) = [line.split(": ", 1)[1] for line in lines if line.startswith(f"attention map of {name}: ")]
        width, height = Image.open(path).size  # the figure: the 224 px crop and its overlay side by side
        assert width > 2 * 224 and height > 224
    assert sum(bool(re.match(rf"synthetic .*{prediction}", line)) for line in lines) == 1
    assert "p: calibrated probability, mean of 8 rotated/flipped views" in out
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert "classified " in out and f"predictions of the synthetic test split: {tmp_path / 'run' / 'catalogue'}" in out
    assert (tmp_path / "run" / "catalogue" / "_SUCCESS").is_file()
    assert (tmp_path / "bentoml_home" / "models" / "galaxyvit-tinydemo").is_dir()
