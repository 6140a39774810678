"""Issue #22 item 4: on the built-in trained synthetic model (data/builtin_model/synthetic-linformer), the 10 nearest
neighbours of a galaxy share its true class at least 80% of the time on its dataset's test split, through the
catalogue (`galaxyvit classify --embeddings`, as benchmarks/neighbours.py measures it). The split is rendered
again here by the generator (deterministic by seed): the 800 test galaxies of `galaxyvit synth --n 4000 --seed 0
--proportions uniform`, the dataset the model was trained on (data/builtin_model/README.md). And the script that
rebuilt its training checkpoint from the ONNX file to train it further."""

from __future__ import annotations

from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest

from catalog.job import classify_catalogue
from catalog.similar import neighbour_agreement
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from training.synthetic import _write_image, plan_dataset

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "data" / "builtin_model" / "synthetic-linformer" / "fp32.onnx"
N, SEED = 4000, 0  # the model's dataset, data/builtin_model/README.md
TTA = 8  # classify --tta 8: the embedding is the 8-view mean


@pytest.fixture(scope="module")
def test_split(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    """The dataset's test split rendered into a folder: (folder, galaxyID -> class)."""
    folder = tmp_path_factory.mktemp("synth-u4000-0")
    (folder / "images").mkdir()
    plan = plan_dataset(N, SEED, "uniform")["test"]
    with get_context("spawn").Pool(2) as pool:
        pool.map(_write_image, [(str(folder / "images"), SEED, gid, label) for gid, label in plan], chunksize=8)
    return folder, {str(gid): label for gid, label in plan}


def classify(csv: Path, out: Path, **kwargs) -> pads.Dataset:
    classify_catalogue([csv], out, onnx=MODEL, progress=False, **kwargs)
    return pads.dataset(str(out), format="parquet")


def test_the_10_nearest_neighbours_share_the_class_80_percent_of_the_time(test_split, tmp_path):
    folder, labels = test_split
    assert len(labels) == 800 and sorted(np.bincount(list(labels.values()))) == [100] * 8
    csv = tmp_path / "test.csv"
    csv.write_text("galaxyID\n" + "".join(f"{gid}\n" for gid in labels))
    out = tmp_path / "preds"
    table = classify(csv, out, id_col="galaxyID", path_template="images/{galaxyID}.jpg", root=folder,
                     embeddings=True, tta=TTA).to_table(columns=["id", "label", "error_kind"])  # fmt: skip
    assert table.column("error_kind").null_count == len(labels)
    agreement = neighbour_agreement(out, labels, k=10)
    shuffled = dict(zip(labels, np.random.default_rng(0).permutation(list(labels.values())), strict=True))
    assert agreement >= 0.80, f"10-NN class agreement {agreement:.1%}"
    assert neighbour_agreement(out, shuffled, k=10) < 0.2  # chance: 1/8 of the neighbours
    accuracy = np.mean([labels[str(i)] == y for i, y in zip(table["id"].to_pylist(), table["label"].to_pylist())])
    assert accuracy >= 0.80


def test_the_real_cutouts_stay_galaxies(tmp_path):
    """The three real GZ2 cutouts are in distribution for the model's not-a-galaxy rule."""
    csv = tmp_path / "real.csv"
    csv.write_text("id,path\n" + "".join(f"{p.stem},{p}\n" for p in sorted(REAL_SAMPLE_IMAGES.glob("*.jpg"))))
    table = classify(csv, tmp_path / "real", path_col="path").to_table(columns=["in_distribution"])
    assert table.num_rows == 3 and table.column("in_distribution").to_pylist() == [True] * 3


def test_a_training_checkpoint_is_rebuilt_from_the_onnx_file(tmp_path):
    """scripts/onnx_to_checkpoint.py: best.pt and a --resume last.pt whose model computes the ONNX model's logits
    (the script checks them against ONNX Runtime and exits 1 otherwise)."""
    import subprocess
    import sys

    from training.checkpoint import load_checkpoint, verify_resumable

    args = [MODEL, "--run", "linformer-010522", "--epoch", "36", "--valid-acc", "0.834", "--out", tmp_path]
    done = subprocess.run([sys.executable, ROOT / "scripts" / "onnx_to_checkpoint.py", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "max |logit difference| vs ONNX Runtime" in done.stdout
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["epoch"] == 36 and best["run"]["id"] == "linformer-010522"
    last = verify_resumable(tmp_path / "last.pt")
    assert last["epoch"] == 36 and last["scheduler"]["last_epoch"] == 36 and last["best_epoch"] == 36
    assert all(bool((best["model"][k] == last["model"][k]).all()) for k in best["model"])
