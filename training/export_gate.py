"""The export's parity gate: the inputs it runs, ONNX Runtime against PyTorch, and the record it leaves.

Inputs: random normal images, the real GZ2 sample JPEGs and (optionally) validation images. The
validation images are a sample stratified by class with a fixed seed (every class in its share of
the split), so a CSV sorted by class does not hand the gate one class only.

fp32 must agree with PyTorch to max |logit difference| <= FP32_TOLERANCE with identical top-1 on
every input, and every other output (the embedding; the explain variant's maps) to max |difference|
<= FP32_TOLERANCE times that output's largest |PyTorch value| (attention maps are ~1e-3, embeddings
~1-10: one absolute limit would be too loose for one and too strict for the other). int8 and fp16
record their drift and validation-accuracy change; one that loses more than MAX_ACC_DROP of
validation accuracy is refused. The explain variant is gated like fp32 (`explain_gate`).
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

INPUT_NAME, OUTPUT_NAME, EMBEDDING_NAME = "images", "logits", "embedding"
CLASSIFIER_OUTPUTS = (OUTPUT_NAME, EMBEDDING_NAME)  # every classifier variant, in this order
EXPLAIN_OUTPUTS = (OUTPUT_NAME, EMBEDDING_NAME, "heads", "rollout")  # the explain variant
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
    max_abs_embedding_diff: float | None = None
    embedding_tolerance: float | None = None  # fp32's (scaled to the embedding's size); None for int8/fp16

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
    data_dir: Path, limit: int, num_classes: int, seed: int = VALID_SEED, split: str = "valid"
) -> tuple[list[Path], list[int]]:
    """A class-stratified sample of `limit` images of DIR/gz2_<split>.csv (or <split>.csv) found in DIR/images."""
    data_dir = Path(data_dir)
    try:
        csv_path = split_file(data_dir, split)
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


def torch_outputs(module: nn.Module, images: np.ndarray, batch_size: int = 32) -> list[np.ndarray]:
    """Every output of `module` (logits, or a tuple of outputs) on `images`, in batches, as float32 arrays."""
    batches: list[tuple[torch.Tensor, ...]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            out = module(torch.from_numpy(images[start : start + batch_size]))
            batches.append(out if isinstance(out, tuple) else (out,))
    return [torch.cat(parts).float().numpy() for parts in zip(*batches)]


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


def ort_outputs(
    session: ort.InferenceSession, images: np.ndarray, names: Sequence[str], batch_size: int = 32
) -> list[np.ndarray]:
    """The named outputs of an ONNX model on `images`, in batches, as float32 arrays."""
    batches = [
        session.run(list(names), {INPUT_NAME: images[start : start + batch_size]})
        for start in range(0, len(images), batch_size)
    ]
    return [np.concatenate(parts).astype(np.float32) for parts in zip(*batches)]


def scaled_tolerance(reference: np.ndarray) -> float:
    """The fp32 limit for an output other than the logits: FP32_TOLERANCE times its largest |value|."""
    return FP32_TOLERANCE * max(float(np.abs(reference).max(initial=0.0)), float(np.finfo(np.float32).tiny))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float((logits.argmax(1) == labels).mean())


def variant_gate(
    variant: str, path: Path, inputs: GateInputs, reference: list[np.ndarray], reference_acc: float | None
) -> tuple[ParityRecord, list[np.ndarray]]:
    """Run a variant on the gate inputs and compare with the PyTorch (logits, embedding); raise ExportError
    if it fails. Returns the record and the variant's own outputs (CLASSIFIER_OUTPUTS) on the inputs."""
    session = ort_session(path)
    outputs = ort_outputs(session, inputs.images, CLASSIFIER_OUTPUTS)
    logits, embeddings = outputs
    diff = np.abs(logits - reference[0])
    onnx_acc = accuracy(logits[inputs.valid_rows], inputs.labels) if inputs.labels is not None else None
    parity = ParityRecord(
        provider=session.get_providers()[0],
        n_inputs=len(inputs.images),
        n_random=inputs.kinds.count("random"),
        n_real=inputs.kinds.count("real"),
        n_valid=inputs.kinds.count("valid"),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        top1_agreement=float((logits.argmax(1) == reference[0].argmax(1)).mean()),
        tolerance=FP32_TOLERANCE if variant == "fp32" else None,
        torch_valid_acc=reference_acc,
        onnx_valid_acc=onnx_acc,
        valid_acc_change=None if onnx_acc is None or reference_acc is None else onnx_acc - reference_acc,
        max_abs_embedding_diff=float(np.abs(embeddings - reference[1]).max()),
        embedding_tolerance=scaled_tolerance(reference[1]) if variant == "fp32" else None,
    )
    if variant == "fp32":
        if parity.max_abs_logit_diff > FP32_TOLERANCE or parity.top1_agreement < 1.0:
            raise ExportError(
                f"fp32 parity gate failed: max |Δlogit| = {parity.max_abs_logit_diff:.3g} "
                f"(limit {FP32_TOLERANCE:g}), top-1 agreement {parity.top1_agreement:.2%} (must be 100%)"
            )
        if parity.max_abs_embedding_diff > (parity.embedding_tolerance or 0.0):
            raise ExportError(
                f"fp32 parity gate failed: max |Δembedding| = {parity.max_abs_embedding_diff:.3g} "
                f"(limit {parity.embedding_tolerance:.3g})"
            )
    elif parity.valid_acc_change is not None and parity.valid_acc_change < -MAX_ACC_DROP:
        raise ExportError(
            f"{variant} refused: validation accuracy {parity.onnx_valid_acc:.2%} vs PyTorch {reference_acc:.2%} "
            f"(drop {-parity.valid_acc_change * 100:.2f} points > {MAX_ACC_DROP * 100:.1f})"
        )
    return parity, outputs


def explain_gate(path: Path, inputs: GateInputs, reference: list[np.ndarray]) -> dict:
    """The explain variant against PyTorch (EXPLAIN_OUTPUTS), held to the fp32 limits; raise ExportError if it
    fails. Returns its parity record: per output the largest difference and the limit it met."""
    session = ort_session(path)
    outputs = ort_outputs(session, inputs.images, EXPLAIN_OUTPUTS)
    record: dict = {"provider": session.get_providers()[0], "n_inputs": len(inputs.images)}
    record["top1_agreement"] = float((outputs[0].argmax(1) == reference[0].argmax(1)).mean())
    failures = [] if record["top1_agreement"] == 1.0 else [f"top-1 agreement {record['top1_agreement']:.2%}"]
    for name, got, want in zip(EXPLAIN_OUTPUTS, outputs, reference, strict=True):
        if got.shape != want.shape:
            raise ExportError(f"explain parity gate failed: {name} has shape {got.shape}, PyTorch {want.shape}")
        limit = FP32_TOLERANCE if name == OUTPUT_NAME else scaled_tolerance(want)
        worst = record[f"max_abs_{name}_diff"] = float(np.abs(got - want).max())
        record[f"{name}_tolerance"] = limit
        if worst > limit:
            failures.append(f"{name}: max |Δ| {worst:.3g} (limit {limit:.3g})")
    if failures:
        raise ExportError(f"explain parity gate failed: {'; '.join(failures)}")
    return record
