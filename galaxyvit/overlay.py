"""The attention figure of `POST /explain?format=png` and of `galaxyvit explain` (Pillow and numpy only).

One figure, drawn the same way by both: a title with the predicted class and its probability, the crop
the model sees, the same crop with the attention map overlaid, and a colour bar; `galaxyvit explain`
adds the last layer's per-head maps on the right.

A rollout (ViT, ViT-Base) is a distribution over the patches: drawn min to max in a black-red-yellow
ramp, more opaque where the map is higher. The Linformer's map is signed (docs/explain.md): red where
positive, blue where negative, more opaque the larger |weight|. The web page (serving/ui/app.js)
draws its overlay with the same ramps.
"""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

OPACITY = 0.6  # overlay opacity where the map is at its largest
POSITIVE, NEGATIVE = (1.0, 0.1, 0.1), (0.1, 0.3, 1.0)  # signed maps
MARGIN, GAP, BAR_WIDTH, BAR_LABELS = 14, 14, 16, 56
TITLE_SIZE, CAPTION_SIZE = 16, 12
MIN_PANEL = 200  # a smaller crop is shown enlarged by a whole factor (each pixel a block), e.g. 64 -> 256
BACKGROUND, INK = (255, 255, 255), (20, 20, 20)


def upsampled(grid: np.ndarray, size: int) -> np.ndarray:
    """A (g, g) map resized to (size, size) float32, bilinear (each patch's value at its centre)."""
    image = Image.fromarray(np.asarray(grid, np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def ramp(value: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> (..., 3) colours in [0, 1]: black, red, yellow, white (a rollout's colours)."""
    return np.stack([np.clip(3 * value, 0, 1), np.clip(3 * value - 1, 0, 1), np.clip(3 * value - 2, 0, 1)], -1)


def colours(value: np.ndarray, signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """A map -> (colour (..., 3) in [0, 1], opacity (...) in [0, OPACITY]), as the overlay draws it."""
    if signed:
        scaled = value / (float(np.abs(value).max()) or 1.0)  # [-1, 1]
        return np.where(scaled[..., None] >= 0, POSITIVE, NEGATIVE), OPACITY * np.abs(scaled)
    low, high = float(value.min()), float(value.max())
    scaled = (value - low) / (high - low) if high > low else np.zeros_like(value)
    return ramp(scaled), OPACITY * scaled


def overlay(crop: np.ndarray, grid: np.ndarray, signed: bool = False) -> np.ndarray:
    """(S, S, 3) uint8 crop and a (g, g) map -> (S, S, 3) uint8 overlay."""
    colour, alpha = colours(upsampled(grid, crop.shape[0]), signed)
    blended = crop.astype(np.float32) * (1 - alpha[..., None]) + 255 * colour * alpha[..., None]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def solid(value: np.ndarray, signed: bool) -> np.ndarray:
    """A map -> opaque (..., 3) colours in [0, 1], scaled on its own like the overlay: a rollout's ramp from min
    to max; a signed map red over white over blue, stronger the larger |value|. The colour bar and the head maps."""
    if not signed:
        return colours(value, signed)[0]
    scaled = value / (float(np.abs(value).max()) or 1.0)
    strength = np.abs(scaled)[..., None]
    return (1 - strength) + strength * np.where(scaled[..., None] >= 0, POSITIVE, NEGATIVE)


def colour_bar(height: int, signed: bool) -> np.ndarray:
    """(height, BAR_WIDTH, 3) uint8, top = largest."""
    column = solid(np.linspace(1.0, -1.0 if signed else 0.0, height), signed)
    return np.repeat(np.rint(255 * column)[:, None, :], BAR_WIDTH, axis=1).astype(np.uint8)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in font (no font files needed), scalable when Pillow has FreeType."""
    return ImageFont.load_default(size=size)


def prediction_title(class_name: str, probability: float, calibrated: bool, source: str = "") -> str:
    """'SOURCE: CLASS (P%, calibrated)': the figure's title line."""
    label = f"{class_name} ({100 * probability:.1f}%{', calibrated' if calibrated else ''})"
    return f"{source}: {label}" if source else label


def tick(value: float) -> str:
    return f"{value:+.2g}" if value else "0"


def panel_scale(size: int) -> int:
    """How many times a crop of `size` pixels is enlarged in the figure."""
    return max(1, math.ceil(MIN_PANEL / size))


def crop_box(size: int, title: str = "") -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the crop's panel in the figure of an (size, size) crop titled `title`
    (size x panel_scale(size) pixels a side); the overlay's panel is the same box moved right by its width + GAP."""
    top = MARGIN + len(title.splitlines() or [""]) * (TITLE_SIZE + 6) + CAPTION_SIZE + 8
    side = size * panel_scale(size)
    return MARGIN, top, MARGIN + side, top + side


def figure(
    crop: np.ndarray,
    grid: np.ndarray,
    signed: bool = False,
    title: str = "",
    heads: np.ndarray | None = None,
    map_name: str = "",
) -> Image.Image:
    """The figure: `title` (lines split at newlines), the (S, S, 3) uint8 crop, the crop with the (g, g) map
    overlaid, the colour bar of the map's values, and, given (H, g, g) `heads`, each head's map in two rows."""
    scale = panel_scale(crop.shape[0])
    crop = np.ascontiguousarray(crop, np.uint8).repeat(scale, 0).repeat(scale, 1)
    size = crop.shape[0]
    title_font, caption_font = font(TITLE_SIZE), font(CAPTION_SIZE)
    lines = title.splitlines() or [""]
    left, top, _, _ = crop_box(size // scale, title)
    n_cols = math.ceil(len(heads) / 2) if heads is not None and len(heads) else 0
    tile = (size - GAP) // 2
    bar_left = left + 2 * (size + GAP)
    width = bar_left + BAR_WIDTH + BAR_LABELS + n_cols * (tile + GAP) + MARGIN - (GAP if n_cols else 0)
    canvas = Image.new("RGB", (width, top + size + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * (TITLE_SIZE + 6)), line, fill=INK, font=title_font)
    caption_y = top - CAPTION_SIZE - 4
    method = map_name or ("last layer, head mean (signed)" if signed else "attention rollout (min to max)")
    bar_caption = "weight" if signed else "share"  # a rollout row is a distribution over the patches
    captions = [(MARGIN, "crop the model sees"), (MARGIN + size + GAP, method), (bar_left, bar_caption)]
    for x, caption in captions:
        draw.text((x, caption_y), caption, fill=INK, font=caption_font)
    canvas.paste(Image.fromarray(crop), (left, top))
    canvas.paste(Image.fromarray(overlay(crop, grid, signed)), (left + size + GAP, top))

    canvas.paste(Image.fromarray(colour_bar(size, signed)), (bar_left, top))
    draw.rectangle((bar_left, top, bar_left + BAR_WIDTH - 1, top + size - 1), outline=INK)
    values = np.asarray(grid, np.float64)
    if signed:
        limit = float(np.abs(values).max())
        ticks = [(0.0, tick(limit)), (0.5, "0"), (1.0, tick(-limit))]
    else:
        ticks = [(0.0, f"{values.max():.2g}"), (1.0, f"{values.min():.2g}")]
    for fraction, text in ticks:
        y = top + fraction * (size - 1)
        anchor = "lt" if fraction == 0 else "ld" if fraction == 1 else "lm"  # end labels stay beside the bar
        draw.line((bar_left + BAR_WIDTH, y, bar_left + BAR_WIDTH + 4, y), fill=INK)
        draw.text((bar_left + BAR_WIDTH + 6, y), text, fill=INK, font=caption_font, anchor=anchor)

    heads_left = bar_left + BAR_WIDTH + BAR_LABELS
    for i, head in enumerate(heads if heads is not None else []):
        x, y = heads_left + (i % n_cols) * (tile + GAP), top + (i // n_cols) * (tile + GAP)
        canvas.paste(Image.fromarray(np.rint(255 * solid(upsampled(head, tile), signed)).astype(np.uint8)), (x, y))
        draw.rectangle((x, y, x + tile - 1, y + tile - 1), outline=INK)
        draw.text((x + 4, y + 3), f"head {i}", fill=(255, 255, 255), font=caption_font, stroke_width=2, stroke_fill=INK)
    if n_cols:
        draw.text((heads_left, caption_y), "last layer, each head (own scale)", fill=INK, font=caption_font)
    return canvas


def figure_png(
    crop: np.ndarray, grid: np.ndarray, signed: bool = False, title: str = "", heads: np.ndarray | None = None
) -> bytes:
    """`figure` as PNG bytes."""
    buffer = io.BytesIO()
    figure(crop, grid, signed, title, heads).save(buffer, format="PNG")
    return buffer.getvalue()
