"""The output table: one row per input, the same schema from every engine.

Columns: the source's `id` and `path`, the catalogue's passthrough columns, then `label`,
`class_name`, one `p_<class>` probability column per class of the model card, `p_max`, `entropy`
(natural log), `model`, `model_version`, `sha256` (of the ONNX artifact), `error_kind`, `error`.
A row whose image could not be read or was refused has `error_kind` and `error` set and null
predictions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from catalog.inputs import ArgumentError


def class_column(class_name: str) -> str:
    """'round elliptical' -> 'p_round_elliptical'."""
    return "p_" + re.sub(r"[^0-9a-z]+", "_", class_name.lower()).strip("_")


@dataclass(frozen=True)
class ModelInfo:
    """What every row records about the model that classified it."""

    name: str
    version: str
    sha256: str
    class_names: tuple[str, ...]

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
    probs: np.ndarray,
    ok: np.ndarray,
    errors: list[tuple[str, str] | None],
    model: ModelInfo,
    schema: pa.Schema,
) -> pa.Table:
    """Rows of `source` with their predictions.

    probs: (k, C) class probabilities of the rows where `ok` (a boolean mask over all n rows) is true;
    errors: per row (error_kind, message) or None."""
    n = source.num_rows
    full = np.zeros((n, len(model.class_names)), np.float32)
    full[ok] = probs
    missing = ~ok
    labels = full.argmax(axis=1).astype(np.int32)
    with np.errstate(divide="ignore", invalid="ignore"):
        p64 = full.astype(np.float64)
        entropy = -np.where(p64 > 0, p64 * np.log(p64), 0.0).sum(axis=1)
    names = np.asarray(model.class_names, dtype=object)[labels]

    def masked(values: np.ndarray, kind: pa.DataType) -> pa.Array:
        return pa.array(values, type=kind, mask=missing)

    columns = [source.column(name) for name in source.schema.names]
    columns += [masked(labels, pa.int32()), masked(names, pa.string())]
    columns += [masked(full[:, c], pa.float32()) for c in range(full.shape[1])]
    columns += [masked(full.max(axis=1), pa.float32()), masked(entropy.astype(np.float32), pa.float32())]
    columns += [pa.array([value] * n, pa.string()) for value in (model.name, model.version, model.sha256)]
    columns += [pa.array([e[0] if e else None for e in errors], pa.string())]
    columns += [pa.array([e[1] if e else None for e in errors], pa.string())]
    return pa.Table.from_arrays(columns, schema=schema)
