"""Export a checkpoint (or the best run of a results directory) to verified ONNX with a model card.

  galaxyvit export runs/vit-110421/best.pt --variants fp32,int8 --valid-data data/synth
  galaxyvit export --best runs/ --name best

Every variant is written to models/<name>/<variant>.onnx with <variant>.card.json beside it,
then the folder is imported into the BentoML model store as `galaxyvit-<name>` (BENTOML_HOME).

Parity gate: ONNX Runtime and PyTorch run the same inputs (random images, the real GZ2 samples in
data/gz2_real_samples/images and, with --valid-data, the validation split). fp32 must agree
to max |logit difference| <= 1e-4 with identical top-1 on every input, or the export fails and nothing
is written or registered. int8 (dynamic quantisation, for CPU) and fp16 (for GPU) record their logit
drift and validation-accuracy change; one that loses more than 0.5 point of validation accuracy is
refused (not written; the command exits 1). Without --valid-data only their drift is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

from galaxyvit.card import VARIANTS, ModelCard, load_card, load_verified, sha256_file
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import Preprocessing, eval_array
from galaxyvit.store import default_home, register_model
from training.checkpoint import CheckpointError, model_from_checkpoint
from training.onnx_graph import export_ready

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "images", "logits"
FP32_TOLERANCE = 1e-4  # max |logit difference| between ONNX Runtime and PyTorch
MAX_ACC_DROP = 0.005  # quantised variants: largest allowed validation-accuracy drop (0.5 point)
N_RANDOM = 8  # random parity images
DEFAULT_MAX_VALID = 512  # validation images used for the gate (the first N of the split)
ROOT = Path(__file__).resolve().parents[1]
REAL_SAMPLES = REAL_SAMPLE_IMAGES
NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


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


# --------------------------------------------------------------------------- inputs


def read_valid_split(data_dir: Path, limit: int) -> tuple[list[Path], list[int]]:
    """The first `limit` images of DIR/gz2_valid.csv (or valid.csv) that exist in DIR/images."""
    from training.data import read_split_csv

    data_dir = Path(data_dir)
    csv_path = next((data_dir / n for n in ("gz2_valid.csv", "valid.csv") if (data_dir / n).is_file()), None)
    if csv_path is None:
        raise ExportError(f"--valid-data {data_dir}: no gz2_valid.csv (or valid.csv) there")
    ids, labels = read_split_csv(csv_path, len(CLASS_NAMES))
    paths, kept = [], []
    for galaxy_id, label in zip(ids, labels):
        path = data_dir / "images" / f"{galaxy_id}.jpg"
        if path.is_file():
            paths.append(path)
            kept.append(label)
        if len(paths) >= limit:
            break
    if not paths:
        raise ExportError(f"--valid-data {data_dir}: none of the {len(ids)} images of {csv_path.name} is in images/")
    return paths, kept


def load_images(paths: list[Path], prep: Preprocessing, desc: str) -> np.ndarray:
    arrays = []
    for path in tqdm(paths, desc=desc, unit="img", leave=False, disable=len(paths) < 64):
        with Image.open(path) as image:
            arrays.append(eval_array(image, prep))
    return np.stack(arrays) if arrays else np.zeros((0, 3, prep.size, prep.size), np.float32)


def gate_inputs(
    prep: Preprocessing,
    valid_dir: str | Path | None = None,
    samples_dir: str | Path | None = REAL_SAMPLES,
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
        paths, valid_labels = read_valid_split(Path(valid_dir), max_valid)
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


# --------------------------------------------------------------------------- export


def export_onnx(model: nn.Module, path: Path, image_size: int = 224) -> None:
    """One self-contained ONNX file, opset OPSET, dynamic batch, input "images", output "logits".

    The TorchScript exporter is used on purpose: on this stack it exports in well under a second
    (the dynamo exporter takes 5-10 s), and its graph lets ONNX Runtime fuse Bias+GELU, which the
    dynamo graph (Erf/Div/Mul/Add) did not, so it also runs faster. Both passed parity.
    """
    graph_model = export_ready(model)
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings and the exporter's deprecation notice
        torch.onnx.export(
            graph_model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(path), full_check=True)
    leftovers = sorted(p.name for p in path.parent.iterdir() if p.suffix not in (".onnx", ".json"))
    if leftovers:
        raise ExportError(f"export wrote external data files {leftovers}; expected one self-contained .onnx")


def quantize_int8(fp32_path: Path, out_path: Path) -> None:
    """Dynamic int8 quantisation for CPU: MatMul weights int8, activations quantised at run time.

    Only MatMul is quantised: the single patch-embedding Conv stays fp32, since ORT's ConvInteger
    kernel is slower than its fp32 Conv on CPU.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quiet its "consider pre-processing" advice, printed on every call
    try:
        quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    finally:
        root.setLevel(level)


def convert_fp16(fp32_path: Path, out_path: Path) -> None:
    """Weights and compute in float16 (for GPU); inputs/outputs stay float32 so clients need not change."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    onnx.save(model, str(out_path))


def variant_gate(
    variant: str,
    path: Path,
    inputs: GateInputs,
    reference: np.ndarray,
    reference_acc: float | None,
) -> dict:
    """Run a variant on the gate inputs and compare with the PyTorch logits; raise ExportError if it fails."""
    session = ort_session(path)
    logits = ort_logits(session, inputs.images)
    diff = np.abs(logits - reference)
    parity = {
        "provider": session.get_providers()[0],
        "n_inputs": len(inputs.images),
        "n_random": inputs.kinds.count("random"),
        "n_real": inputs.kinds.count("real"),
        "n_valid": inputs.kinds.count("valid"),
        "max_abs_logit_diff": float(diff.max()),
        "mean_abs_logit_diff": float(diff.mean()),
        "top1_agreement": float((logits.argmax(1) == reference.argmax(1)).mean()),
        "tolerance": FP32_TOLERANCE if variant == "fp32" else None,
        "torch_valid_acc": reference_acc,
        "onnx_valid_acc": None,
        "valid_acc_change": None,
    }
    if inputs.labels is not None:
        acc = accuracy(logits[inputs.valid_rows], inputs.labels)
        parity["onnx_valid_acc"] = acc
        parity["valid_acc_change"] = acc - reference_acc
    if variant == "fp32":
        if parity["max_abs_logit_diff"] > FP32_TOLERANCE or parity["top1_agreement"] < 1.0:
            raise ExportError(
                f"fp32 parity gate failed: max |Δlogit| = {parity['max_abs_logit_diff']:.3g} "
                f"(limit {FP32_TOLERANCE:g}), top-1 agreement {parity['top1_agreement']:.2%} (must be 100%)"
            )
    elif parity["valid_acc_change"] is not None and parity["valid_acc_change"] < -MAX_ACC_DROP:
        raise ExportError(
            f"{variant} refused: validation accuracy {parity['onnx_valid_acc']:.2%} vs PyTorch {reference_acc:.2%} "
            f"(drop {-parity['valid_acc_change'] * 100:.2f} points > {MAX_ACC_DROP * 100:.1f})"
        )
    return parity


# --------------------------------------------------------------------------- cards and registration


def metrics_beside(checkpoint: Path) -> dict:
    """metrics.json next to the checkpoint (the trainer writes it), or {} when there is none."""
    path = Path(checkpoint).parent / "metrics.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} is not valid JSON: {exc}") from None
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- main API


def export_checkpoint(
    checkpoint: str | Path,
    out_root: str | Path = "models",
    name: str | None = None,
    variants: tuple[str, ...] | list[str] = ("fp32",),
    valid_dir: str | Path | None = None,
    register: bool = True,
    home: Path | None = None,
    samples_dir: str | Path | None = REAL_SAMPLES,
    max_valid: int = DEFAULT_MAX_VALID,
    quiet: bool = False,
) -> list[ModelCard]:
    """Export, gate, write models/<name>/ atomically and (optionally) register it; the cards, fp32 first.

    fp32 failing its parity gate raises ExportError, and then out_root/<name> and the model store are
    untouched. A quantised variant that loses more than 0.5 point of validation accuracy is refused
    alone (a warning; it is neither written nor registered, and is absent from the returned cards).
    """
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr))
    variants = list(dict.fromkeys(["fp32", *variants]))  # fp32 is always exported: the others derive from it
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ExportError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    checkpoint = Path(checkpoint)
    model, data = model_from_checkpoint(checkpoint)
    run_config = data["run"]
    run_id, family = run_config["id"], run_config["family"]
    name = (name or run_id).lower()
    if not NAME_RE.match(name):
        raise ExportError(f"model name {name!r} must be lowercase letters, digits, '.', '_' or '-'")
    prep = Preprocessing.from_dict(data["preprocessing"])
    class_names = list(data.get("class_names") or CLASS_NAMES)
    metrics = metrics_beside(checkpoint)
    if metrics.get("run_id") not in (None, run_id):
        say(
            f"warning: metrics.json beside {checkpoint} is for run {metrics['run_id']!r}, the checkpoint for {run_id!r}"
        )
    n_params = sum(p.numel() for p in model.parameters())  # all weights in the artifact

    inputs = gate_inputs(prep, valid_dir, samples_dir, max_valid)
    if not inputs.kinds.count("real"):
        say(f"warning: no real sample images in {samples_dir} (pass samples_dir)")
    say(
        f"parity inputs: {inputs.kinds.count('random')} random, {inputs.kinds.count('real')} real samples, "
        f"{inputs.kinds.count('valid')} validation images"
    )
    reference = torch_logits(model, inputs.images)
    reference_acc = accuracy(reference[inputs.valid_rows], inputs.labels) if inputs.labels is not None else None

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).replace(microsecond=0)
    cards: list[ModelCard] = []
    with tempfile.TemporaryDirectory(prefix=f".export-{name}-", dir=out_root) as tmp:
        tmp_dir = Path(tmp)
        fp32_path = tmp_dir / "fp32.onnx"
        for variant in tqdm(variants, desc=f"export {name}", unit="variant", disable=quiet):
            path = tmp_dir / f"{variant}.onnx"
            start = time.perf_counter()
            if variant == "fp32":
                export_onnx(model, path, prep.size)
            elif variant == "int8":
                quantize_int8(fp32_path, path)
            else:
                convert_fp16(fp32_path, path)
            try:
                parity = variant_gate(variant, path, inputs, reference, reference_acc)
            except ExportError as exc:
                if variant == "fp32":
                    raise  # nothing is written
                print(f"warning: {exc}; {variant}.onnx is not written", file=sys.stderr)
                path.unlink()
                continue
            if variant != "fp32" and parity["valid_acc_change"] is None:
                say(f"warning: {variant} accuracy change not measured (no --valid-data); only logit drift recorded")
            parity["export_seconds"] = round(time.perf_counter() - start, 2)
            say(
                f"{variant}: max |Δlogit| {parity['max_abs_logit_diff']:.2e}, top-1 agreement "
                f"{parity['top1_agreement']:.2%}"
                + (f", valid acc {parity['onnx_valid_acc']:.2%}" if parity["onnx_valid_acc"] is not None else "")
                + f" ({parity['provider']})"
            )
            sha = sha256_file(path)
            if variant == "fp32":  # first in `variants`; every variant carries the fp32 file's version
                version = f"{created:%Y%m%d-%H%M%S}-{sha[:8]}"
            card = ModelCard(
                name=name,
                version=version,
                variant=variant,
                run_id=run_id,
                family=family,
                run_config=run_config,
                class_names=class_names,
                preprocessing=prep.to_dict(),
                params=n_params,
                onnx_file=path.name,
                sha256=sha,
                opset=OPSET,
                input_name=INPUT_NAME,
                output_name=OUTPUT_NAME,
                valid_acc=metrics.get("valid_acc", data.get("valid_acc")),
                test_acc=metrics.get("test_acc"),
                per_class_acc=metrics.get("per_class_acc"),
                confusion_matrix=metrics.get("confusion_matrix"),
                parity=parity,
                created=created.isoformat(),
            )
            card.save(tmp_dir / f"{variant}.card.json")
            cards.append(load_card(tmp_dir / f"{variant}.card.json"))  # exactly what is on disk (JSON types)
        for card in cards:  # what we wrote is what loads
            load_verified(tmp_dir, card.variant)
        final = out_root / name
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".old-{name}-", dir=out_root))
            os.replace(final, old / name)
            os.replace(tmp_dir, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp_dir, final)
        final.chmod(0o755)  # mkdtemp made it private
        os.mkdir(tmp_dir)  # TemporaryDirectory cleans up the (now empty) path on exit
    say(f"wrote {final}/ ({', '.join(c.onnx_file for c in cards)})")
    if register:
        tag = register_model(final, home)
        say(f"registered {tag} in the BentoML model store ({(home or default_home()) / 'models'})")
    return cards


# --------------------------------------------------------------------------- --best and the command line


@dataclass
class Candidate:
    run_dir: Path
    run_id: str
    family: str
    valid_acc: float | None
    test_acc: float | None
    has_checkpoint: bool


def find_candidates(results_dir: str | Path) -> list[Candidate]:
    """Every RESULTS_DIR/*/metrics.json, with whether a best.pt sits beside it."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ExportError(f"results directory {results_dir} does not exist")
    found = []
    for metrics_path in sorted(results_dir.glob("*/metrics.json")):
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, json.JSONDecodeError):
            print(f"warning: skipping {metrics_path}: not valid JSON", file=sys.stderr)
            continue
        valid_acc = metrics.get("valid_acc") if isinstance(metrics, dict) else None
        found.append(
            Candidate(
                run_dir=metrics_path.parent,
                run_id=str(metrics.get("run_id", metrics_path.parent.name)),
                family=str(metrics.get("family", "?")),
                valid_acc=float(valid_acc) if isinstance(valid_acc, int | float) else None,
                test_acc=metrics.get("test_acc"),
                has_checkpoint=(metrics_path.parent / "best.pt").is_file(),
            )
        )
    return found


def choose_best(results_dir: str | Path, out=None) -> Path:
    """The best.pt of the run with the highest validation accuracy; prints the candidates and the reason."""
    out = out or sys.stdout
    candidates = find_candidates(results_dir)
    usable = [c for c in candidates if c.has_checkpoint and c.valid_acc is not None]
    if not usable:
        raise ExportError(
            f"no run in {results_dir} has both metrics.json with valid_acc and best.pt "
            f"({len(candidates)} metrics.json found)"
        )
    best = max(usable, key=lambda c: (c.valid_acc, c.run_dir.name))

    def pct(value) -> str:
        return f"{value * 100:.2f}" if isinstance(value, int | float) else "-"

    print("| run dir | run | family | valid acc % | test acc % | best.pt |", file=out)
    print("|---|---|---|---:|---:|---|", file=out)
    for c in sorted(candidates, key=lambda c: -(c.valid_acc or -1)):
        mark = " **←**" if c is best else ""
        print(
            f"| {c.run_dir.name}{mark} | {c.run_id} | {c.family} | {pct(c.valid_acc)} | {pct(c.test_acc)} | "
            f"{'yes' if c.has_checkpoint else 'missing'} |",
            file=out,
        )
    print(
        f"chose {best.run_dir / 'best.pt'}: highest validation accuracy ({pct(best.valid_acc)}%) of "
        f"{len(usable)} run(s) with a checkpoint (the test split is not used to choose).",
        file=out,
    )
    return best.run_dir / "best.pt"


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("checkpoint", nargs="?", type=Path, help="a best.pt written by `galaxyvit train`")
    source.add_argument(
        "--best",
        type=Path,
        metavar="RESULTS_DIR",
        help="export the run with the highest valid_acc among RESULTS_DIR/*/metrics.json (+ best.pt)",
    )
    parser.add_argument(
        "--name", help="model name: models/<name>/ and BentoML model galaxyvit-<name> (default: run id)"
    )
    parser.add_argument(
        "--variants",
        default="fp32",
        help="comma-separated: fp32 (always), int8 (dynamic quantisation, CPU), fp16 (GPU) (default: fp32)",
    )
    parser.add_argument("--out", type=Path, default=Path("models"), help="artifact root (default: models)")
    parser.add_argument(
        "--valid-data",
        type=Path,
        metavar="DIR",
        help="dataset folder (DIR/gz2_valid.csv + DIR/images/) whose validation images join the parity gate "
        "and measure the accuracy change of int8/fp16",
    )
    parser.add_argument(
        "--max-valid", type=int, default=DEFAULT_MAX_VALID, help=f"validation images used (default {DEFAULT_MAX_VALID})"
    )
    parser.add_argument(
        "--samples", type=Path, default=REAL_SAMPLES, help=f"real sample JPEGs for the gate (default {REAL_SAMPLES})"
    )
    parser.add_argument("--no-register", action="store_true", help="do not import into the BentoML model store")


def main(args: argparse.Namespace) -> int:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        checkpoint = choose_best(args.best) if args.best else args.checkpoint
        cards = export_checkpoint(
            checkpoint,
            out_root=args.out,
            name=args.name,
            variants=[v.strip() for v in args.variants.split(",") if v.strip()],
            valid_dir=args.valid_data,
            register=not args.no_register,
            samples_dir=args.samples,
            max_valid=args.max_valid,
        )
    except (ExportError, CheckpointError) as exc:
        print(f"export failed, nothing written or registered: {exc}", file=sys.stderr)
        return 1
    requested = {"fp32", *(v.strip() for v in args.variants.split(",") if v.strip())}
    refused = sorted(requested - {card.variant for card in cards})
    for card in cards:
        p = card.parity
        acc = f"{p['onnx_valid_acc'] * 100:.2f}%" if p.get("onnx_valid_acc") is not None else "-"
        print(
            f"{card.variant}: {Path(args.out) / card.name / card.onnx_file}  sha256 {card.sha256[:12]}…  "
            f"max |Δlogit| {p['max_abs_logit_diff']:.2e}  top-1 agree {p['top1_agreement']:.2%}  valid acc {acc}"
        )
    if refused:
        print(f"refused (accuracy gate): {', '.join(refused)}", file=sys.stderr)
        return 1
    return 0
