"""Read and decode image files into evaluation crops, in the decode processes (local engine) or Ray tasks.

Decoding is serving's: JPEGs through libjpeg-turbo straight into an array (`inference.jpeg.decode_jpeg`,
the same pixels as Pillow), everything else and every JPEG it declines through `decode_image` (JPEG,
PNG, TIFF, FITS, ...: one implementation for the service and the catalogue), followed by the
evaluation crop of `galaxyvit.preprocess` (done on the array for JPEGs, the same pixels).
`decode_files` returns uint8 crops (the Ray engine ships those, a quarter of the float32 bytes);
`decode_into` writes the normalised float32 batch straight into the local engine's shared memory.
A file that cannot be read or is refused becomes an (error_kind, message) pair, never an exception.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import numpy as np

from galaxyvit.preprocess import Preprocessing, eval_crop, normalize
from inference.decode import decode_image
from inference.jpeg import decode_jpeg


@dataclass
class DecodedBatch:
    """Crops of the readable files of one batch, in order, and the error of every other one."""

    crops: np.ndarray  # (k, size, size, 3) uint8, k = ok.sum()
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str] | None]  # per file: (error_kind, message) or None
    pid: int  # the process that decoded it, and its CPU seconds so far (where the time goes)
    cpu_s: float


@dataclass
class DecodedInto:
    """Which files of a batch `decode_into` wrote (in order, rows 0 .. ok.sum() - 1), the error of every other."""

    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str] | None]
    pid: int
    cpu_s: float


def error_of(exc: BaseException, path: str) -> tuple[str, str]:
    """(error_kind, one-line message) for a failure to read or decode `path`.

    Decoding errors carry a machine-readable `kind` (serving's error type); they are recognised by
    that attribute, not by their class."""
    kind = getattr(exc, "kind", None)
    if isinstance(kind, str) and isinstance(getattr(exc, "status", None), int):
        return kind, str(exc)
    if isinstance(exc, FileNotFoundError):
        return "missing_file", f"no such file: {path}" if path else str(exc)
    if isinstance(exc, IsADirectoryError):
        return "unreadable_file", f"is a folder, not a file: {path}"
    if isinstance(exc, OSError):
        return "unreadable_file", f"cannot read {path}: {exc.strerror or exc}"
    return "decode_failed", f"{type(exc).__name__}: {exc}".splitlines()[0]


def read_crop(path: str | None, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """One file -> its (size, size, 3) uint8 evaluation crop; raises on any problem."""
    if not path:
        raise FileNotFoundError("the catalogue row gives no path")
    with open(path, "rb") as f:
        data = f.read(max_file_bytes(max_pixels) + 1)
    if not data:
        raise EmptyFile(f"empty file: {path}")
    if len(data) > max_file_bytes(max_pixels):
        raise TooLarge(f"file larger than {max_file_bytes(max_pixels)} bytes: {path}")
    if prep.size == prep.crop and (rgb := decode_jpeg(data, max_pixels)) is not None:
        return center_crop_array(rgb, prep.crop)
    return eval_crop(decode_image(data, max_pixels), prep)


def center_crop_array(rgb: np.ndarray, size: int) -> np.ndarray:
    """`galaxyvit.preprocess.center_crop` on an (H, W, 3) array: the same offsets, zero padding when too small."""
    height, width = rgb.shape[:2]
    left = int(round((width - size) / 2.0)) if width > size else 0
    top = int(round((height - size) / 2.0)) if height > size else 0
    crop = rgb[top : top + min(height, size), left : left + min(width, size)]
    if crop.shape[:2] == (size, size):
        return np.ascontiguousarray(crop)
    padded = np.zeros((size, size, 3), np.uint8)
    pad_top, pad_left = (size - crop.shape[0]) // 2, (size - crop.shape[1]) // 2
    padded[pad_top : pad_top + crop.shape[0], pad_left : pad_left + crop.shape[1]] = crop
    return padded


def max_file_bytes(max_pixels: int) -> int:
    """Largest file read: 8 bytes per pixel per plane of 3 planes (a float64 FITS cube), plus headers."""
    return 24 * max_pixels + (1 << 20)


class EmptyFile(ValueError):
    kind, status = "empty_file", 400


class TooLarge(ValueError):
    kind, status = "too_large", 413


def decode_files(paths: list[str | None], prep: Preprocessing, max_pixels: int) -> DecodedBatch:
    """Decode a batch of files (the unit of work of one decode process or Ray task)."""
    crops: list[np.ndarray] = []
    ok = np.zeros(len(paths), bool)
    errors: list[tuple[str, str] | None] = [None] * len(paths)
    for i, path in enumerate(paths):
        try:
            crops.append(read_crop(path, prep, max_pixels))
            ok[i] = True
        except Exception as exc:  # one bad file gives one error row, never a failed job
            errors[i] = error_of(exc, path or "")
    size = prep.size
    stacked = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    return DecodedBatch(stacked, ok, errors, os.getpid(), time.process_time())


def decode_into(paths: list[str | None], prep: Preprocessing, max_pixels: int, out: np.ndarray) -> DecodedInto:
    """Decode a batch straight into `out` ((n, 3, size, size) float32): normalised crops of the readable files
    in rows 0 .. k-1, ready for ONNX Runtime (the local engine's unit of work)."""
    ok = np.zeros(len(paths), bool)
    errors: list[tuple[str, str] | None] = [None] * len(paths)
    k = 0
    for i, path in enumerate(paths):
        try:
            crop = read_crop(path, prep, max_pixels)
        except Exception as exc:  # one bad file gives one error row, never a failed job
            errors[i] = error_of(exc, path or "")
            continue
        normalize(crop, prep, out=out[k])  # one image at a time: cache-friendly, faster than the whole batch
        ok[i] = True
        k += 1
    return DecodedInto(ok, errors, os.getpid(), time.process_time())


# in a decode process of the local engine: its shared batches by name, and their mappings (open for life)
_blocks: dict[str, np.ndarray] = {}
_mappings: list[SharedMemory] = []


def open_blocks(names: list[str], shape: tuple[int, ...], ready: Any) -> None:
    """Decode-process initializer: map every shared batch now and say so on `ready`, so that the engine can
    unlink their names at once (a job killed with SIGKILL then leaves nothing behind in shared memory)."""
    for name in names:
        memory = SharedMemory(name)
        _mappings.append(memory)
        _blocks[name] = np.ndarray(shape, np.float32, buffer=memory.buf)
    ready.put(os.getpid())


def decode_into_shared(name: str, paths: list[str | None], prep: Preprocessing, max_pixels: int) -> DecodedInto:
    """`decode_into` the shared float32 batch `name` (mapped by `open_blocks`)."""
    return decode_into(paths, prep, max_pixels, _blocks[name])
