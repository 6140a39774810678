"""Classify a survey catalogue or a pile of cutouts into a sharded Parquet (or CSV) table.

  galaxyvit classify cutouts/ --model NAME --out preds/
  galaxyvit classify catalogue.csv --id-col objid --path-col file --root /data/cutouts --onnx vit/fp32.onnx --out preds/
  galaxyvit classify catalogue.parquet --id-col objid --path-template '{objid}.jpg' --model NAME --out preds/ --resume
  galaxyvit classify catalogue.parquet --model NAME --out preds/ --engine ray --address HEAD:6379 --device cuda

INPUT: image files, folders (recursive), globs, or one catalogue (.csv, .parquet) whose other columns
(ra, dec, ...) pass through to the output. One row per input with the service's answer: id, path, label,
class_name, p_<class> per class (calibrated unless --no-calibrate; the 8-view mean with --tta 8), p_max,
entropy, calibrated, ood_score, in_distribution, spread (--tta 8), embedding (--embeddings), model,
model_version, sha256; an unreadable or refused file gives a row with error_kind and error. Written as
OUT/part-NNNNN files of --shard-size rows, each written atomically; `--resume` keeps the finished shards
of a killed job; OUT/_SUCCESS lists the shards. `galaxyvit similar` searches the embeddings.
Exit status 2 for bad arguments (unknown column, unreadable catalogue, existing output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from catalog.inputs import ArgumentError
from catalog.job import DEFAULT_MAX_PIXELS, DEFAULT_SHARD_SIZE, ENGINES, FORMATS


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs, or one catalogue")
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", help="served model NAME from the BentoML store (BENTOML_HOME)")
    model.add_argument("--onnx", type=Path, help="an exported <variant>.onnx with its model card beside it")
    parser.add_argument("--out", type=Path, required=True, help="output folder of shards and the _SUCCESS manifest")
    parser.add_argument("--format", choices=FORMATS, default="parquet", help="shard format (default parquet)")
    parser.add_argument("--id-col", default="id", help="catalogue: id column (default id)")
    path = parser.add_mutually_exclusive_group()
    path.add_argument("--path-col", help="catalogue: column with each image's path (default path)")
    path.add_argument("--path-template", help="catalogue: image path from columns, e.g. 'images/{objid}.jpg'")
    parser.add_argument("--root", type=Path, help="catalogue: folder of relative paths (default: the catalogue's)")
    parser.add_argument(
        "--no-calibrate", action="store_true", help="raw softmax probabilities, not the card's calibrated ones"
    )
    parser.add_argument("--tta", type=int, choices=(1, 8), default=1, help="8: mean of the 8 rotated/flipped views")
    parser.add_argument("--embeddings", action="store_true", help="write each CLS embedding (galaxyvit similar)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per ONNX Runtime call (default 64)")
    parser.add_argument(
        "--decode-workers", type=int, default=None, help="decode processes (default: cores / 2; 0: in-process)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="ONNX Runtime device")
    parser.add_argument("--variant", choices=("fp32", "int8", "fp16"), default=None, help="artifact (default fp32)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default: all cores)")
    parser.add_argument(
        "--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help=f"rows per shard (default {DEFAULT_SHARD_SIZE:,})"
    )
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    parser.add_argument("--resume", action="store_true", help="continue a killed job: keep its finished shards")
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    ray = parser.add_argument_group("Ray engine (--engine ray)")
    ray.add_argument("--engine", choices=ENGINES, default="local", help="local (default) or ray")
    ray.add_argument("--address", help="Ray cluster address (HEAD:6379, or 'auto'); default: a local Ray instance")
    ray.add_argument("--actors", type=int, default=1, help="inference actors, one ONNX Runtime session each")
    ray.add_argument("--actor-cpus", type=float, default=1.0, help="CPUs reserved per actor (default 1)")


def main(args: argparse.Namespace) -> int:
    try:
        summary = classify(args)
    except ArgumentError as exc:
        print(f"galaxyvit classify: error: {exc}", file=sys.stderr)
        return 2
    print(summary.line(), flush=True)
    return 0


def classify(args: argparse.Namespace):
    from catalog.job import classify_catalogue

    return classify_catalogue(
        args.inputs,
        args.out,
        model=args.model,
        onnx=args.onnx,
        id_col=args.id_col,
        path_col=args.path_col,
        path_template=args.path_template,
        root=args.root,
        fmt=args.format,
        engine=args.engine,
        batch_size=args.batch_size,
        decode_workers=args.decode_workers,
        device=args.device,
        variant=args.variant,
        shard_size=args.shard_size,
        resume=args.resume,
        force=args.force,
        threads=args.threads,
        max_pixels=args.max_pixels,
        progress=not args.no_progress,
        address=args.address,
        actors=args.actors,
        actor_cpus=args.actor_cpus,
        calibrate=not args.no_calibrate,
        tta=args.tta,
        embeddings=args.embeddings,
    )
