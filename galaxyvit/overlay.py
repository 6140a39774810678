"""The PNG of POST /explain?format=png: the crop the model sees with its attention map overlaid (Pillow and
numpy only).

A rollout (ViT, ViT-Base) is a distribution over the patches: drawn in a black-red-yellow ramp, more
opaque where the map is higher. The Linformer's map is signed (docs/explain.md): red where positive,
blue where negative, more opaque the larger |weight|.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

OPACITY = 0.6


def upsampled(grid: np.ndarray, size: int) -> np.ndarray:
    """A (g, g) map resized to (size, size) float32, bilinear (each patch's value at its centre)."""
    image = Image.fromarray(np.asarray(grid, np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), np.float32)


def overlay(crop: np.ndarray, grid: np.ndarray, signed: bool = False) -> np.ndarray:
    """(S, S, 3) uint8 crop and a (g, g) map -> (S, S, 3) uint8 overlay."""
    value = upsampled(grid, crop.shape[0])
    if signed:
        scale = float(np.abs(value).max()) or 1.0
        value = value / scale  # [-1, 1]
        colour = np.where(value[..., None] >= 0, [1.0, 0.1, 0.1], [0.1, 0.3, 1.0])
        alpha = OPACITY * np.abs(value)
    else:
        low, high = float(value.min()), float(value.max())
        value = (value - low) / (high - low) if high > low else np.zeros_like(value)
        colour = np.stack([np.clip(3 * value, 0, 1), np.clip(3 * value - 1, 0, 1), np.clip(3 * value - 2, 0, 1)], -1)
        alpha = OPACITY * value
    blended = crop.astype(np.float32) * (1 - alpha[..., None]) + 255 * colour * alpha[..., None]
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def overlay_png(crop: np.ndarray, grid: np.ndarray, signed: bool = False) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(overlay(crop, grid, signed)).save(buffer, format="PNG")
    return buffer.getvalue()
