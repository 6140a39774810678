"""Read and decode image files into evaluation crops, in the decode processes (local engine) or Ray tasks.

Decoding is serving's own `decode_image` (JPEG, PNG, TIFF, FITS, ...: one implementation for the
service and the catalogue), followed by the evaluation crop `galaxyvit.preprocess.eval_crop`. The
crops travel to inference as uint8 (a quarter of the float32 bytes); inference normalises them.
A file that cannot be read or is refused becomes an (error_kind, message) pair, never an exception.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np

from galaxyvit.preprocess import Preprocessing, eval_crop
from serving.decode import decode_image


@dataclass
class DecodedBatch:
    """Crops of the readable files of one batch, in order, and the error of every other one."""

    crops: np.ndarray  # (k, size, size, 3) uint8, k = ok.sum()
    ok: np.ndarray  # (n,) bool
    errors: list[tuple[str, str] | None]  # per file: (error_kind, message) or None
    pid: int  # the process that decoded it, and its CPU seconds so far (where the time goes)
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
    return eval_crop(decode_image(data, max_pixels), prep)


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
