"""The study's runs, read from runs.toml (the single source of truth for hyperparameters)."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache
from pathlib import Path
from typing import Any

from training.families import FAMILIES

RUNS_FILE = Path(__file__).with_name("runs.toml")


@dataclass(frozen=True)
class Run:
    """One column of the study's tables. Architecture fields not used by a family stay None."""

    id: str
    study_id: str
    family: str
    batch_size: int
    lr: float
    step_size: int
    gamma: float
    epochs: int = 200
    class_weights: str | tuple[float, ...] = "uniform"
    image_size: int = 224
    patch_size: int | None = None
    depth: int | None = None
    dim: int | None = None
    mlp_dim: int | None = None
    heads: int | None = None
    k: int | None = None
    shared_kv: bool | None = None
    dropout: float | None = None
    emb_dropout: float | None = None
    fine_tune: bool | None = None
    crop: int | None = None  # centre crop in pixels before resizing to image_size (default: image_size)
    distill_token: bool | None = None  # vit / linformer: DeiT distillation token and head (training/distill.py)
    augment: str = "study"  # training augmentation: "study" or "sky" (+ observing conditions; training/transforms.py)
    reported_params: int | None = None
    reported_train_acc: float | None = None
    reported_valid_acc: float | None = None
    reported_test_acc: float | None = None
    tables: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    corrections: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Run:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown run field(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def with_overrides(self, **overrides) -> Run:
        """A copy with the given hyperparameters replaced (None values are ignored)."""
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@cache
def load_runs(path: Path = RUNS_FILE) -> dict[str, Run]:
    """All runs by id, defaults applied; ids must be unique and families known."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    defaults = table.get("defaults", {})
    runs: dict[str, Run] = {}
    for entry in table["run"]:
        run = Run.from_dict({**defaults, **entry})
        if run.id in runs:
            raise ValueError(f"{path}: duplicate run id {run.id!r}")
        if run.family not in FAMILIES:
            raise ValueError(f"{path}: run {run.id!r} has unknown family {run.family!r}")
        runs[run.id] = run
    return runs


def get_run(run_id: str) -> Run:
    """Look a run up by id (e.g. 'linformer-010522B'); a clear error lists close matches."""
    runs = load_runs()
    if run_id in runs:
        return runs[run_id]
    import difflib

    close = difflib.get_close_matches(run_id, runs, n=5, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise KeyError(f"unknown run {run_id!r}.{hint} `galaxyvit runs` lists all {len(runs)} runs.")


def parse_overrides(items: list[str]) -> dict:
    """--set key=value overrides of run fields (numbers, booleans and strings)."""
    overrides: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {item!r}")
        low = value.lower()
        if low in ("true", "false"):
            overrides[key] = low == "true"
            continue
        for cast in (int, float):
            try:
                overrides[key] = cast(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = value
    return overrides
