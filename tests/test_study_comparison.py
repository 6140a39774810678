import csv
import json
import math

import pytest

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import GZ2_SPLITS, STUDY_PREDICTIONS
from training.study_comparison import mcnemar_exact, write_study_comparison

# galaxy id: (true class, the study's prediction, ours); 11 is in the reference only, 101 and 102 in ours only
FABRICATED = {
    1: (0, 0, 0),  # both right
    2: (0, 0, 1),  # study right only
    3: (0, 1, 0),  # ours right only
    4: (1, 1, 1),  # both right
    5: (1, 1, 1),  # both right
    6: (1, 0, 1),  # ours right only
    7: (2, 2, 0),  # study right only
    8: (2, 0, 2),  # ours right only
    9: (2, 1, 2),  # ours right only
    10: (1, 2, 0),  # both wrong, and they disagree
}


def write_reference(path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["GalaxyID", "class", "pred"])
        writer.writerows(rows)
    return path


@pytest.fixture
def reference(tmp_path):
    rows = [(g, t, s) for g, (t, s, _) in FABRICATED.items()] + [(11, 0, 0)]
    return write_reference(tmp_path / "reference.csv", rows)


def test_fabricated_split_matches_the_hand_computation(reference, tmp_path):
    ids = [str(g) for g in FABRICATED] + ["101", "102"]
    y_true = [t for t, _, _ in FABRICATED.values()] + [3, 4]
    y_pred = [o for _, _, o in FABRICATED.values()] + [3, 0]
    md = write_study_comparison(tmp_path / "out", ids, y_true, y_pred, reference=reference)
    assert md == tmp_path / "out" / "study_comparison.md"
    result = json.loads((tmp_path / "out" / "study_comparison.json").read_text())

    assert result["galaxies_evaluated"] == 12
    assert result["galaxies_compared"] == 10  # 101 and 102 are not in the reference, 11 was not evaluated
    assert result["evaluated_not_in_reference"] == 2
    assert result["galaxies_in_reference"] == 11
    assert result["overall_recall"] == {"ours": 0.7, "study": 0.5}
    assert result["study_overall_recall_full_split"] == pytest.approx(6 / 11)
    per_class = {row["label"]: (row["galaxies"], row["ours"], row["study"]) for row in result["per_class"]}
    assert per_class[0] == (3, pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert per_class[1] == (4, 0.75, 0.5)
    assert per_class[2] == (3, pytest.approx(2 / 3), pytest.approx(1 / 3))
    assert all(per_class[label] == (0, None, None) for label in range(3, 8))
    assert [row["name"] for row in result["per_class"]] == list(CLASS_NAMES)
    assert result["agreement"] == 0.3  # galaxies 1, 4, 5
    # b = 4 (3, 6, 8, 9), c = 2 (2, 7): p = 2 * (C(6,0) + C(6,1) + C(6,2)) / 2^6 = 44/64
    assert result["mcnemar"]["ours_right_study_wrong"] == 4
    assert result["mcnemar"]["ours_wrong_study_right"] == 2
    assert result["mcnemar"]["p_value"] == 0.6875

    text = md.read_text()
    assert "Compared on 10 galaxies" in text and "2 evaluated galaxies not in it" in text
    assert "| overall | 10 | 70.00% | 50.00% |" in text
    assert "| in-between elliptical | 4 | 75.00% | 50.00% |" in text
    assert "| merger | 0 | - | - |" in text
    assert "30.00% of the galaxies" in text
    assert "p = 0.688" in text


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [(0, 0, 1.0), (4, 2, 0.6875), (2, 4, 0.6875), (10, 0, 2 / 1024), (0, 10, 2 / 1024), (5, 5, 1.0), (3, 0, 0.25)],
)
def test_mcnemar_exact_small_cases(b, c, p):
    assert mcnemar_exact(b, c) == p


def test_mcnemar_exact_large_case_matches_an_independent_computation():
    n, k = 1000, 440  # 2 P(X <= 440), X ~ Binomial(1000, 1/2), by log-gamma
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(terms)
    expected = 2 * math.exp(top) * sum(math.exp(t - top) for t in terms)
    assert mcnemar_exact(k, n - k) == pytest.approx(expected, rel=1e-9)
    assert 1e-5 < expected < 1e-3


def test_other_splits_write_nothing(reference, tmp_path):
    out = tmp_path / "out"
    ids = [str(g) for g in FABRICATED]
    y_true = [t for t, _, _ in FABRICATED.values()]
    y_pred = [o for _, _, o in FABRICATED.values()]
    # disjoint ids (the validation split, synthetic or folder data)
    assert write_study_comparison(out, ["500", "501"], [0, 1], [0, 1], reference=reference) is None
    # under half of the evaluated galaxies in the study's split
    many = ids[:4] + [str(1000 + i) for i in range(5)]
    assert write_study_comparison(out, many, y_true[:4] + [0] * 5, y_pred[:4] + [0] * 5, reference=reference) is None
    # the study's ids with other labels
    relabelled = [(t + 1) % 8 for t in y_true]
    assert write_study_comparison(out, ids, relabelled, y_pred, reference=reference) is None
    # another class list
    names = ["elliptical", "spiral", "edge-on", "merger"]
    assert write_study_comparison(out, ids, y_true, y_pred, reference=reference, class_names=names) is None
    assert not out.exists()


def test_bad_inputs_are_errors(reference, tmp_path):
    with pytest.raises(ValueError, match="repeat"):
        write_study_comparison(tmp_path, ["1", "1"], [0, 0], [0, 0], reference=reference)
    with pytest.raises(ValueError, match="2 galaxy ids, 2 true labels, 1 predictions"):
        write_study_comparison(tmp_path, ["1", "2"], [0, 0], [0], reference=reference)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_packaged_study_predictions_give_the_reported_figures(tmp_path):
    """The real test split with the study's own predictions as ours: 84.41% and the study's per-class recall."""
    study = {row["GalaxyID"]: int(row["pred"]) for row in read_csv(STUDY_PREDICTIONS)}
    split = read_csv(GZ2_SPLITS / "gz2_test.csv")
    assert len(split) == len(study) == 31_191
    ids = [row["galaxyID"] for row in split]
    y_true = [int(row["label1"]) for row in split]
    md = write_study_comparison(tmp_path, ids, y_true, [study[g] for g in ids])
    result = json.loads((tmp_path / "study_comparison.json").read_text())

    assert result["galaxies_compared"] == 31_191 and result["evaluated_not_in_reference"] == 0
    assert round(100 * result["overall_recall"]["study"], 2) == 84.41
    assert result["overall_recall"]["ours"] == result["overall_recall"]["study"]
    assert round(100 * result["study_overall_recall_full_split"], 2) == 84.41
    per_class = [round(100 * row["study"], 1) for row in result["per_class"]]
    assert per_class == [92.8, 88.1, 72.5, 90.0, 83.7, 77.6, 55.1, 65.6]
    assert [row["galaxies"] for row in result["per_class"]] == [6755, 7845, 1471, 3295, 4148, 6094, 1176, 407]
    assert result["agreement"] == 1.0
    assert result["mcnemar"] == {
        "test": "exact, two-sided binomial on the discordant pairs",
        "ours_right_study_wrong": 0,
        "ours_wrong_study_right": 0,
        "p_value": 1.0,
    }
    assert "| overall | 31,191 | 84.41% | 84.41% |" in md.read_text()


def test_a_perfect_model_on_the_packaged_split(tmp_path):
    """Ours always right: every galaxy the study missed is discordant, p underflows and is shown as such."""
    reference = read_csv(STUDY_PREDICTIONS)
    ids = [row["GalaxyID"] for row in reference]
    y_true = [int(row["class"]) for row in reference]
    missed = sum(row["class"] != row["pred"] for row in reference)
    write_study_comparison(tmp_path, ids, y_true, y_true)
    result = json.loads((tmp_path / "study_comparison.json").read_text())
    assert result["overall_recall"]["ours"] == 1.0
    assert result["mcnemar"]["ours_right_study_wrong"] == missed == 31_191 - 26_327
    assert result["mcnemar"]["ours_wrong_study_right"] == 0
    assert result["mcnemar"]["p_value"] == 0.0
    assert round(result["agreement"], 4) == 0.8441
    assert "; p < 1e-300." in (tmp_path / "study_comparison.md").read_text()
