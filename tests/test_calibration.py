"""Temperature scaling, ECE, reliability diagram; OOD scores, AUROC and the 95% threshold."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image

from galaxyvit.calibration import (
    Calibration,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    reliability_bins,
    softmax,
    write_reliability_diagram,
)
from galaxyvit.ood import OODRule, auroc, choose_method, compare_methods, energy, fit_ood_rule, galaxy_score


def overconfident_fixture(n: int = 3000, classes: int = 8, sharpen: float = 4.0, seed: int = 0):
    """Labels drawn from softmax(z): z is calibrated by construction; sharpen * z is over-confident."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    p = softmax(z)
    labels = np.array([rng.choice(classes, p=row) for row in p])
    return sharpen * z, labels


def test_fitted_temperature_lowers_nll_and_ece_of_an_overconfident_model():
    logits, labels = overconfident_fixture()
    cal = calibrate(logits, labels)
    assert cal.temperature == pytest.approx(4.0, rel=0.1)  # it undoes the sharpening
    assert cal.nll_after < cal.nll_before - 0.5
    assert cal.ece_after < 0.03 < 0.2 < cal.ece_before
    assert cal.n_bins == 15 and cal.n_samples == 3000
    np.testing.assert_array_equal(softmax(logits, cal.temperature).argmax(1), logits.argmax(1))
    assert Calibration.from_dict(cal.to_dict()) == cal


def test_fitted_temperature_is_the_nll_minimum():
    logits, labels = overconfident_fixture(n=500, sharpen=0.5, seed=1)  # under-confident: T < 1
    t = fit_temperature(logits, labels)
    assert t < 1
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 2001))
    best = min(nll(logits, labels, g) for g in grid)
    assert nll(logits, labels, t) <= best + 1e-9


def test_temperature_stops_at_the_bounds():
    logits = np.array([[50.0, 0.0], [50.0, 0.0]])
    labels = np.array([0, 1])  # half wrong at huge confidence: the NLL keeps falling towards T = infinity
    assert fit_temperature(logits, labels) == pytest.approx(20.0, rel=1e-6)


def test_ece_by_hand():
    # 10 predictions at confidence 0.8, 8 right: calibrated. 10 at 0.95, 5 right: gap 0.45 on half the data.
    probs = np.array([[0.8, 0.2]] * 10 + [[0.95, 0.05]] * 10)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 5 + [1] * 5)
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.45)
    bins = reliability_bins(probs, labels)
    assert bins["count"].sum() == 20 and bins["count"][11] == 10 and bins["count"][14] == 10  # (0.733, 0.8], (0.933, 1]
    np.testing.assert_allclose(bins["accuracy"][[11, 14]], [0.8, 0.5])


def test_calibration_rejects_bad_input():
    with pytest.raises(ValueError):
        nll(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError):
        nll(np.zeros((2, 4)), np.array([0, 4]))


def test_reliability_diagram_is_a_png(tmp_path):
    logits, labels = overconfident_fixture(n=400)
    path = write_reliability_diagram(logits, labels, 4.0, tmp_path / "sub" / "reliability.png", title="fixture")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 500 and image.height > 300


# ------------------------------------------------------------------------------------------------ OOD


def test_auroc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 6, 30).astype(float)  # many ties
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs))
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0 and auroc([1, 1], [1]) == 0.5


def test_energy_and_max_softmax_scores():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(energy(logits), [-np.log(2), -(10 + np.log1p(np.exp(-10)))])
    np.testing.assert_allclose(galaxy_score(logits, "energy"), -energy(logits))
    np.testing.assert_allclose(galaxy_score(logits, "max_softmax"), [0.5, 1 / (1 + np.exp(-10))])
    with pytest.raises(ValueError, match="unknown logit OOD score"):
        galaxy_score(logits, "entropy")


def test_threshold_lets_95_percent_of_validation_galaxies_pass():
    rng = np.random.default_rng(0)
    valid = rng.normal(0, 3, (200, 8))
    for method in ("energy", "max_softmax"):
        rule = fit_ood_rule(valid, method)
        passed = rule.in_distribution(valid)
        assert passed.sum() == 190 and rule.valid_pass_rate == 0.95  # distinct scores: exactly 95%, the lowest cut
        assert OODRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(ValueError):
        OODRule.from_dict({**rule.to_dict(), "method": "entropy"})


def test_choose_method_picks_the_score_that_separates():
    rng = np.random.default_rng(1)
    galaxies = rng.normal(0, 1, (100, 8))
    galaxies[np.arange(100), rng.integers(0, 8, 100)] += 6  # confident, moderate logits
    flat_but_large = np.full((50, 8), 9.0) + rng.normal(0, 0.1, (50, 8))  # huge logsumexp, no winner
    method, aurocs = choose_method(galaxies, flat_but_large)
    assert method == "max_softmax" and aurocs["max_softmax"] > 0.99 and aurocs["energy"] < 0.1
    quiet = rng.normal(0, 0.1, (50, 8)) - 5  # tiny logits all round: energy separates perfectly
    assert compare_methods(galaxies, quiet)["energy"] == 1.0
