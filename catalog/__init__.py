"""Classify survey catalogues: many cutouts to a sharded Parquet table, on one machine or a Ray cluster.

`galaxyvit classify` (catalog/cli.py) and `classify_catalogue` (catalog/job.py) for code; `galaxyvit similar`
(catalog/similar_cli.py) and `catalog.similar` for the nearest rows. Stands on the core (galaxyvit) and on
inference/ (decoding, ONNX Runtime loading, scoring); never on serving or training.
"""

from __future__ import annotations


def classify_catalogue(*args, **kwargs):
    """See catalog.job.classify_catalogue (imported on use: the decode processes import this package too)."""
    from catalog.job import classify_catalogue as run

    return run(*args, **kwargs)
