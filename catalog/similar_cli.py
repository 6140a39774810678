"""Find the galaxies of a classified catalogue most like one galaxy, or the least galaxy-like rows.

  galaxyvit classify cutouts/ --model NAME --embeddings --out preds/    # a catalogue with embeddings
  galaxyvit similar 106587 --catalogue preds/                           # the 20 rows nearest to row id 106587
  galaxyvit similar my_cutout.jpg --catalogue preds/ --k 5              # ... to an image (the catalogue's model)
  galaxyvit similar --odd --catalogue preds/ --k 50 --out odd.csv       # the 50 lowest ood_score rows

QUERY is a row id of the catalogue (that row is left out of its answer) or an image file, embedded by the
model that classified the catalogue. Distance: cosine distance of the CLS embeddings (0 = same direction,
up to 2). The nearest-neighbour index (usearch HNSW) is built on first use, saved beside the shards
(_similar.usearch, _similar.json) and rebuilt only when the shards change. --odd ranks rows by the
not-a-galaxy score (ood_score, lowest first; needs a model exported with --valid-data).
Prints a table, or writes it with --out (.csv or .parquet). Exit status 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pyarrow as pa

from catalog.inputs import ArgumentError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("query", nargs="?", metavar="QUERY", help="a row id of the catalogue or an image file")
    parser.add_argument("--catalogue", type=Path, required=True, help="a `galaxyvit classify` output folder")
    parser.add_argument("--k", type=int, default=20, help="rows to list (default 20)")
    parser.add_argument("--odd", action="store_true", help="list the least galaxy-like rows (lowest ood_score)")
    parser.add_argument("--out", type=Path, help="write the rows to this .csv or .parquet file instead of printing")


def main(args: argparse.Namespace) -> int:
    try:
        table = run(args)
    except ArgumentError as exc:
        print(f"galaxyvit similar: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        print(format_table(table))
    return 0


def run(args: argparse.Namespace) -> pa.Table:
    from catalog.similar import odd, similar

    if args.odd == (args.query is not None):
        raise ArgumentError("give a QUERY (a row id or an image file) or --odd, not both")
    if args.out is not None and args.out.suffix not in (".csv", ".parquet"):
        raise ArgumentError(f"--out {args.out}: name a .csv or .parquet file")
    table = odd(args.catalogue, args.k) if args.odd else similar(args.catalogue, args.query, args.k)
    if args.out is not None:
        if args.out.suffix == ".parquet":
            import pyarrow.parquet as pq

            pq.write_table(table, args.out)
        else:
            import pyarrow.csv as pacsv

            pacsv.write_csv(table, args.out)
        print(f"{table.num_rows} rows -> {args.out}")
    return table


def format_table(table: pa.Table) -> str:
    """One line per row: rank, id, distance (when there is one), class, p_max, ood_score, galaxy?, path."""
    lines = []
    has_distance = "distance" in table.column_names
    head = f"{'rank':>4}  {'id':<14} " + (f"{'distance':>8}  " if has_distance else "")
    lines.append(head + f"{'class':<24} {'p_max':>5} {'ood_score':>10} {'galaxy?':>7}  path")
    for row in table.to_pylist():
        flag = {True: "yes", False: "no", None: "-"}[row["in_distribution"]]
        score = "-" if row["ood_score"] is None else f"{row['ood_score']:.4g}"
        p_max = "-" if row["p_max"] is None else f"{row['p_max']:.2f}"
        line = f"{row['rank']:>4}  {str(row['id']):<14} " + (f"{row['distance']:8.4f}  " if has_distance else "")
        lines.append(line + f"{row['class_name'] or '-':<24} {p_max:>5} {score:>10} {flag:>7}  {row['path']}")
    return "\n".join(lines)
