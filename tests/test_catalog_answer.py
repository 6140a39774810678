"""The catalogue gives the service's answer: on a tiny model exported with validation images (fitted temperature,
Mahalanobis not-a-galaxy rule), the local engine, the Ray engine (a real local Ray instance) and `bentoml serve`
(serving.process.ServerProcess) give the same calibrated probabilities, ood_score and in_distribution flag, with
and without --tta 8; --no-calibrate writes the raw softmax; --embeddings the CLS embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest
import ray
from calibrated_models import CALIBRATED as NAME
from catalog_inputs import BAD_ROWS, write_catalogue

from catalog.job import classify_catalogue
from catalog.table import class_column
from galaxyvit.card import card_path, load_card
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.preprocess import eval_batch
from galaxyvit.store import stored_model_dir
from inference.decode import decode_image
from inference.runtime import load_model
from inference.scoring import softmax
from serving.client import classify
from serving.process import ServerProcess

PROB_COLUMNS = [class_column(name) for name in CLASS_NAMES]


@pytest.fixture(scope="module")
def cal_server(calibrated, tmp_path_factory):
    settings = {"models": NAME, "max_images": 32, "intra_op_threads": 1}
    workdir = tmp_path_factory.mktemp("calserver")
    with ServerProcess(settings, store=calibrated, workdir=workdir, ready_timeout=180) as server:
        yield server


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory):
    return write_catalogue(tmp_path_factory.mktemp("catalogue"), synthetic=3)


def read(out: Path) -> pa.Table:
    return pads.dataset(sorted(str(p) for p in out.glob("part-*.parquet")), format="parquet").to_table()


def run(catalogue: Path, out: Path, home: Path, **kwargs) -> pa.Table:
    options = dict(model=NAME, home=home, id_col="objid", path_col="file", batch_size=3, progress=False)
    classify_catalogue([catalogue], out, **{**options, **kwargs})
    return read(out)


def test_the_model_is_calibrated_with_a_mahalanobis_rule(calibrated):
    card = load_card(card_path(stored_model_dir(NAME, calibrated)))
    assert card.calibration is not None and abs(card.temperature - 1) > 0.1, card.temperature
    assert card.ood is not None and card.ood["method"] == "mahalanobis"


@pytest.mark.parametrize("tta", [1, 8])
def test_local_ray_and_http_give_the_same_answer(calibrated, cal_server, local_ray, catalogue, tmp_path, tta):
    path, rows = catalogue
    local = run(path, tmp_path / "local", calibrated, tta=tta, embeddings=True, decode_workers=1)
    distributed = run(path, tmp_path / "ray", calibrated, tta=tta, embeddings=True, engine="ray")
    assert distributed.schema.equals(local.schema, check_metadata=False)
    assert ("spread" in local.column_names) == (tta == 8)
    good = [row for row in local.to_pylist() if row["error_kind"] is None]
    assert len(good) == len(rows) - len(BAD_ROWS)
    answers = []
    for start in range(0, len(good), 4):  # 4 images x 8 views: the server's max_images
        answers += classify(cal_server.url, [Path(r["path"]) for r in good[start : start + 4]], NAME, 120, tta)
    ray_good = [row for row in distributed.to_pylist() if row["error_kind"] is None]
    flags = []
    for row, other, answer in zip(good, ray_good, answers, strict=True):
        http = np.array([answer["probabilities"][c] for c in CLASS_NAMES])
        np.testing.assert_allclose([row[c] for c in PROB_COLUMNS], http, atol=1e-5)
        np.testing.assert_allclose([other[c] for c in PROB_COLUMNS], http, atol=1e-5)
        assert row["label"] == other["label"] == answer["label"] and row["class_name"] == answer["class_name"]
        assert row["calibrated"] is other["calibrated"] is answer["calibrated"] is True
        assert row["ood_score"] == pytest.approx(answer["ood_score"], rel=1e-5, abs=1e-5)
        assert other["ood_score"] == pytest.approx(answer["ood_score"], rel=1e-5, abs=1e-5)
        assert row["in_distribution"] is other["in_distribution"] is answer["in_distribution"]
        flags.append(answer["in_distribution"])
        if tta == 8:
            assert row["spread"] == pytest.approx(answer["spread"], abs=1e-5)
            assert other["spread"] == pytest.approx(answer["spread"], abs=1e-5)
        else:
            assert "spread" not in answer
        np.testing.assert_allclose(row["embedding"], other["embedding"], atol=1e-5)
    assert isinstance(flags[0], bool)
    errors = [row for row in local.to_pylist() if row["error_kind"] is not None]
    assert all(r["embedding"] is None and r["ood_score"] is None and r["calibrated"] is None for r in errors)
    dim = local.schema.field("embedding").type
    assert pa.types.is_fixed_size_list(dim) and dim.value_type == pa.float32()


def test_tta_8_is_the_mean_of_the_8_views(calibrated, catalogue, tmp_path):
    """The tiny model is not invariant under rotation: the 8-view mean differs from the single view."""
    path, _ = catalogue
    one = run(path, tmp_path / "one", calibrated, decode_workers=0)
    eight = run(path, tmp_path / "eight", calibrated, tta=8, decode_workers=0)
    ok = np.array([k is None for k in one.column("error_kind").to_pylist()])
    p1 = np.array([one.column(c).to_numpy(False) for c in PROB_COLUMNS]).T[ok].astype(float)
    p8 = np.array([eight.column(c).to_numpy(False) for c in PROB_COLUMNS]).T[ok].astype(float)
    assert np.abs(p1 - p8).max() > 1e-3  # 100 times the parity tolerance
    spread = eight.column("spread").to_numpy(False)[ok].astype(float)
    assert (spread >= 0).all() and spread.max() > 0


def test_no_calibrate_writes_the_raw_softmax(calibrated, catalogue, tmp_path):
    path, rows = catalogue
    raw = run(path, tmp_path / "raw", calibrated, calibrate=False, decode_workers=0)
    cal = run(path, tmp_path / "cal", calibrated, decode_workers=0)
    good = [i for i, kind in enumerate(raw.column("error_kind").to_pylist()) if kind is None]
    model = load_model("cal", stored_model_dir(NAME, calibrated), "fp32", "cpu", 1)
    files = [path.parent / rows[i]["file"] for i in good]
    images = [decode_image(f.read_bytes(), 4096 * 4096) for f in files]
    logits, _ = model.outputs(eval_batch(images, model.card.prep))
    got = np.array([[raw.column(c)[i].as_py() for c in PROB_COLUMNS] for i in good])
    np.testing.assert_allclose(got, softmax(logits), atol=1e-5)
    calibrated_probs = np.array([[cal.column(c)[i].as_py() for c in PROB_COLUMNS] for i in good])
    assert np.abs(calibrated_probs - got).max() > 1e-2
    assert set(raw.column("calibrated").drop_null().to_pylist()) == {False}
    assert raw.column("ood_score").to_pylist() == cal.column("ood_score").to_pylist()  # the rule uses raw logits


def test_the_load_test_yardstick_scores_as_the_service(calibrated):
    """load_tests.engine times the model and its scorer: calibrated probabilities and the OOD score per image."""
    from galaxyvit.calibration import softmax as calibrated_softmax
    from galaxyvit.paths import REAL_SAMPLE_IMAGES
    from load_tests.engine import Engine

    folder = stored_model_dir(NAME, calibrated)
    images = tuple(p.read_bytes() for p in sorted(REAL_SAMPLE_IMAGES.glob("*.jpg")))
    engine = Engine(NAME, folder, images, "fp32", "cpu", 1)
    batch = engine.batch(3)
    items = engine.infer(batch)
    logits, _ = engine.model.outputs(batch)
    expected = calibrated_softmax(logits, load_card(card_path(folder)).temperature)
    np.testing.assert_allclose(np.stack([item["p"] for item in items]), expected, atol=1e-6)
    assert all(item["calibrated"] and isinstance(item["ood_score"], float) for item in items)
    assert engine.measure(2, seconds=0.1, min_calls=1).images_per_s > 0
