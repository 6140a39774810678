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
from catalog.similar import odd, similar
from catalog.similar_index import INDEX_FILE, INDEX_META, load_or_build


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
    for argv, words in cases:
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("galaxyvit similar: error:") and words in err, err
