"""Files the repository carries (data/, MIT-licensed, licence files beside them), found from the checkout.

Nothing reads a folder outside the repository: a fresh clone has everything the tests, the demo
and the export gate need.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT / "data"
GZ2_SPLITS = DATA_DIR / "gz2_splits"  # the study's split files gz2_{train,valid,test}.csv
REAL_SAMPLES = DATA_DIR / "gz2_real_samples"  # three real GZ2 cutouts with their catalogue rows
REAL_SAMPLE_IMAGES = REAL_SAMPLES / "images"
# Known classes of the real samples (Hart et al. 2016 rows in gz2_real_samples/gz2_hart16.csv).
REAL_SAMPLE_LABELS = {"106587.jpg": 5, "16126.jpg": 7, "91609.jpg": 3}
SEED_RUNS = DATA_DIR / "reference" / "seed_runs.md"  # the study's run table
# The study's own ViT-Base (run 121221C) prediction for every galaxy of its test split: GalaxyID,class,pred
STUDY_PREDICTIONS = DATA_DIR / "reference" / "study_vitbase_121221C_test_predictions.csv"
