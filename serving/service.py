"""Entry module of `bentoml serve serving.service:GalaxyClassifier` (and of `bentoml build`, bentofile.yaml).

`GalaxyClassifier` is built on first access from the settings (serving/config.py: GALAXYVIT_*
environment variables, serving.toml) by `serving.deployment.build`, so importing this module does
no I/O. The endpoints are listed in serving/endpoints.py.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name != "GalaxyClassifier":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from serving.config import load_config
    from serving.deployment import build

    service = build(load_config())
    globals()[name] = service  # built once per process: BentoML looks it up again in every worker
    return service
