"""One classification job, from inputs to the output folder, on either engine: `classify_catalogue`.

The command line (`galaxyvit classify`) and the demo both call it; it returns a `Summary` whose
`line()` is what they print.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from catalog.inputs import ArgumentError, open_source
from catalog.model import resolve_model
from catalog.predict import open_predictor
from catalog.shards import ShardWriter, prepare_output
from catalog.table import output_schema
from inference.decode import MAX_PIXELS

FORMATS = ("parquet", "csv")
ENGINES = ("local", "ray")
DEFAULT_SHARD_SIZE = 50_000
DEFAULT_MAX_PIXELS = MAX_PIXELS  # the service's own limit per image


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_decode_workers() -> int:
    """One decode process per two cores (at least one): decoding a cutout costs a fraction of inferring it."""
    return max(1, cores() // 2)


@dataclass
class Summary:
    """What a job did: rows classified in this run (a resumed job skips finished shards) and where they are."""

    out: Path
    engine: str
    rows: int
    total_rows: int
    seconds: float
    errors: dict[str, int]
    provider: str
    shards: int
    skipped_rows: int = 0
    facts: dict = field(default_factory=dict)  # engine details: time and CPU per stage and process

    @property
    def images_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        errors = sum(self.errors.values())
        detail = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items()))
        text = f"classified {self.rows:,} rows ({errors:,} errors{': ' + detail if detail else ''})"
        text += f" in {self.seconds:.1f} s, {self.images_per_s:.1f} images/s, {self.engine} engine on {self.provider}"
        if self.skipped_rows:
            text += f"; {self.skipped_rows:,} rows of finished shards kept"
        shards = "shard" if self.shards == 1 else "shards"
        return text + f" -> {self.out} ({self.total_rows:,} rows in {self.shards} {shards})"


def classify_catalogue(
    inputs: list[str | Path],
    out: str | Path,
    *,
    model: str | None = None,
    onnx: str | Path | None = None,
    home: Path | None = None,
    id_col: str = "id",
    path_col: str | None = None,
    path_template: str | None = None,
    root: str | Path | None = None,
    fmt: str = "parquet",
    engine: str = "local",
    batch_size: int = 64,
    decode_workers: int | None = None,
    device: str = "auto",
    variant: str | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    resume: bool = False,
    force: bool = False,
    threads: int = 0,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = True,
    address: str | None = None,
    actors: int = 1,
    actor_cpus: float = 1.0,
    calibrate: bool = True,
    tta: int = 1,
    embeddings: bool = False,
) -> Summary:
    """Classify every input into the sharded table at `out`; ArgumentError for anything wrong before it starts."""
    if fmt not in FORMATS or engine not in ENGINES or device not in ("auto", "cpu", "cuda"):
        raise ArgumentError(f"format must be one of {FORMATS}, engine one of {ENGINES}, device auto, cpu or cuda")
    if batch_size < 1 or shard_size < 1 or max_pixels < 1 or actors < 1 or actor_cpus <= 0:
        raise ArgumentError("--batch-size, --shard-size, --max-pixels, --actors and --actor-cpus must be positive")
    if decode_workers is not None and decode_workers < 0:
        raise ArgumentError("--decode-workers must be 0 (decode in the main process) or more")
    if embeddings and fmt != "parquet":
        raise ArgumentError("--embeddings needs --format parquet (a CSV cell cannot hold a vector)")
    if engine == "ray" and resume:
        raise ArgumentError("--resume works with the local engine (the Ray engine rewrites the output: --force)")
    source = open_source([str(i) for i in inputs], id_col, path_col, path_template, root)
    ref = resolve_model(model, onnx, variant, home, calibrate=calibrate, tta=tta, embeddings=embeddings)
    schema = output_schema(source.schema, ref.info)
    out = Path(out).resolve()
    job = {
        **source.describe(),
        "model": ref.info.name,
        "model_version": ref.info.version,
        "sha256": ref.info.sha256,
        "variant": ref.variant,
        "model_dir": str(ref.model_dir),  # where `galaxyvit similar` finds the model for an image query
        "calibrate": calibrate,
        "tta": tta,
        "format": fmt,
        "shard_size": shard_size,
        "max_pixels": max_pixels,
        "columns": schema.names,
    }
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ArgumentError("the Ray engine needs Ray: pip install 'galaxyvit[ray]'") from None
        prepare_output(out, job, resume=False, force=force)
        return _run_ray(source, ref, schema, out, fmt, batch_size, device, max_pixels, address, decode_workers,
                        actors, actor_cpus, threads)  # fmt: skip
    done = prepare_output(out, job, resume, force)
    skipped = sum(rows for _, rows in done)
    writer = ShardWriter(out, fmt, schema, shard_size, done)
    workers = default_decode_workers() if decode_workers is None else decode_workers
    from catalog.local import run_local

    bar = None
    if progress:
        from tqdm import tqdm

        remaining = None if source.total is None else max(0, source.total - skipped)
        bar = tqdm(total=remaining, unit="img", desc="classify", file=sys.stderr, smoothing=0.1, dynamic_ncols=True)
    try:
        stats = run_local(
            source.tables(skipped), lambda: open_predictor(ref, device, threads), ref.prep, ref.info, schema, writer,
            batch_size, workers, max_pixels, bar,
        )  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    facts = {"engine": "local", "batch_size": batch_size, "decode_workers": workers, **stats.to_dict()}
    manifest = writer.finish(facts)
    return Summary(out, "local", stats.rows, manifest["rows"], stats.wall_s, dict(sorted(writer.errors.items())),
                   stats.provider, len(manifest["shards"]), skipped, facts)  # fmt: skip


def _run_ray(source, ref, schema, out, fmt, batch_size, device, max_pixels, address, decode_tasks, actors,
             actor_cpus, threads) -> Summary:  # fmt: skip
    from catalog.ray_engine import run_ray

    manifest = run_ray(source, ref, schema, out, fmt, batch_size, device, max_pixels, address, decode_tasks, actors,
                       actor_cpus, threads)  # fmt: skip
    # each actor prints the provider ONNX Runtime really gave it ("classify actor: ... on CPUExecutionProvider")
    return Summary(out, "ray", manifest["rows"], manifest["rows"], manifest["run"]["wall_s"], manifest["errors"],
                   f"{actors} actor(s) with --device {device}", len(manifest["shards"]), 0, manifest)  # fmt: skip
