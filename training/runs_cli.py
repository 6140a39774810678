"""List the study's runs (training/runs.toml): id, family, key hyperparameters, the parameter count
computed by building the model, the count the study reported, and the study's test accuracy.

Examples:
  galaxyvit runs                      # readable table of every run
  galaxyvit runs --family linformer   # one family
  galaxyvit runs --json               # JSON list for scripts
"""

from __future__ import annotations

import argparse
import json

from training.families import FAMILIES, family
from training.registry import load_runs


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON list of runs instead of a table")
    parser.add_argument("--family", choices=tuple(FAMILIES), help="only runs of this model family")


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.2f}"


def main(args: argparse.Namespace) -> int:
    from training.models import run_params  # torch only when the command runs

    runs = [r for r in load_runs().values() if args.family in (None, r.family)]
    rows = [{**run.to_dict(), "params": run_params(run)} for run in runs]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("id", "family", "architecture", "bs", "lr", "step", "gamma", "weights", "params", "reported", "test acc")
    table = [header]
    for row, run in zip(rows, runs):
        weights = run.class_weights if isinstance(run.class_weights, str) else "custom"
        match = "" if run.reported_params in (None, row["params"]) else " !"
        table.append(
            (
                run.id,
                run.family,
                family(run.family).architecture(run),
                str(run.batch_size),
                f"{run.lr:g}",
                str(run.step_size),
                f"{run.gamma:g}",
                weights,
                fmt(row["params"]) + match,
                fmt(run.reported_params),
                fmt(run.reported_test_acc),
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for i, r in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\n{len(runs)} runs; params = trainable parameters of the built model (! = differs from the study)")
    return 0
