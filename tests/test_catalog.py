"""`galaxyvit classify`, local engine: rows and error kinds, passthrough columns, shards, resume after SIGKILL,
bad arguments, and the same predictions as the HTTP service."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from catalog_inputs import BAD_ROWS, write_catalogue
from PIL import Image
from serving_fixtures import ROOT

from catalog.job import classify_catalogue
from catalog.table import class_column
from galaxyvit.card import card_path, load_card
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.preprocess import eval_batch
from galaxyvit.store import stored_model_dir
from inference.decode import decode_image
from inference.runtime import load_model

PROB_COLUMNS = [class_column(name) for name in CLASS_NAMES]


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("catalogue"))


@pytest.fixture(scope="module")
def vit_onnx(tiny_models) -> Path:
    _, dirs = tiny_models
    return dirs["vit"] / "fp32.onnx"


def read_output(out: Path, fmt: str = "parquet") -> pa.Table:
    return pads.dataset(sorted(str(p) for p in out.glob(f"part-*.{fmt}")), format=fmt).to_table()


def classify(catalogue: Path, out: Path, onnx: Path, **kwargs):
    options = dict(id_col="objid", path_col="file", decode_workers=1, batch_size=4, progress=False)
    return classify_catalogue([catalogue], out, onnx=onnx, **{**options, **kwargs})


def test_catalogue_gives_one_row_per_input_with_predictions_or_error_kinds(catalogue, vit_onnx, tmp_path):
    path, rows = catalogue
    summary = classify(path, tmp_path / "out", vit_onnx, shard_size=5)
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == [r["objid"] for r in rows]  # one row per input, in catalogue order
    for name in ("ra", "dec", "survey"):  # passthrough columns survive, values and order
        assert table.column(name).to_pylist() == [r[name] for r in rows]
    assert table.schema.field("id").type == pa.int64() and table.schema.field("ra").type == pa.float64()
    by_id = {row["id"]: row for row in table.to_pylist()}
    for objid, kind in BAD_ROWS.items():
        row = by_id[objid]
        assert row["error_kind"] == kind and row["error"]
        assert row["label"] is None and row["class_name"] is None and row["p_max"] is None
    good = [row for row in table.to_pylist() if row["id"] not in BAD_ROWS]
    assert len(good) == len(rows) - len(BAD_ROWS) and 3000 in {row["id"] for row in good}  # the FITS cube too
    card = load_card(card_path(vit_onnx.parent))
    for row in good:
        probs = np.array([row[c] for c in PROB_COLUMNS])
        assert row["error_kind"] is None and row["error"] is None
        assert abs(probs.sum() - 1) < 1e-5 and row["label"] == int(probs.argmax())
        assert row["class_name"] == CLASS_NAMES[row["label"]] and row["p_max"] == pytest.approx(probs.max())
        assert row["entropy"] == pytest.approx(-(probs * np.log(probs)).sum(), rel=1e-5)
        assert (row["model"], row["model_version"], row["sha256"]) == (card.name, card.version, card.sha256)
    # the same probabilities as serving's decoding and ONNX Runtime session, run directly
    model = load_model("vit", vit_onnx.parent, "fp32", "cpu", 1)
    files = [path.parent / r["file"] for r in rows if r["objid"] not in BAD_ROWS]
    images = [decode_image(f.read_bytes(), 4096 * 4096) for f in files]
    expected = model.predict(eval_batch(images, model.card.prep))
    got = np.array([[row[c] for c in PROB_COLUMNS] for row in good])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    manifest = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert [s["rows"] for s in manifest["shards"]] == [5, 5, len(rows) - 10] and manifest["rows"] == len(rows)
    assert manifest["errors"] == {kind: 1 for kind in sorted(BAD_ROWS.values())}
    assert summary.rows == len(rows) and summary.errors == manifest["errors"]
    assert f"{len(BAD_ROWS)} errors" in summary.line() and "images/s" in summary.line()


@pytest.mark.parametrize("workers", [0, 2])
def test_every_decoding_route_gives_the_same_table(catalogue, vit_onnx, tmp_path, monkeypatch, workers):
    """Shared-memory batches (the default), crops pickled back where shared memory is short, decoding in this
    process: the same rows; two decode processes keep the input order."""
    import catalog.local

    path, _ = catalogue
    reference = read_output_of(classify(path, tmp_path / "shared", vit_onnx, decode_workers=workers, batch_size=3))
    monkeypatch.setattr(catalog.local, "shared_memory_free", lambda: 0)
    pickled = read_output_of(classify(path, tmp_path / "pickled", vit_onnx, decode_workers=max(1, workers)))
    assert pickled.drop_columns(PROB_COLUMNS).equals(reference.drop_columns(PROB_COLUMNS))
    for column in PROB_COLUMNS:
        np.testing.assert_allclose(pickled.column(column).to_numpy(False), reference.column(column).to_numpy(False))


def read_output_of(summary) -> pa.Table:
    return read_output(summary.out)


def test_the_batch_being_classified_keeps_its_shared_memory_block(catalogue, vit_onnx, tmp_path, monkeypatch):
    """The decode processes fill the shared-memory blocks in turn; none may be written while its batch is being
    classified (a slow model gives them the time to): the same table as decoding in this process, batch after
    batch (one image each, so that the blocks go round several times)."""
    import catalog.predict

    path, _ = catalogue
    reference = read_output_of(classify(path, tmp_path / "here", vit_onnx, decode_workers=0, batch_size=1))
    predict = catalog.predict.Predictor.predict

    def slow_predict(self, batch: np.ndarray):
        time.sleep(0.2)
        return predict(self, batch)

    monkeypatch.setattr(catalog.predict.Predictor, "predict", slow_predict)
    shared = read_output_of(classify(path, tmp_path / "shared", vit_onnx, decode_workers=1, batch_size=1))
    assert shared.drop_columns(PROB_COLUMNS).equals(reference.drop_columns(PROB_COLUMNS))
    for column in PROB_COLUMNS:
        np.testing.assert_allclose(shared.column(column).to_numpy(False), reference.column(column).to_numpy(False))


def test_folders_globs_and_files_with_csv_output(catalogue, vit_onnx, tmp_path):
    path, _ = catalogue
    cutouts = path.parent / "cutouts"
    inputs = [cutouts / "sub", str(cutouts / "*.jpg"), cutouts / "cube.fits"]
    classify_catalogue(inputs, tmp_path / "out", onnx=vit_onnx, fmt="csv", decode_workers=0, progress=False)
    table = read_output(tmp_path / "out", "csv")
    expected_ids = ["synth0", "synth1", "synth2", "106587", "16126", "91609", "corrupt", "cube"]
    assert [str(i) for i in table.column("id").to_pylist()] == expected_ids  # readme.txt: not in a glob or folder
    errors = dict(zip(map(str, table.column("id").to_pylist()), table.column("error_kind").to_pylist()))
    assert errors["corrupt"] == "corrupt_image" and not errors["cube"] and not errors["synth0"]
    assert set(PROB_COLUMNS) <= set(table.schema.names)


def test_parquet_catalogue_with_path_template(vit_onnx, tmp_path):
    from galaxyvit.paths import REAL_SAMPLE_IMAGES

    ids = [106587, 16126, 91609, 5]
    pq.write_table(pa.table({"dr7objid": ids, "mag": [17.1, 16.2, 15.3, 14.4]}), tmp_path / "gz2.parquet")
    summary = classify_catalogue(
        [tmp_path / "gz2.parquet"], tmp_path / "out", onnx=vit_onnx, id_col="dr7objid",
        path_template="{dr7objid}.jpg", root=REAL_SAMPLE_IMAGES, decode_workers=0, progress=False,
    )  # fmt: skip
    table = read_output(tmp_path / "out")
    assert table.column("id").to_pylist() == ids and table.column("mag").to_pylist() == [17.1, 16.2, 15.3, 14.4]
    assert table.column("error_kind").to_pylist() == [None, None, None, "missing_file"]
    assert summary.errors == {"missing_file": 1}


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "app", "classify", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_bad_arguments_are_one_line_errors_with_status_2(catalogue, vit_onnx, tmp_path, capsys):
    from app.cli import main

    path, _ = catalogue
    cutouts = path.parent / "cutouts"
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "part-00000.parquet").write_bytes(b"")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("years of work")
    model = ["--onnx", str(vit_onnx)]
    cases = [
        ([path, *model, "--id-col", "objid", "--path-col", "nope", "--out", tmp_path / "a"], "no column 'nope'"),
        ([path, *model, "--id-col", "galaxy", "--path-col", "file", "--out", tmp_path / "a"], "no column 'galaxy'"),
        ([tmp_path / "broken.parquet", *model, "--out", tmp_path / "b"], "cannot read catalogue"),
        ([cutouts, *model, "--out", tmp_path / "mine", "--force"], "not a classify output"),
        ([path, *model, "--id-col", "objid", "--path-col", "file", "--out", tmp_path / "used"], "--resume"),
        ([tmp_path / "nothing-here", *model, "--out", tmp_path / "c"], "no such file or folder"),
        ([tmp_path / "nothing-here", "--onnx", path, "--out", tmp_path / "d"], "no such file or folder"),
        ([cutouts, "--onnx", path, "--out", tmp_path / "d"], "expected an exported"),
    ]
    for args, words in cases:
        assert main(["classify", *map(str, args), "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert err.startswith("galaxyvit classify: error:") and words in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert os.listdir(tmp_path / "used") == ["part-00000.parquet"]  # an existing output is left alone
    assert os.listdir(tmp_path / "mine") == ["thesis.tex"]  # --force never empties a folder that is not ours
    result = run_cli(*map(str, cases[0][0]), "--no-progress")  # once through a real process: the exit status
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "no column 'nope'" in result.stderr


def test_resume_after_sigkill_gives_every_input_exactly_once(catalogue, vit_onnx, tmp_path):
    """The job is killed while a decode process waits on a named pipe that stands for a slow file (so the run
    cannot finish before the kill, however the machine schedules it); resumed, it keeps the finished shards."""
    path, rows = catalogue
    cutouts = path.parent / "cutouts"
    lines = ["objid,file"] + [f"{r['objid']},{cutouts / r['file'].split('/', 1)[1]}" for r in rows]
    lines.insert(10, f"7777,{tmp_path / 'slow.jpg'}")  # row 9: the third shard of 4 rows
    lines += [f"{8000 + i},{cutouts / '16126.jpg'}" for i in range(5)]
    (tmp_path / "cat.csv").write_text("\n".join(lines) + "\n")
    os.mkfifo(tmp_path / "slow.jpg")
    out = tmp_path / "out"
    args = [tmp_path / "cat.csv", "--onnx", vit_onnx, "--id-col", "objid", "--path-col", "file", "--out", out]
    args += ["--shard-size", "4", "--batch-size", "2", "--decode-workers", "1", "--no-progress"]
    command = [sys.executable, "-m", "app", "classify", *map(str, args)]
    log = open(tmp_path / "log.txt", "wb")
    process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (out / "part-00000.parquet").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert (out / "part-00000.parquet").exists(), (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the job and its decode process
        process.wait()
    assert not (out / "_SUCCESS").exists() and not (out / "part-00002.parquet").exists()
    first = (out / "part-00000.parquet").stat()
    os.unlink(tmp_path / "slow.jpg")
    Image.open(cutouts / "91609.jpg").save(tmp_path / "slow.jpg")
    result = run_cli(*map(str, args), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "rows of finished shards kept" in result.stdout
    table = read_output(out)
    ids = table.column("id").to_pylist()
    expected = [int(line.split(",")[0]) for line in lines[1:]]
    assert ids == expected and len(set(ids)) == len(ids)  # every input once, in input order
    assert (out / "part-00000.parquet").stat().st_mtime_ns == first.st_mtime_ns  # the finished shard was kept
    manifest = json.loads((out / "_SUCCESS").read_text())
    assert manifest["rows"] == len(expected) and sum(s["rows"] for s in manifest["shards"]) == len(expected)
    assert table.filter(pa.compute.equal(table.column("id"), 7777)).column("error_kind").to_pylist() == [None]


def multipart(files: list[Path], model: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for path in files:
        body.write(
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{path.name}"\r\n'.encode()
        )
        body.write(b"Content-Type: application/octet-stream\r\n\r\n" + path.read_bytes() + b"\r\n")
    body.write(
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n--{boundary}--\r\n'.encode()
    )
    return body.getvalue(), f"multipart/form-data; boundary={boundary}"


@pytest.mark.parametrize("name", ["vit", "linformer"])
def test_same_predictions_as_the_http_service(server, tiny_models, catalogue, tmp_path, name):
    home, _ = tiny_models
    path, rows = catalogue
    summary = classify_catalogue(
        [path], tmp_path / "out", model=name, home=home, id_col="objid", path_col="file",
        decode_workers=1, batch_size=3, progress=False,
    )  # fmt: skip
    assert summary.provider == "CPUExecutionProvider"
    table = read_output(tmp_path / "out")
    good = [row for row in table.to_pylist() if row["error_kind"] is None]
    assert len(good) == len(rows) - len(BAD_ROWS)
    body, content_type = multipart([Path(row["path"]) for row in good], name)
    request = urllib.request.Request(f"{server.url}/classify", data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        answers = json.loads(response.read())["predictions"]
    card = load_card(card_path(stored_model_dir(name, home)))
    for row, answer in zip(good, answers, strict=True):
        assert row["label"] == answer["label"] and row["class_name"] == answer["class_name"]
        assert row["model_version"] == answer["model_version"] == card.version
        http = np.array([answer["probabilities"][c] for c in CLASS_NAMES])
        np.testing.assert_allclose([row[c] for c in PROB_COLUMNS], http, atol=1e-5)


def test_shard_writer_streams_row_groups_into_shards_of_exact_size(tmp_path):
    from catalog.shards import ShardWriter

    schema = pa.schema([("id", pa.int64()), ("error_kind", pa.string())])
    writer = ShardWriter(tmp_path, "parquet", schema, shard_size=7, done=[], group_rows=3)
    start = 0
    for size in (5, 1, 9, 4):
        kinds = ["missing_file" if (start + i) % 4 == 0 else None for i in range(size)]
        writer.add(pa.table({"id": range(start, start + size), "error_kind": kinds}, schema=schema))
        start += size
        assert all(n.startswith(("part-", ".tmp-")) for n in os.listdir(tmp_path))
    manifest = writer.finish({"engine": "test"})
    assert [(s["file"], s["rows"]) for s in manifest["shards"]] == [
        ("part-00000.parquet", 7), ("part-00001.parquet", 7), ("part-00002.parquet", 5),
    ]  # fmt: skip
    assert read_output(tmp_path).column("id").to_pylist() == list(range(19))
    groups = [pq.ParquetFile(path).metadata for path in sorted(tmp_path.glob("part-*"))]
    assert [max(m.row_group(i).num_rows for i in range(m.num_row_groups)) for m in groups] == [3, 3, 3]
    assert manifest["errors"] == {"missing_file": 5} and writer.errors == {"missing_file": 5}
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_the_catalogue_path_never_imports_torch_or_training():
    code = (
        "import sys, catalog.cli, catalog.job, catalog.local, catalog.decode, catalog.ray_engine; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training')))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
