"""`galaxyvit similar`: nearest rows by cosine distance of the catalogue's embeddings (a row id or an image as the
query), the index saved beside the shards and rebuilt only when they change, `--odd`, the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pytest
from calibrated_models import CALIBRATED
from catalog_inputs import write_catalogue

from app.cli import main as cli_main
from catalog.inputs import ArgumentError
from catalog.job import classify_catalogue
from catalog.similar import neighbour_agreement, odd, similar
from catalog.similar_index import INDEX_FILE, INDEX_META, load_or_build
from galaxyvit.preprocess import eval_batch
from galaxyvit.store import stored_model_dir
from galaxyvit.tta import dihedral_views
from inference.decode import decode_image
from inference.runtime import load_model


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("similar"), synthetic=6)


def classify(catalogue: Path, out: Path, home: Path, **kwargs) -> None:
    options = dict(model=CALIBRATED, home=home, id_col="objid", path_col="file", decode_workers=0, progress=False)
    classify_catalogue([catalogue], out, **{**options, **kwargs})


@pytest.fixture(scope="module")
def preds(calibrated, catalogue, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("preds") / "preds"
    classify(catalogue[0], out, calibrated, embeddings=True)
    return out


def exact_neighbours(out: Path, row: int, k: int) -> tuple[list, np.ndarray]:
    """ids and cosine distances of the k rows nearest to `row`, by numpy over every embedding."""
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "embedding"])
    ok = np.array(table.column("embedding").is_valid())
    ids = np.array(table.column("id").to_pylist())[ok]
    e = np.array(table.column("embedding").drop_null().to_pylist(), np.float64)
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    query = int(np.flatnonzero(ids == row)[0])
    distances = 1 - e @ e[query]
    order = [i for i in np.argsort(distances, kind="stable") if i != query][:k]
    return ids[order].tolist(), distances[order]


def test_the_k_nearest_rows_of_a_row_id_by_cosine_distance(preds):
    table = similar(preds, "1000", k=4)
    assert table.column_names == ["rank", "id", "path", "distance", "class_name", "p_max", "ood_score",
                                  "in_distribution"]  # fmt: skip
    assert table.column("rank").to_pylist() == [1, 2, 3, 4] and 1000 not in table.column("id").to_pylist()
    ids, distances = exact_neighbours(preds, 1000, 4)
    distance = np.array(table.column("distance").to_pylist())
    np.testing.assert_allclose(distance, distances, atol=1e-5)  # a graph this small is searched exactly
    assert sorted(table.column("id").to_pylist()) == sorted(ids) and (np.diff(distance) >= -1e-7).all()
    assert (np.array(table.column("p_max").to_pylist()) > 0).all()


def test_an_image_query_is_embedded_by_the_catalogue_model(preds, catalogue):
    path, _ = catalogue
    image = path.parent / "cutouts" / "16126.jpg"  # the image of row 1001
    table = similar(preds, str(image), k=3)
    assert table.column("id")[0].as_py() == 1001 and table.column("distance")[0].as_py() == pytest.approx(0, abs=1e-5)
    with pytest.raises(ArgumentError, match="neither a row id"):
        similar(preds, "no-such-row-or-file", k=3)
    with pytest.raises(ArgumentError, match="no embedding"):
        similar(preds, "9001", k=3)  # a corrupt image: no embedding


def test_with_tta_8_rows_and_image_queries_are_8_view_means(calibrated, catalogue, tmp_path):
    """`--tta 8 --embeddings` writes each row's mean CLS embedding over its 8 views, and an image query of that
    catalogue is embedded the same way: its own row at distance 0."""
    path, _ = catalogue
    out = tmp_path / "tta8"
    classify(path, out, calibrated, embeddings=True, tta=8)
    image = path.parent / "cutouts" / "16126.jpg"  # the image of row 1001
    model = load_model("cal", stored_model_dir(CALIBRATED, calibrated), "fp32", "cpu", 1)
    crop = eval_batch([decode_image(image.read_bytes(), 4096 * 4096)], model.card.prep)[0]
    single = model.outputs(crop[None])[1]
    views = model.outputs(np.ascontiguousarray(dihedral_views(crop, channels_last=False)))[1]
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "embedding"]).to_pylist()
    row = np.array(next(r["embedding"] for r in table if r["id"] == 1001))
    np.testing.assert_allclose(row, views.mean(axis=0), atol=1e-5)
    assert np.abs(row - single[0]).max() > 1e-3  # the tiny model is not rotation-invariant: not the identity view's
    answer = similar(out, str(image), k=3)
    assert answer.column("id")[0].as_py() == 1001 and answer.column("distance")[0].as_py() == pytest.approx(0, abs=1e-5)


def test_the_index_is_kept_until_the_shards_change(calibrated, catalogue, tmp_path):
    out = tmp_path / "preds"
    classify(catalogue[0], out, calibrated, embeddings=True, shard_size=5)
    first = similar(out, "1000", k=3)
    meta = json.loads((out / INDEX_META).read_text())
    assert (out / INDEX_FILE).is_file() and meta["rows"] == len(catalogue[1]) - 4  # the 4 bad files have none
    stamp = (out / INDEX_FILE).stat().st_mtime_ns
    calls = []

    def embeddings():
        calls.append(1)
        raise AssertionError("the saved index should have been used")

    _, built = load_or_build(out, embeddings)
    assert not built and not calls and similar(out, "1000", k=3).equals(first)
    assert (out / INDEX_FILE).stat().st_mtime_ns == stamp
    os.utime(out / "part-00001.parquet")  # a shard rewritten: the index is rebuilt
    _, built = load_or_build(out, lambda: (np.ones((2, meta["dim"]), np.float32), np.arange(2, dtype=np.uint64)))
    assert built and json.loads((out / INDEX_META).read_text())["rows"] == 2
    classify(catalogue[0], out, calibrated, embeddings=True, shard_size=5, force=True)  # --force removes the index
    assert not (out / INDEX_FILE).exists() and similar(out, "1000", k=3).equals(first)


def test_odd_ranks_the_lowest_ood_scores_first(preds):
    table = odd(preds, k=3)
    scores = pads.dataset(str(preds), format="parquet").to_table().column("ood_score").drop_null().to_pylist()
    assert table.column("ood_score").to_pylist() == sorted(scores)[:3]
    assert table.column("rank").to_pylist() == [1, 2, 3]


def test_the_command_line(preds, calibrated, catalogue, tmp_path, capsys):
    assert cli_main(["similar", "1000", "--catalogue", str(preds), "--k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split()[:3] == ["rank", "id", "distance"] and len(lines) == 3
    assert cli_main(["similar", "--odd", "--catalogue", str(preds), "--out", str(tmp_path / "odd.csv")]) == 0
    assert pacsv.read_csv(tmp_path / "odd.csv").num_rows == len(catalogue[1]) - 4
    plain = tmp_path / "plain"
    classify(catalogue[0], plain, calibrated)
    cases = [
        (["similar", "--catalogue", str(preds)], "or --odd"),
        (["similar", "1000", "--catalogue", str(plain)], "--embeddings"),
        (["similar", "1000", "--catalogue", str(tmp_path)], "not a finished"),
    ]
    with pytest.raises(ArgumentError, match="--format parquet"):
        classify(catalogue[0], tmp_path / "csv", calibrated, embeddings=True, fmt="csv")
    for argv, words in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("galaxyvit similar: error:") and words in err, err


def test_the_nearest_neighbours_of_a_test_galaxy_share_its_true_class(tmp_path):
    """A tiny ViT trained briefly (64 px, one epoch) on 160 synthetic galaxies; its test split (16 galaxies per
    class) classified with --embeddings: the 10 nearest neighbours by the index share the true class >= 80%."""
    from tiny_galaxies import write_tiny_dataset

    from training.data import DataConfig
    from training.export import export_checkpoint
    from training.registry import get_run
    from training.train import TrainOptions, train

    data = write_tiny_dataset(tmp_path / "data", n_train=160, n_valid=16, n_test=128, size=96)
    run = get_run("vit-110421").with_overrides(depth=2, dim=32, heads=2, mlp_dim=64, batch_size=16, lr=1e-3,
                                               image_size=64, patch_size=8)  # fmt: skip
    options = TrainOptions(out=tmp_path / "run", epochs=1, workers=0, threads=2, results_file=None, progress=False)
    best = train(run, DataConfig(kind="gz2", dataset=str(data)), options) / "best.pt"
    export_checkpoint(best, tmp_path / "models", "knn", register=False, quiet=True)
    out = tmp_path / "preds"
    onnx = tmp_path / "models" / "knn" / "fp32.onnx"
    template = "images/{galaxyID}.jpg"
    classify_catalogue([data / "gz2_test.csv"], out, onnx=onnx, id_col="galaxyID", path_template=template,
                       embeddings=True, decode_workers=0, progress=False)  # fmt: skip
    labels = {line.split(",")[0]: int(line.split(",")[1]) for line in (data / "gz2_test.csv").read_text().split()[1:]}
    share = neighbour_agreement(out, labels, k=10)
    print(f"10 nearest neighbours sharing the true class: {share:.3f}")
    assert share >= 0.8
    shuffled = dict(zip(labels, np.random.default_rng(0).permutation(list(labels.values())), strict=True))
    assert neighbour_agreement(out, shuffled, k=10) < 0.4  # the measure sees labels that do not follow the images
