"""The built-in synthetic galaxies (training/synthetic.py): layout, determinism, balance, errors, learnability."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app import cli
from galaxyvit.classes import GZ2_TRAIN_COUNTS, NUM_CLASSES
from training.synthetic import SPLITS, plan_dataset, render_galaxy, write_dataset, write_preview


def _read_split(root: Path, split: str) -> tuple[list[str], list[list[int]]]:
    with open(root / f"gz2_{split}.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [[int(v) for v in row] for row in reader]


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("synth") / "d", n=48, seed=3, workers=1, progress=False)


def test_layout_and_csv_format(dataset: Path) -> None:
    assert sorted(p.name for p in dataset.iterdir()) == ["gz2_test.csv", "gz2_train.csv", "gz2_valid.csv", "images"]
    ids = []
    for split in SPLITS:
        header, rows = _read_split(dataset, split)
        assert header == ["galaxyID", "label1", "label2", "label3", "label4"]
        assert rows, split
        for gid, l1, l2, l3, l4 in rows:
            assert 0 <= l1 < NUM_CLASSES and l1 == l2 == l3 == l4
            ids.append(gid)
    assert len(ids) == len(set(ids)) == 48
    assert sorted(p.name for p in (dataset / "images").iterdir()) == sorted(f"{i}.jpg" for i in ids)
    # GZ2 ratio 99,808 / 24,952 / 31,191 of 48 = 30.72 / 7.68 / 9.60, largest remainders round up train, valid
    assert [len(_read_split(dataset, s)[1]) for s in SPLITS] == [31, 8, 9]
    with Image.open(dataset / "images" / f"{ids[0]}.jpg") as im:
        assert im.format == "JPEG" and im.mode == "RGB" and im.size == (424, 424)


def test_every_class_present_and_train_has_all(dataset: Path) -> None:
    train = {row[1] for row in _read_split(dataset, "train")[1]}
    assert train == set(range(NUM_CLASSES))


def test_same_seed_same_bytes_for_any_workers(tmp_path: Path, dataset: Path) -> None:
    again = write_dataset(tmp_path / "w2", n=48, seed=3, workers=2, progress=False)
    assert _digest(again) == _digest(dataset)
    other = write_dataset(tmp_path / "s4", n=48, seed=4, workers=1, progress=False)
    assert _digest(other) != _digest(dataset)


def test_proportions_respected() -> None:
    plan = plan_dataset(1000, seed=0)
    labels = np.array([label for split in SPLITS for _, label in plan[split]])
    expected = np.array(GZ2_TRAIN_COUNTS) / sum(GZ2_TRAIN_COUNTS) * 1000
    assert np.all(np.abs(np.bincount(labels, minlength=NUM_CLASSES) - expected) <= 1)
    # each split keeps the class balance (within rounding)
    for split in SPLITS:
        split_labels = np.array([label for _, label in plan[split]])
        share = np.bincount(split_labels, minlength=NUM_CLASSES) / len(split_labels)
        assert np.all(np.abs(share - expected / 1000) < 0.02), split
    uniform = plan_dataset(80, seed=1, proportions="uniform")
    counts = np.bincount([lab for s in SPLITS for _, lab in uniform[s]], minlength=NUM_CLASSES)
    assert counts.tolist() == [10] * NUM_CLASSES
    only_two = plan_dataset(20, proportions=[1, 0, 0, 0, 0, 0, 0, 3])
    counts = np.bincount([lab for s in SPLITS for _, lab in only_two[s]], minlength=NUM_CLASSES)
    assert counts.tolist() == [5, 0, 0, 0, 0, 0, 0, 15]


def test_rare_class_present_in_small_dataset() -> None:
    plan = plan_dataset(8, seed=0)  # GZ2 mergers are 1.4%: still one of each class
    assert sorted(label for s in SPLITS for _, label in plan[s]) == list(range(NUM_CLASSES))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 7}, "at least 8"),
        ({"n": 20, "proportions": [1, 2, 3]}, "need 8 values"),
        ({"n": 20, "proportions": [1, 1, 1, 1, 1, 1, 1, -1]}, "non-negative"),
        ({"n": 20, "proportions": [0] * 8}, "not all zero"),
        ({"n": 20, "proportions": "lots"}, "'gz2', 'uniform'"),
        ({"n": 20, "workers": 0}, "workers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        write_dataset(tmp_path / "bad", progress=False, **kwargs)


def test_refuses_non_empty_dir_unless_force(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty.*--force"):
        write_dataset(out, n=8, progress=False)
    assert cli.main(["synth", "--n", "8", "--out", str(out), "--quiet"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert cli.main(["synth", "--n", "8", "--out", str(out), "--quiet", "--force", "--workers", "1"]) == 0
    assert len(list((out / "images").iterdir())) == 8 and (out / "notes.txt").exists()


def test_render_galaxy_shape_dark_sky_and_determinism() -> None:
    for label in range(NUM_CLASSES):
        a = render_galaxy(label, np.random.default_rng([0, label]))
        assert a.shape == (424, 424, 3) and a.dtype == np.uint8
        centre = a[172:252, 172:252].astype(float).mean()
        corner = np.median(a[:60, :60].astype(float))
        assert corner < 20 and centre > corner + 5, (label, centre, corner)  # dark sky, object near the centre
        assert np.array_equal(a, render_galaxy(label, np.random.default_rng([0, label])))
    with pytest.raises(ValueError, match="label"):
        render_galaxy(8, np.random.default_rng(0))


def test_ellipticals_redder_than_spirals() -> None:
    def colour(label: int) -> float:
        ratios = []
        for j in range(6):
            a = render_galaxy(label, np.random.default_rng([1, label, j])).astype(float)
            c = a[192:232, 192:232].reshape(-1, 3).mean(0)
            ratios.append(c[0] / max(c[2], 1.0))
        return float(np.median(ratios))

    assert colour(0) > colour(5) + 0.1


def _axis_ratio(image: np.ndarray) -> float:
    """Axis ratio from second moments of the bright central pixels, Gaussian-weighted (sigma 20 px) around the
    centre so a nearby star cannot dominate."""
    a = image.astype(np.float32).sum(axis=2)
    a -= np.median(a)
    yy, xx = np.indices(a.shape)
    r2 = (yy - 212.0) ** 2 + (xx - 212.0) ** 2
    w = np.where((a > 0.2 * a[202:222, 202:222].max()) & (r2 < 60**2), a * np.exp(-r2 / (2 * 20.0**2)), 0.0)
    y = yy - (w * yy).sum() / w.sum()
    x = xx - (w * xx).sum() / w.sum()
    cxx, cyy, cxy = (w * x * x).sum(), (w * y * y).sum(), (w * x * y).sum()
    lo, hi = np.linalg.eigvalsh(np.array([[cxx, cxy], [cxy, cyy]]))
    return float(np.sqrt(max(lo, 0.0) / hi))


def test_learnable_round_vs_cigar_by_axis_ratio() -> None:
    """A one-number feature (second-moment axis ratio) separates round from cigar-shaped ellipticals well, and
    in-between sits between them: the classes carry the signal they should."""
    q = {
        label: [_axis_ratio(render_galaxy(label, np.random.default_rng([7, label, j]))) for j in range(24)]
        for label in (0, 1, 2)
    }
    correct = sum(v > 0.7 for v in q[0]) + sum(v <= 0.7 for v in q[2])  # the weighting pulls q up
    assert correct / 48 > 0.85, correct
    assert np.median(q[2]) < np.median(q[1]) < np.median(q[0])


def test_preview_montage(tmp_path: Path, dataset: Path) -> None:
    png = write_preview(tmp_path / "p.png", dataset=dataset, per_class=2)
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (2 * 200, NUM_CLASSES * 200)  # 2 inches per cutout at 100 dpi
    rendered = write_preview(tmp_path / "r.png", seed=0, per_class=1)
    assert rendered.stat().st_size > 10_000
