"""Shared test settings: offline Hugging Face, few threads, and where ../shared lives."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GALAXYVIT_SHARED", ROOT.parent / "shared"))
GZ2_SPLITS = SHARED / "data" / "gz2_splits"
REAL_SAMPLES = SHARED / "data" / "gz2_real_samples"
SEED_RUNS = SHARED / "reference" / "seed_runs.md"


def _torch_threads() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)


_torch_threads()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"{SHARED} is missing: the tests need the project's ../shared folder")
    return SHARED


# Serving fixtures (tests/serving_fixtures.py) for every module that does not import its own copy:
# those modules then share one set of tiny exported models and one server per test session.
from serving_fixtures import server, tiny_models  # noqa: E402, F401
