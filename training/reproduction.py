"""The reproduction table: every queued run's reproduced figures beside the study's, written by
`galaxyvit reproduce` as reproduction.md, reproduction.json and reproduction.png in its output folder.

Per run: the study's reported parameter count and train/valid/test accuracy (training/runs.toml),
the reproduced ones (the run folder's metrics.json, history.csv and best.pt), the difference in
percentage points, the best epoch and the epochs trained (fewer than the maximum: early stopped),
and the wall time of the reproduction's attempts. Per family: the best run by validation accuracy.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
from collections.abc import Sequence
from functools import cache
from pathlib import Path

from training.registry import FAMILIES, Run, get_run

STATUS_FILE = "reproduce.json"  # per run folder: the train options and every attempt (written by reproduce)
ACCURACIES = ("train_acc", "valid_acc", "test_acc")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_history(run_dir: Path) -> list[dict]:
    """history.csv rows with numbers parsed ([] while the first epoch runs)."""
    try:
        with open(run_dir / "history.csv", newline="") as f:
            return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except (OSError, ValueError):
        return []


@cache
def checkpoint_facts(best: Path, mtime: float) -> tuple[int | None, int | None]:
    """(trainable parameters, maximum epochs) of the run trained into best.pt (its model rebuilt on the meta
    device); `mtime` is the cache key."""
    import torch

    from training.models import build_model, count_trainable_params

    try:
        ckpt = torch.load(best, map_location="cpu", mmap=True, weights_only=True)
        run, num_classes = Run.from_dict(ckpt["run"]), len(ckpt["class_names"])
        with torch.device("meta"):
            if ckpt.get("hf_config"):  # ViT-Base: the backbone's own configuration
                from transformers import ViTConfig

                from training.vitbase import build_vitbase

                config = ViTConfig.from_dict(json.loads(ckpt["hf_config"]))
                model = build_vitbase(num_classes=num_classes, fine_tune=run.fine_tune is not False,
                                      pretrained=False, config=config)  # fmt: skip
            else:
                model = build_model(run, num_classes=num_classes, pretrained=False)
    except Exception:  # an unreadable best.pt leaves the cells empty; the run's own status says why
        return None, None
    return count_trainable_params(model), run.epochs


def _pct(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def _diff(ours: float | None, study: float | None) -> float | None:
    return None if ours is None or study is None else round(ours - study, 2)


def run_row(run_dir: Path, status: str, error: str | None = None) -> dict:
    """One row of the table for the run folder `run_dir` (named after the run id)."""
    run = get_run(run_dir.name)
    metrics = read_json(run_dir / "metrics.json") or {}
    attempts = (read_json(run_dir / STATUS_FILE) or {}).get("attempts", [])
    history = read_history(run_dir)
    best = run_dir / "best.pt"
    row = {
        "run_id": run.id,
        "family": run.family,
        "status": status,
        "error": error,
        "params": {"study": run.reported_params, "reproduced": None},
        "best_epoch": metrics.get("best_epoch"),
        "epochs_trained": metrics.get("epochs_trained", len(history) or None),
        "max_epochs": None,
        "wall_s": round(sum(a.get("wall_s", 0.0) for a in attempts), 1) if attempts else None,
    }
    if row["wall_s"] is None and history:
        row["wall_s"] = round(sum(h["seconds"] for h in history), 1)  # training time only (no status file)
    if best.is_file():
        row["params"]["reproduced"], row["max_epochs"] = checkpoint_facts(best, best.stat().st_mtime)
    for key in ACCURACIES:
        study, ours = getattr(run, f"reported_{key}"), _pct(metrics.get(key))
        row[key] = {"study": study, "reproduced": ours, "difference": _diff(ours, study)}
    return row


def best_by_family(rows: Sequence[dict]) -> dict:
    """Per family: the reproduced run with the best validation accuracy, and the study's best of the same runs."""
    best = {}
    for family in FAMILIES:
        mine = [r for r in rows if r["family"] == family]
        ours = [r for r in mine if r["valid_acc"]["reproduced"] is not None]
        study = [r for r in mine if r["valid_acc"]["study"] is not None]
        if not mine:
            continue
        best[family] = {
            "reproduced": max(ours, key=lambda r: r["valid_acc"]["reproduced"])["run_id"] if ours else None,
            "study": max(study, key=lambda r: r["valid_acc"]["study"])["run_id"] if study else None,
        }
    return best


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _delta(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{s:02d}"


def markdown(rows: Sequence[dict], data_label: str, best: dict) -> str:
    lines = [
        "# Reproduction of the study's runs",
        "",
        f"Data: {data_label}. Written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M')} UTC. Accuracies in "
        "percent; Δ = reproduced - study (percentage points); epochs: best / trained (of the maximum); "
        "wall: the reproduction's attempts.",
        "",
        "| run | family | status | params study | params ours | train study | train ours | Δ train | valid study "
        "| valid ours | Δ valid | test study | test ours | Δ test | epochs | wall |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        accs = " | ".join(
            f"{_cell(r[k]['study'])} | {_cell(r[k]['reproduced'])} | {_delta(r[k]['difference'])}" for k in ACCURACIES
        )
        epochs = f"{_cell(r['best_epoch'])} / {_cell(r['epochs_trained'])} (of {_cell(r['max_epochs'])})"
        lines.append(
            f"| {r['run_id']} | {r['family']} | {r['status']} | {_cell(r['params']['study'])} "
            f"| {_cell(r['params']['reproduced'])} | {accs} | {epochs} | {duration(r['wall_s'])} |"
        )
    by_id = {r["run_id"]: r for r in rows}
    lines += ["", "## Best run per family (validation accuracy)", ""]
    lines += [
        "| family | ours | valid | test | study | valid | test |",
        "| --- | --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for family, b in best.items():
        cells = [family]
        for side, run_id in (("reproduced", b["reproduced"]), ("study", b["study"])):
            r = by_id.get(run_id)
            cells += [r["run_id"], _cell(r["valid_acc"][side]), _cell(r["test_acc"][side])] if r else ["-"] * 3
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "## Errors", ""] + [f"- {r['run_id']}: {r['error']}" for r in failed]
    unplotted = [r["run_id"] for r in rows if r["test_acc"]["study"] is None]
    lines += ["", "![reproduced vs reported test accuracy](reproduction.png)", ""]
    if unplotted:
        lines += [f"Not in the plot (the study reports no test accuracy): {', '.join(unplotted)}.", ""]
    return "\n".join(lines)


def plot(rows: Sequence[dict], path: Path) -> list[str]:
    """Reproduced vs reported test accuracy, one point per run, the diagonal drawn; returns the plotted run ids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [r for r in rows if r["test_acc"]["study"] is not None and r["test_acc"]["reproduced"] is not None]
    fig, ax = plt.subplots(figsize=(6.5, 6), dpi=110)
    values = [v for r in points for v in (r["test_acc"]["study"], r["test_acc"]["reproduced"])] or [0.0, 100.0]
    lo, hi = max(0.0, min(values) - 5), min(100.0, max(values) + 5)
    ax.plot([lo, hi], [lo, hi], color="grey", linestyle="--", linewidth=1, label="reproduced = reported")
    for family, colour in zip(FAMILIES, ("tab:blue", "tab:orange", "tab:green")):
        mine = [r for r in points if r["family"] == family]
        if mine:
            xs, ys = [r["test_acc"]["study"] for r in mine], [r["test_acc"]["reproduced"] for r in mine]
            ax.scatter(xs, ys, color=colour, label=family, zorder=3)
            for r, x, y in zip(mine, xs, ys):
                ax.annotate(r["run_id"], (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="study test accuracy (%)", ylabel="reproduced test accuracy (%)")
    ax.set_title(f"Reproduced vs reported test accuracy ({len(points)} runs)")
    ax.legend(loc="upper left")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return [r["run_id"] for r in points]


def write_table(out: Path, rows: Sequence[dict], data_label: str) -> dict:
    """reproduction.md, .json and .png in `out`; returns the JSON content."""
    best = best_by_family(rows)
    plotted = plot(rows, out / "reproduction.png")
    table = {"data": data_label, "runs": list(rows), "best_by_family": best, "plotted": plotted}
    _write_text(out / "reproduction.json", json.dumps(table, indent=2) + "\n")
    _write_text(out / "reproduction.md", markdown(rows, data_label, best))
    return table


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
