"""The output table: one row per input, the same schema from every engine.

Columns: the source's `id` and `path`, the catalogue's passthrough columns, then the service's answer:
`label`, `class_name`, one `p_<class>` probability column per class of the model card (calibrated unless
`--no-calibrate`; with `--tta 8` the mean of the 8 views), `p_max`, `entropy` (natural log), `calibrated`,
`ood_score` and `in_distribution` (null without an OOD rule), `spread` (with `--tta 8`), `embedding` (with
`--embeddings`: the CLS embedding, a fixed-size list of float32), then `model`, `model_version`, `sha256`
(of the ONNX artifact), `error_kind`, `error`. A row whose image could not be read or was refused has
`error_kind` and `error` set and null predictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from catalog.inputs import ArgumentError

if TYPE_CHECKING:
    from catalog.predict import Scored


def class_column(class_name: str) -> str:
    """'round elliptical' -> 'p_round_elliptical'."""
    return "p_" + re.sub(r"[^0-9a-z]+", "_", class_name.lower()).strip("_")


@dataclass(frozen=True)
class ModelInfo:
    """What every row records about the model that classified it, and which optional columns it has."""

    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]
    tta: int = 1  # 8: the probabilities are the mean of the 8 views, with a `spread` column
    embedding_dim: int = 0  # D > 0: an `embedding` column of D float32 per row

    @property
    def class_columns(self) -> list[str]:
        return [class_column(name) for name in self.class_names]


def output_schema(source: pa.Schema, model: ModelInfo) -> pa.Schema:
    """The source's columns followed by the prediction columns; a passthrough column may not take their names."""
    prediction = [
        pa.field("label", pa.int32()),
        pa.field("class_name", pa.string()),
        *[pa.field(name, pa.float32()) for name in model.class_columns],
        pa.field("p_max", pa.float32()),
        pa.field("entropy", pa.float32()),
        pa.field("calibrated", pa.bool_()),
        pa.field("ood_score", pa.float64()),
        pa.field("in_distribution", pa.bool_()),
        *([pa.field("spread", pa.float32())] if model.tta > 1 else []),
        *([pa.field("embedding", pa.list_(pa.float32(), model.embedding_dim))] if model.embedding_dim else []),
        pa.field("model", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("sha256", pa.string()),
        pa.field("error_kind", pa.string()),
        pa.field("error", pa.string()),
    ]
    taken = {f.name for f in prediction}
    if len(set(model.class_columns)) != len(model.class_columns):
        raise ArgumentError(f"the model's class names {model.class_names} do not give distinct column names")
    clash = [name for name in source.names if name in taken]
    if clash:
        raise ArgumentError(f"catalogue column {clash[0]!r} would collide with the output's {clash[0]!r} column")
    return pa.schema([*source, *prediction])


def prediction_table(
    source: pa.Table,
    scored: Scored,
    ok: np.ndarray,
    errors: list[tuple[str, str] | None],
    model: ModelInfo,
    schema: pa.Schema,
) -> pa.Table:
    """Rows of `source` with their answers.

    scored: the answers (catalog.predict.Scored) of the k rows where `ok` (a boolean mask over all n rows) is true;
    errors: per row (error_kind, message) or None."""
    n = source.num_rows
    full = np.zeros((n, len(model.class_names)), np.float32)
    full[ok] = scored.probs
    missing = ~ok
    labels = full.argmax(axis=1).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        p64 = full.astype(np.float64)
        entropy = -np.where(p64 > 0, p64 * np.log(p64), 0.0).sum(axis=1)
    names = np.asarray(model.class_names, dtype=object)[labels]

    def masked(values: np.ndarray | None, kind: pa.DataType) -> pa.Array:
        """Values of the `ok` rows spread over all n rows, null elsewhere (all null when None)."""
        if values is None:
            return pa.nulls(n, kind)
        if len(values) != n:
            spread = np.zeros((n, *values.shape[1:]), values.dtype)
            spread[ok] = values
            values = spread
        return pa.array(values, type=kind, mask=missing)

    columns = [source.column(name) for name in source.schema.names]
    columns += [masked(labels, pa.int32()), masked(names, pa.string())]
    columns += [masked(full[:, c], pa.float32()) for c in range(full.shape[1])]
    columns += [masked(full.max(axis=1), pa.float32()), masked(entropy.astype(np.float32), pa.float32())]
    columns += [masked(np.full(n, scored.calibrated), pa.bool_())]
    columns += [masked(scored.ood_score, pa.float64()), masked(scored.in_distribution, pa.bool_())]
    if model.tta > 1:
        columns += [masked(scored.spread, pa.float32())]
    if model.embedding_dim:
        columns += [embedding_column(scored.embeddings, ok, model.embedding_dim)]
    columns += [pa.array([value] * n, pa.string()) for value in (model.name, model.version, model.sha256)]
    columns += [pa.array([e[0] if e else None for e in errors], pa.string())]
    columns += [pa.array([e[1] if e else None for e in errors], pa.string())]
    return pa.Table.from_arrays(columns, schema=schema)


def embedding_column(embeddings: np.ndarray | None, ok: np.ndarray, dim: int) -> pa.Array:
    """(k, D) float32 embeddings of the `ok` rows -> a fixed_size_list<float32>[D] column over all rows."""
    full = np.zeros((len(ok), dim), np.float32)
    if embeddings is not None and len(embeddings):
        full[ok] = embeddings
    values = pa.array(full.reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim, mask=pa.array(~ok))
