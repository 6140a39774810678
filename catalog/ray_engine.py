"""The Ray engine: the same job as a Ray Data pipeline, on a local Ray instance or a cluster.

  read the catalogue (read_csv / read_parquet; files: from_arrow)
    -> map_batches(decode_stage)            tasks: id/path columns, read, decode, crop (uint8 bytes)
    -> map_batches(Classifier, concurrency)  actors, each holding one ONNX Runtime session and its scorer
    -> write_parquet / write_csv             part-NNNNN files in OUT, then the `_SUCCESS` manifest

The decoding, the scoring, the rows and the schema are the local engine's own functions (catalog.decode,
catalog.predict, catalog.table), so both engines give the same table. On a cluster the model folder, the catalogue
and the images must be readable at the same paths on every node (a shared file system).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from catalog.decode import decode_files
from catalog.inputs import CatalogueSource, FileSource
from catalog.model import ModelRef
from catalog.predict import open_predictor
from catalog.shards import SHARD, count_rows, write_manifest
from galaxyvit.preprocess import Preprocessing, normalize

# memory reserved per decode task: the worker process (Ray, pyarrow, Pillow, astropy: ~0.4 GiB measured)
# plus, per image, the file, the decoded image and the crop, with room for large FITS files
DECODE_MEMORY_BASE = 512 << 20
DECODE_MEMORY_PER_IMAGE = 2 << 20
CROP = "_crop"  # the uint8 crop of a row, as bytes, between the decode tasks and the actors


def decode_stage(
    batch: pa.Table, source: CatalogueSource | None, prep: Preprocessing, max_pixels: int, schema: pa.Schema
) -> pa.Table:
    """Catalogue rows -> source rows (id, path, passthrough) + the crop bytes, error_kind and error of each."""
    table = source.to_source(batch) if source is not None else batch.cast(schema)
    decoded = decode_files(table.column("path").to_pylist(), prep, max_pixels)
    errors = decoded.errors
    table = table.append_column(CROP, crop_column(decoded.crops, decoded.ok))
    table = table.append_column("error_kind", pa.array([e[0] if e else None for e in errors], pa.string()))
    return table.append_column("error", pa.array([e[1] if e else None for e in errors], pa.string()))


def crop_column(crops: np.ndarray, ok: np.ndarray) -> pa.Array:
    """The crops of the rows where `ok` as one large_binary column (null elsewhere), on the crops' own memory."""
    lengths = np.where(ok, crops[0].nbytes if len(crops) else 0, 0)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    validity = pa.py_buffer(np.packbits(ok, bitorder="little"))
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(np.ascontiguousarray(crops))]
    return pa.LargeBinaryArray.from_buffers(pa.large_binary(), len(ok), buffers, null_count=int((~ok).sum()))


def crops_of(column: pa.ChunkedArray, shape: tuple[int, ...]) -> np.ndarray:
    """The non-null crops of a `crop_column` (after Ray moved it) as one (k, *shape) uint8 array, no copy per row."""
    values = column.drop_null().combine_chunks()
    offsets = np.frombuffer(values.buffers()[1], np.int64)[values.offset : values.offset + len(values) + 1]
    nbytes = int(np.prod(shape))
    if offsets[-1] - offsets[0] != len(values) * nbytes:
        raise ValueError(f"crops of {np.diff(offsets)} bytes, expected {nbytes} each")
    data = np.frombuffer(values.buffers()[2], np.uint8, count=len(values) * nbytes, offset=int(offsets[0]))
    return data.reshape(len(values), *shape)


class Classifier:
    """A Ray actor holding one ONNX Runtime session and its scorer: decoded rows -> output rows."""

    def __init__(self, ref: ModelRef, device: str, threads: int, schema: pa.Schema, source_schema: pa.Schema) -> None:
        from catalog.table import prediction_table

        self.predictor = open_predictor(ref, device, threads)
        print(
            f"classify actor: model {ref.name} ({ref.variant}) on {self.predictor.provider}, {threads} threads",
            flush=True,
        )
        self.info, self.schema, self.source_names = ref.info, schema, source_schema.names
        self.prediction_table = prediction_table

    def __call__(self, batch: pa.Table) -> pa.Table:
        prep = self.predictor.model.card.prep
        column = batch.column(CROP)
        ok = np.asarray(column.is_valid())
        k = int(ok.sum())
        inputs = np.empty((k, 3, prep.size, prep.size), np.float32)
        if k:
            crops = crops_of(column, (prep.size, prep.size, 3))
            for i in range(k):  # one image at a time: cache-friendly, faster than the whole batch
                normalize(crops[i], prep, out=inputs[i])
        scored = self.predictor.predict(inputs)
        kinds, messages = batch.column("error_kind").to_pylist(), batch.column("error").to_pylist()
        errors = [(kind, message) if kind else None for kind, message in zip(kinds, messages)]
        source = batch.select(self.source_names)
        return self.prediction_table(source, scored, ok, errors, self.info, self.schema)


def run_ray(
    source: CatalogueSource | FileSource,
    ref: ModelRef,
    schema: pa.Schema,
    out: Path,
    fmt: str,
    batch_size: int,
    device: str,
    max_pixels: int,
    address: str | None = None,
    decode_tasks: int | None = None,
    actors: int = 1,
    actor_cpus: float = 1.0,
    threads: int = 0,
) -> dict:
    """Run the pipeline into `out` (prepared by the caller), write the manifest; returns run facts for the summary."""
    import ray
    import ray.data
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}-{write_uuid}.{fmt}"

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    start = time.perf_counter()
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows in input order, as the local engine writes them
        prep = ref.prep
        if isinstance(source, CatalogueSource):
            if source.kind == "parquet":
                dataset = ray.data.read_parquet(str(source.path))
            else:
                dataset = ray.data.read_csv(str(source.path), convert_options=source.convert_options())
            convert = source
        else:
            dataset = ray.data.from_arrow(list(source.tables()) or [source.schema.empty_table()])
            convert = None
        dataset = dataset.map_batches(
            decode_stage,
            fn_kwargs={"source": convert, "prep": prep, "max_pixels": max_pixels, "schema": source.schema},
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ray.data.TaskPoolStrategy(size=decode_tasks or None),
            num_cpus=1,
            # Remote arguments that differ from the actors' also keep Ray Data from fusing the decoding into
            # the actors (one process doing both, in turn, instead of decoding while the actors infer).
            memory=DECODE_MEMORY_BASE + batch_size * DECODE_MEMORY_PER_IMAGE,
        )
        gpu = device == "cuda"
        dataset = dataset.map_batches(
            Classifier,
            fn_constructor_kwargs={
                "ref": ref,
                "device": device,
                "threads": threads or max(1, int(actor_cpus)),
                "schema": schema,
                "source_schema": source.schema,
            },
            batch_format="pyarrow",
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=actor_cpus,
            num_gpus=1 if gpu else 0,
        )
        writer = dataset.write_parquet if fmt == "parquet" else dataset.write_csv
        writer(str(out), filename_provider=PartNames())
        wall = time.perf_counter() - start
        resources = ray.cluster_resources()
    finally:
        if started_here:
            ray.shutdown()
    shards = [(path.name, count_rows(path)) for path in sorted(out.iterdir()) if SHARD.match(path.name)]
    facts = {"engine": "ray", "wall_s": round(wall, 3), "cluster_cpus": resources.get("CPU", 0)}
    facts["cluster_gpus"] = resources.get("GPU", 0)
    manifest = write_manifest(out, shards, facts)
    return manifest
