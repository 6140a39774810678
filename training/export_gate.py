"""The export's parity gate: the inputs it runs, ONNX Runtime against PyTorch, and the record it leaves.

Inputs: random normal images, the real GZ2 sample JPEGs and (optionally) validation images. The
validation images are a sample stratified by class with a fixed seed (every class in its share of
the split), so a CSV sorted by class does not hand the gate one class only.

fp32 must agree with PyTorch to max |logit difference| <= FP32_TOLERANCE with identical top-1 on
every input. int8 and fp16 record their drift and validation-accuracy change; one that loses more
than MAX_ACC_DROP of validation accuracy is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import Preprocessing, eval_array
from training.data import DataError, present_images, read_split_csv, split_file

INPUT_NAME, OUTPUT_NAME = "images", "logits"
FP32_TOLERANCE = 1e-4  # max |logit difference| between ONNX Runtime and PyTorch
MAX_ACC_DROP = 0.005  # quantised variants: largest allowed validation-accuracy drop (0.5 point)
N_RANDOM = 8  # random parity images
DEFAULT_MAX_VALID = 512  # validation images used for the gate (a class-stratified sample of the split)
VALID_SEED = 0  # the seed of that sample: every export of a split checks the same images


class ExportError(RuntimeError):
    """The export failed a check (parity, accuracy, bad input); nothing was written or registered."""


@dataclass
class GateInputs:
    """Everything the parity gate runs: (N, 3, H, W) float32 images, which rows are which, valid labels."""

    images: np.ndarray
    kinds: list[str]  # "random" | "real" | "valid" per row
    labels: np.ndarray | None  # labels of the "valid" rows, in order

    @property
    def valid_rows(self) -> np.ndarray:
        return np.array([k == "valid" for k in self.kinds])


@dataclass
class ParityRecord:
    """What the gate measured for one variant: the `parity` entry of its model card."""

    provider: str
    n_inputs: int
    n_random: int
    n_real: int
    n_valid: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float
    tolerance: float | None  # fp32's; None for quantised variants (judged on accuracy)
    torch_valid_acc: float | None
    onnx_valid_acc: float | None
    valid_acc_change: float | None
    export_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- inputs


def stratified_sample(labels: Sequence[int], limit: int, seed: int = VALID_SEED) -> list[int]:
    """Indices of at most `limit` rows, every class in its share of the rows (largest remainders get the
    spare places), drawn at random with a fixed seed; returned in row order."""
    labels_arr = np.asarray(labels, dtype=np.int64)
    if len(labels_arr) <= limit:
        return list(range(len(labels_arr)))
    classes, counts = np.unique(labels_arr, return_counts=True)
    exact = counts * limit / len(labels_arr)
    quota = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - quota), kind="stable")[: limit - int(quota.sum())]:
        quota[i] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for c, q in zip(classes, quota):
        chosen += rng.choice(np.flatnonzero(labels_arr == c), size=int(q), replace=False).tolist()
    return sorted(chosen)


def read_valid_split(
    data_dir: Path, limit: int, num_classes: int, seed: int = VALID_SEED
) -> tuple[list[Path], list[int]]:
    """A class-stratified sample of `limit` images of DIR/gz2_valid.csv (or valid.csv) found in DIR/images."""
    data_dir = Path(data_dir)
    try:
        csv_path = split_file(data_dir, "valid")
        ids, labels = read_split_csv(csv_path, num_classes)
        present = present_images(data_dir / "images")
    except DataError as exc:
        raise ExportError(f"--valid-data {data_dir}: {exc}") from None
    rows = [i for i, galaxy_id in enumerate(ids) if f"{galaxy_id}.jpg" in present]
    if not rows:
        raise ExportError(f"--valid-data {data_dir}: none of the {len(ids)} images of {csv_path.name} is in images/")
    picked = [rows[i] for i in stratified_sample([labels[r] for r in rows], limit, seed)]
    return [data_dir / "images" / f"{ids[r]}.jpg" for r in picked], [labels[r] for r in picked]


def load_images(paths: list[Path], prep: Preprocessing, desc: str) -> np.ndarray:
    arrays = []
    for path in tqdm(paths, desc=desc, unit="img", leave=False, disable=len(paths) < 64):
        with Image.open(path) as image:
            arrays.append(eval_array(image, prep))
    return np.stack(arrays) if arrays else np.zeros((0, 3, prep.size, prep.size), np.float32)


def gate_inputs(
    prep: Preprocessing,
    num_classes: int,
    valid_dir: str | Path | None = None,
    samples_dir: str | Path | None = REAL_SAMPLE_IMAGES,
    max_valid: int = DEFAULT_MAX_VALID,
    n_random: int = N_RANDOM,
    seed: int = 0,
) -> GateInputs:
    """Random normal images, the real GZ2 sample JPEGs and (optionally) validation images, all preprocessed."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((n_random, 3, prep.size, prep.size), dtype=np.float32)]
    kinds = ["random"] * n_random
    if samples_dir is not None and Path(samples_dir).is_dir():
        real = load_images(sorted(Path(samples_dir).glob("*.jpg")), prep, "real samples")
        parts.append(real)
        kinds += ["real"] * len(real)
    labels = None
    if valid_dir is not None:
        paths, valid_labels = read_valid_split(Path(valid_dir), max_valid, num_classes)
        parts.append(load_images(paths, prep, "validation images"))
        kinds += ["valid"] * len(paths)
        labels = np.asarray(valid_labels)
    return GateInputs(np.concatenate(parts), kinds, labels)


# --------------------------------------------------------------------------- running


def torch_logits(model: nn.Module, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    outs = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            outs.append(model(torch.from_numpy(images[start : start + batch_size])).float().numpy())
    return np.concatenate(outs)


def ort_session(path: str | Path, threads: int | None = None, spinning: bool = True) -> ort.InferenceSession:
    """A CPU ONNX Runtime session (the provider actually used is session.get_providers()[0]).

    spinning=False stops the thread pool from busy-waiting between runs (fairer when sharing cores).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or min(2, os.cpu_count() or 1)
    options.log_severity_level = 3
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def ort_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 32) -> np.ndarray:
    outs = [
        session.run([OUTPUT_NAME], {INPUT_NAME: images[start : start + batch_size]})[0]
        for start in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def variant_gate(
    variant: str, path: Path, inputs: GateInputs, reference: np.ndarray, reference_acc: float | None
) -> ParityRecord:
    """Run a variant on the gate inputs and compare with the PyTorch logits; raise ExportError if it fails."""
    session = ort_session(path)
    logits = ort_logits(session, inputs.images)
    diff = np.abs(logits - reference)
    onnx_acc = accuracy(logits[inputs.valid_rows], inputs.labels) if inputs.labels is not None else None
    parity = ParityRecord(
        provider=session.get_providers()[0],
        n_inputs=len(inputs.images),
        n_random=inputs.kinds.count("random"),
        n_real=inputs.kinds.count("real"),
        n_valid=inputs.kinds.count("valid"),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        top1_agreement=float((logits.argmax(1) == reference.argmax(1)).mean()),
        tolerance=FP32_TOLERANCE if variant == "fp32" else None,
        torch_valid_acc=reference_acc,
        onnx_valid_acc=onnx_acc,
        valid_acc_change=None if onnx_acc is None or reference_acc is None else onnx_acc - reference_acc,
    )
    if variant == "fp32":
        if parity.max_abs_logit_diff > FP32_TOLERANCE or parity.top1_agreement < 1.0:
            raise ExportError(
                f"fp32 parity gate failed: max |Δlogit| = {parity.max_abs_logit_diff:.3g} "
                f"(limit {FP32_TOLERANCE:g}), top-1 agreement {parity.top1_agreement:.2%} (must be 100%)"
            )
    elif parity.valid_acc_change is not None and parity.valid_acc_change < -MAX_ACC_DROP:
        raise ExportError(
            f"{variant} refused: validation accuracy {parity.onnx_valid_acc:.2%} vs PyTorch {reference_acc:.2%} "
            f"(drop {-parity.valid_acc_change * 100:.2f} points > {MAX_ACC_DROP * 100:.1f})"
        )
    return parity
