"""`galaxyvit classify --engine ray` on a real local Ray instance (2 CPUs): the same table as the local engine."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.dataset as pads
import pytest
import ray
from catalog_inputs import BAD_ROWS, write_catalogue

from catalog.job import classify_catalogue
from catalog.table import class_column
from galaxyvit.classes import CLASS_NAMES

PROB_COLUMNS = [class_column(name) for name in CLASS_NAMES]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


def read(out, fmt="parquet"):
    return pads.dataset(sorted(str(p) for p in out.glob(f"part-*.{fmt}")), format=fmt).to_table()


def test_ray_engine_gives_the_local_engine_table(local_ray, tiny_models, tmp_path):
    _, dirs = tiny_models
    catalogue, rows = write_catalogue(tmp_path / "data", synthetic=5)
    options = dict(onnx=dirs["linformer"] / "fp32.onnx", id_col="objid", path_col="file", progress=False)
    classify_catalogue([catalogue], tmp_path / "local", batch_size=4, decode_workers=1, **options)
    summary = classify_catalogue([catalogue], tmp_path / "ray", engine="ray", batch_size=3, **options)
    local, distributed = read(tmp_path / "local"), read(tmp_path / "ray")
    assert distributed.schema.equals(local.schema, check_metadata=False)
    assert distributed.column("id").to_pylist() == [r["objid"] for r in rows]  # every input once, in order
    for name in local.schema.names:
        if name not in PROB_COLUMNS + ["p_max", "entropy"]:
            assert distributed.column(name).to_pylist() == local.column(name).to_pylist(), name
    for name in PROB_COLUMNS + ["p_max", "entropy"]:
        a = np.array(local.column(name).to_pylist(), dtype=float)
        b = np.array(distributed.column(name).to_pylist(), dtype=float)
        np.testing.assert_allclose(b, a, atol=1e-5, equal_nan=True)
    assert sorted(k for k in distributed.column("error_kind").to_pylist() if k) == sorted(BAD_ROWS.values())
    manifest = json.loads((tmp_path / "ray" / "_SUCCESS").read_text())
    assert manifest["rows"] == len(rows) == summary.rows and manifest["errors"] == summary.errors
    assert ray.is_initialized()  # the engine used the caller's Ray instance and left it running
