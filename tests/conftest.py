"""Shared test settings: offline Hugging Face, few threads; the data the repository carries (data/)."""

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parents[1]
from galaxyvit.paths import GZ2_SPLITS, REAL_SAMPLES, SEED_RUNS  # noqa: E402, F401


def _torch_threads() -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(2)


_torch_threads()


# Serving fixtures (tests/serving_fixtures.py) for every module that does not import its own copy:
# those modules then share one set of tiny exported models and one server per test session; and a tiny
# model with a fitted temperature and a Mahalanobis OOD rule (tests/calibrated_models.py).
from calibrated_models import calibrated  # noqa: E402, F401
from serving_fixtures import server, tiny_models  # noqa: E402, F401
