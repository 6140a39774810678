"""Our test-split predictions beside the study's own ViT-Base, galaxy by galaxy.

The study's ViT-Base run 121221C predicted every galaxy of its GZ2 test split (31,191 rows in
galaxyvit.paths.STUDY_PREDICTIONS: GalaxyID,class,pred; 84.41% overall). When a model is evaluated
on that split, `write_study_comparison` writes study_comparison.md and study_comparison.json:
overall and per-class recall of both models on the same galaxies, the fraction of galaxies on which
they predict the same class, and McNemar's exact test on the galaxies where exactly one is right.

Which split counts as the study's: at least half of the evaluated galaxy ids are in the study's
test split, and on every shared galaxy our true label is the study's `class`. Then the comparison
runs on the shared galaxies (the intersection) and says how many those are: an evaluation that
skipped missing or unreadable images, or used --limit, is compared on what it evaluated, and the
study's figures are recomputed on the same galaxies. Anything else (the validation split, a
synthetic or folder dataset, other labels) is another split: nothing is written, None returned.
Fractions in the JSON are 0-1; the markdown shows percent.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import STUDY_PREDICTIONS

REFERENCE_NAME = "the study's ViT-Base (run 121221C)"
MIN_SHARE_IN_REFERENCE = 0.5  # below this the evaluated split is not the study's test split


def read_reference(path: Path) -> dict[str, tuple[int, int]]:
    """GalaxyID -> (true class, the study's predicted class)."""
    with open(path, newline="") as f:
        return {row["GalaxyID"].strip(): (int(row["class"]), int(row["pred"])) for row in csv.DictReader(f)}


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: 2 P(X <= min(b, c)), X ~ Binomial(b + c, 1/2), capped at 1."""
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    term, tail = 1, 1  # C(n, 0); exact integers, so no underflow until the final division
    for i in range(1, k + 1):
        term = term * (n - i + 1) // i
        tail += term
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))


def recall(y_true: Sequence[int], y_pred: Sequence[int], label: int | None = None) -> float | None:
    """Fraction right among the galaxies of class `label` (all galaxies when None); None when there are none."""
    pairs = [(t, p) for t, p in zip(y_true, y_pred) if label is None or t == label]
    return sum(t == p for t, p in pairs) / len(pairs) if pairs else None


def compare_with_study(
    galaxy_ids: Sequence[str | int],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    reference: dict[str, tuple[int, int]],
) -> dict | None:
    """The comparison as a dict (see the module docstring), or None when this is not the study's split."""
    if not len(galaxy_ids) == len(y_true) == len(y_pred):
        raise ValueError(f"{len(galaxy_ids)} galaxy ids, {len(y_true)} true labels, {len(y_pred)} predictions")
    ids = [str(g).strip() for g in galaxy_ids]
    if len(set(ids)) != len(ids):
        raise ValueError("galaxy ids repeat: each evaluated galaxy must appear once")
    shared = [i for i, g in enumerate(ids) if g in reference]
    if not ids or len(shared) < MIN_SHARE_IN_REFERENCE * len(ids):
        return None
    if any(int(y_true[i]) != reference[ids[i]][0] for i in shared):
        return None  # same ids, other labels: not the study's ground truth
    truth = [int(y_true[i]) for i in shared]
    ours = [int(y_pred[i]) for i in shared]
    study = [reference[ids[i]][1] for i in shared]
    ours_only = sum(o == t != s for t, o, s in zip(truth, ours, study))
    study_only = sum(s == t != o for t, o, s in zip(truth, ours, study))
    all_truth, all_study = zip(*reference.values())
    return {
        "reference": REFERENCE_NAME,
        "galaxies_evaluated": len(ids),
        "galaxies_compared": len(shared),
        "galaxies_in_reference": len(reference),
        "evaluated_not_in_reference": len(ids) - len(shared),
        "overall_recall": {"ours": recall(truth, ours), "study": recall(truth, study)},
        "study_overall_recall_full_split": recall(all_truth, all_study),
        "per_class": [
            {
                "label": label,
                "name": name,
                "galaxies": truth.count(label),
                "ours": recall(truth, ours, label),
                "study": recall(truth, study, label),
            }
            for label, name in enumerate(CLASS_NAMES)
        ],
        "agreement": sum(o == s for o, s in zip(ours, study)) / len(shared),
        "mcnemar": {
            "test": "exact, two-sided binomial on the discordant pairs",
            "ours_right_study_wrong": ours_only,
            "ours_wrong_study_right": study_only,
            "p_value": mcnemar_exact(ours_only, study_only),
        },
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _p(value: float) -> str:
    return "p < 1e-300" if value < 1e-300 else f"p = {value:.3g}"


def comparison_markdown(result: dict) -> str:
    n, m = result["galaxies_compared"], result["mcnemar"]
    b, c = m["ours_right_study_wrong"], m["ours_wrong_study_right"]
    lines = [
        f"# Galaxy by galaxy against {result['reference']}",
        "",
        f"Compared on {n:,} galaxies: those of the {result['galaxies_evaluated']:,} evaluated that are in the "
        f"study's GZ2 test split of {result['galaxies_in_reference']:,} "
        f"({result['evaluated_not_in_reference']:,} evaluated galaxies not in it were left out). "
        f"The study's figures are on the same galaxies (on its whole split: "
        f"{_pct(result['study_overall_recall_full_split'])}).",
        "",
        "| class | galaxies | ours recall | study recall |",
        "| --- | --- | --- | --- |",
        f"| overall | {n:,} | {_pct(result['overall_recall']['ours'])} | {_pct(result['overall_recall']['study'])} |",
    ]
    lines += [
        f"| {row['name']} | {row['galaxies']:,} | {_pct(row['ours'])} | {_pct(row['study'])} |"
        for row in result["per_class"]
    ]
    lines += [
        "",
        f"The two models predict the same class for {_pct(result['agreement'])} of the galaxies.",
        "",
        f"McNemar's exact test (two-sided binomial, p = 1/2, on the {b + c:,} galaxies where exactly one model is "
        f"right): ours right and the study wrong on {b:,}, ours wrong and the study right on {c:,}; "
        f"{_p(m['p_value'])}.",
        "",
    ]
    return "\n".join(lines)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_study_comparison(
    out_dir: Path,
    galaxy_ids: Sequence[str | int],
    y_true: Sequence[int],
    y_pred: Sequence[int],
    *,
    reference: Path = STUDY_PREDICTIONS,
    class_names: Sequence[str] = CLASS_NAMES,
) -> Path | None:
    """Write out_dir/study_comparison.{md,json} and return the .md path; None (nothing written) for other splits.

    `class_names` are the evaluated data's classes: the study's split has the 8 GZ2 classes in label order.
    `reference` is a CSV with the columns GalaxyID,class,pred (default: the study's own predictions).
    """
    if tuple(class_names) != CLASS_NAMES:
        return None
    result = compare_with_study(galaxy_ids, y_true, y_pred, read_reference(Path(reference)))
    if result is None:
        return None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "study_comparison.json", json.dumps(result, indent=2) + "\n")
    md = out_dir / "study_comparison.md"
    _write_atomic(md, comparison_markdown(result))
    return md
