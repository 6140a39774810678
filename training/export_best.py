"""`galaxyvit export --best RESULTS_DIR`: choose the run to export by validation accuracy (never by test)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from training.export_gate import ExportError
from training.metrics import MetricsError, RunMetrics


@dataclass
class Candidate:
    run_dir: Path
    run_id: str
    family: str
    valid_acc: float | None
    test_acc: float | None
    has_checkpoint: bool


def find_candidates(results_dir: str | Path) -> list[Candidate]:
    """Every RESULTS_DIR/*/metrics.json, with whether a best.pt sits beside it."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ExportError(f"results directory {results_dir} does not exist")
    found = []
    for metrics_path in sorted(results_dir.glob("*/metrics.json")):
        try:
            metrics = RunMetrics.load(metrics_path)
        except MetricsError as exc:
            print(f"warning: skipping {exc}", file=sys.stderr)
            continue
        found.append(
            Candidate(
                run_dir=metrics_path.parent,
                run_id=metrics.run_id,
                family=metrics.family,
                valid_acc=metrics.valid_acc,
                test_acc=metrics.test_acc,
                has_checkpoint=(metrics_path.parent / "best.pt").is_file(),
            )
        )
    return found


def choose_best(results_dir: str | Path, out=None) -> Path:
    """The best.pt of the run with the highest validation accuracy; prints the candidates and the reason."""
    out = out or sys.stdout
    candidates = find_candidates(results_dir)
    usable = [c for c in candidates if c.has_checkpoint and c.valid_acc is not None]
    if not usable:
        raise ExportError(
            f"no run in {results_dir} has both metrics.json with valid_acc and best.pt "
            f"({len(candidates)} metrics.json found)"
        )
    best = max(usable, key=lambda c: (c.valid_acc, c.run_dir.name))

    def pct(value) -> str:
        return f"{value * 100:.2f}" if isinstance(value, int | float) else "-"

    print("| run dir | run | family | valid acc % | test acc % | best.pt |", file=out)
    print("|---|---|---|---:|---:|---|", file=out)
    for c in sorted(candidates, key=lambda c: -(c.valid_acc or -1)):
        mark = " **←**" if c is best else ""
        print(
            f"| {c.run_dir.name}{mark} | {c.run_id} | {c.family} | {pct(c.valid_acc)} | {pct(c.test_acc)} | "
            f"{'yes' if c.has_checkpoint else 'missing'} |",
            file=out,
        )
    print(
        f"chose {best.run_dir / 'best.pt'}: highest validation accuracy ({pct(best.valid_acc)}%) of "
        f"{len(usable)} run(s) with a checkpoint (the test split is not used to choose).",
        file=out,
    )
    return best.run_dir / "best.pt"
