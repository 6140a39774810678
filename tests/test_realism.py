"""The realism table (training/realism.py, `galaxyvit synth --stats`): the issue's definitions, and the synthetic
cutouts' medians within the tolerance of the 300 real SDSS cutouts."""

from __future__ import annotations

import numpy as np
import pytest

from app import cli
from training import realism


def test_definitions_reproduce_the_issue_column_for_the_packaged_real_cutouts() -> None:
    got = realism.summarise(realism.real_images())
    assert got["sky"] == (5, 5, 4)
    assert got["noise"] == pytest.approx((4.45, 4.45, 4.45), abs=0.01)  # 1.4826 x a MAD of 3 grey levels
    assert got["centre"] == pytest.approx((121, 99, 70), abs=0.5)
    assert got["centre_rb"][0] == pytest.approx(1.72, abs=0.005)
    assert got["area"][0] == pytest.approx(0.17, abs=0.005)


def test_image_stats_of_a_constructed_image() -> None:
    rng = np.random.default_rng(0)
    image = np.clip(np.round(20 + rng.normal(0, 3, (424, 424, 3))), 0, 255)
    image[192:232, 192:232] = (200, 100, 50)  # the central 40x40, exactly
    stats = realism.image_stats(image.astype(np.uint8))
    assert stats["sky"] == (20, 20, 20)
    assert stats["noise"] == pytest.approx((3, 3, 3), abs=0.3)
    assert stats["centre"] == (200, 100, 50) and stats["centre_rb"] == (4.0,)
    assert stats["area"][0] == pytest.approx(40 * 40 / 212**2, rel=0.05)  # the square; noise rarely passes 5 sigma


def test_synthetic_medians_within_tolerance_of_the_real_targets() -> None:
    summary = realism.summarise(realism.synthetic_images(40, seed=1))
    assert realism.misses(summary) == []
    far = {**summary, "centre": (72, 61, 48)}  # the issue's old generator: galaxy centres half as bright
    assert len(realism.misses(far)) == 3


def test_synth_stats_command(capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["synth", "--stats", "--n", "16", "--seed", "2"]) in (0, 1)
    out = capsys.readouterr().out
    assert "| centre R/B |" in out and "300 real SDSS cutouts" in out and "3 real GZ2 cutouts" in out
