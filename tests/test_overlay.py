"""The attention figure (galaxyvit/overlay.py) shared by POST /explain?format=png and `galaxyvit explain`."""

from __future__ import annotations

import numpy as np

from galaxyvit.overlay import BAR_WIDTH, GAP, MARGIN, crop_box, figure, panel_scale, prediction_title


def crop_and_map(size: int = 224, grid: int = 14) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    crop = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    rollout = np.zeros((grid, grid), np.float32)
    rollout[0, 0] = 1.0  # all attention on the top-left patch
    return crop, rollout


def test_the_crop_and_the_overlay_side_by_side():
    crop, rollout = crop_and_map()
    title = prediction_title("barred spiral", 0.673, True, "a.jpg")
    assert title == "a.jpg: barred spiral (67.3%, calibrated)"
    image = np.asarray(figure(crop, rollout, title=title))
    left, top, right, bottom = crop_box(224, title)
    np.testing.assert_array_equal(image[top:bottom, left:right], crop)
    shown = image[top:bottom, right + GAP : right + GAP + 224].astype(int)
    # opaque-ish where the map is high (top-left), the crop itself where it is at its minimum (bottom-right)
    assert np.abs(shown[:8, :8] - crop[:8, :8]).mean() > 20
    np.testing.assert_array_equal(shown[-16:, -16:], crop[-16:, -16:])
    assert (image[MARGIN : MARGIN + 16, MARGIN : MARGIN + 200] < 100).any()  # the title is written


def test_the_colour_bar_follows_the_map_kind():
    crop, rollout = crop_and_map()
    bar_x = MARGIN + 2 * (224 + GAP) + BAR_WIDTH // 2
    _, top, _, bottom = crop_box(224, "t")
    column = np.asarray(figure(crop, rollout, title="t"))[top + 2 : bottom - 2, bar_x].astype(int)
    assert column[0].min() > 230 and column[-1].max() < 25  # rollout: white-yellow at the top, black at the bottom
    signed = np.asarray(figure(crop, rollout - 0.5, signed=True, title="t"))[top + 2 : bottom - 2, bar_x].astype(int)
    red, middle, blue = signed[0], signed[len(signed) // 2], signed[-1]
    assert red[0] > 200 > red[2] and blue[2] > 200 > blue[0] and middle.min() > 200  # red, white, blue


def test_heads_widen_the_figure():
    crop, rollout = crop_and_map()
    plain = figure(crop, rollout, title="t")
    with_heads = figure(crop, rollout, title="t", heads=np.random.default_rng(1).random((3, 4, 4)))
    assert with_heads.height == plain.height and with_heads.width > plain.width + 2 * 20


def test_a_small_crop_is_enlarged_pixel_for_pixel():
    crop, rollout = crop_and_map(size=64, grid=4)
    assert panel_scale(64) == 4 and panel_scale(224) == 1
    left, top, right, bottom = crop_box(64, "t")
    assert right - left == bottom - top == 256
    shown = np.asarray(figure(crop, rollout, title="t"))[top:bottom, left:right]
    np.testing.assert_array_equal(shown, crop.repeat(4, 0).repeat(4, 1))
