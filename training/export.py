"""Export a checkpoint (or the best run of a results directory) to verified ONNX with a model card.

  galaxyvit export runs/vit-110421/best.pt --variants fp32,int8 --valid-data data/synth
  galaxyvit export --best runs/ --name best

Every variant is written to models/<name>/<variant>.onnx with <variant>.card.json beside it, with
the `explain` variant (explain.onnx: logits, embedding and attention maps) and, with --valid-data,
the fitted temperature and not-a-galaxy rule (training/export_fit.py: <variant>.reliability.png,
ood_gaussians.npz); then the folder is imported into the BentoML model store as `galaxyvit-<name>`.
docs/export.md describes the files and every card field.

Parity gate (training/export_gate.py): ONNX Runtime and PyTorch run the same inputs (random images,
the real GZ2 samples in data/gz2_real_samples/images and, with --valid-data, up to --max-valid
validation images sampled by class with a fixed seed). fp32 and explain must agree to max |logit
difference| <= 1e-4 with identical top-1 on every input (and their other outputs to 1e-4 of each
output's scale), or the export fails and nothing is written or registered. int8 (dynamic
quantisation, for CPU) and fp16 (for GPU), made by training/export_variants.py, record their drift
and validation-accuracy change; one that loses more than 0.5 point of validation accuracy is
refused (not written; the command exits 1). Without --valid-data only their drift is recorded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from tqdm import tqdm

from galaxyvit.card import VARIANTS, Artifact, ModelCard, load_card, load_verified, sha256_file
from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES
from galaxyvit.preprocess import Preprocessing
from galaxyvit.store import default_home, register_model
from training.checkpoint import CheckpointError, model_from_checkpoint
from training.export_best import choose_best
from training.export_fit import (
    DEFAULT_MAX_TRAIN,
    DEFAULT_OOD_PER_KIND,
    FitInputs,
    artifact,
    fit_artifacts,
    fit_inputs,
    fit_summary,
)
from training.export_gate import (
    DEFAULT_MAX_VALID,
    EMBEDDING_NAME,
    EXPLAIN_OUTPUTS,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    accuracy,
    gate_inputs,
    torch_outputs,
    variant_gate,
)
from training.export_variants import (
    EXPLAIN_FILE,
    OPSET,
    classifier_module,
    convert_fp16,
    export_onnx,
    quantize_int8,
    write_explain,
)
from training.metrics import MetricsError, RunMetrics

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]*[a-z0-9])?$")


def metrics_beside(checkpoint: Path) -> RunMetrics | None:
    """metrics.json next to the checkpoint (the trainer writes it), or None when there is none."""
    path = Path(checkpoint).parent / "metrics.json"
    if not path.is_file():
        return None
    try:
        return RunMetrics.load(path)
    except MetricsError as exc:
        raise ExportError(str(exc)) from None


# --------------------------------------------------------------------------- main API


def export_checkpoint(
    checkpoint: str | Path,
    out_root: str | Path = "models",
    name: str | None = None,
    variants: tuple[str, ...] | list[str] = ("fp32",),
    valid_dir: str | Path | None = None,
    register: bool = True,
    home: Path | None = None,
    samples_dir: str | Path | None = REAL_SAMPLE_IMAGES,
    max_valid: int = DEFAULT_MAX_VALID,
    quiet: bool = False,
    explain: bool = True,
    max_train: int = DEFAULT_MAX_TRAIN,
    ood_per_kind: int = DEFAULT_OOD_PER_KIND,
) -> list[ModelCard]:
    """Export, gate, write models/<name>/ atomically and (optionally) register it; the cards, fp32 first.

    fp32 (or explain) failing its parity gate raises ExportError, and then out_root/<name> and the model
    store are untouched. A quantised variant that loses more than 0.5 point of validation accuracy is
    refused alone (a warning; it is neither written nor registered, and is absent from the returned cards).
    With validation images (valid_dir, max_valid > 0) every card also gets its calibration and OOD rule.
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
    if metrics is not None and metrics.run_id != run_id:
        say(f"warning: metrics.json beside {checkpoint} is for run {metrics.run_id!r}, the checkpoint for {run_id!r}")
    n_params = sum(p.numel() for p in model.parameters())  # all weights in the artifact

    inputs = gate_inputs(prep, len(class_names), valid_dir, samples_dir, max_valid)
    if not inputs.kinds.count("real"):
        say(f"warning: no real sample images in {samples_dir} (pass samples_dir)")
    say(
        f"parity inputs: {inputs.kinds.count('random')} random, {inputs.kinds.count('real')} real samples, "
        f"{inputs.kinds.count('valid')} validation images"
    )
    reference = torch_outputs(classifier_module(model), inputs.images)
    reference_acc = accuracy(reference[0][inputs.valid_rows], inputs.labels) if inputs.labels is not None else None
    fit: FitInputs | None = None
    if inputs.labels is not None and len(inputs.labels) and valid_dir is not None:
        fit = fit_inputs(model, prep, len(class_names), Path(valid_dir), max_train, ood_per_kind, say)

    out_root = Path(out_root)
    out_root.mkdir(parents=True, exist_ok=True)
    created = datetime.now(UTC).replace(microsecond=0)
    cards: list[ModelCard] = []
    with tempfile.TemporaryDirectory(prefix=f".export-{name}-", dir=out_root) as tmp:
        tmp_dir = Path(tmp)
        shared: dict[str, Artifact] = {}
        explain_record = None
        if explain:
            explain_record = write_explain(model, tmp_dir, inputs, prep.size)
            shared["explain"] = artifact(tmp_dir, EXPLAIN_FILE)
            say(f"explain: {', '.join(EXPLAIN_OUTPUTS)} ({explain_record['map_method']}) passed parity")
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
                parity, outputs = variant_gate(variant, path, inputs, reference, reference_acc)
            except ExportError as exc:
                if variant == "fp32":
                    raise  # nothing is written
                print(f"warning: {exc}; {variant}.onnx is not written", file=sys.stderr)
                path.unlink()
                continue
            if variant != "fp32" and parity.valid_acc_change is None:
                say(f"warning: {variant} accuracy change not measured (no --valid-data); only logit drift recorded")
            parity.export_seconds = round(time.perf_counter() - start, 2)
            say(
                f"{variant}: max |Δlogit| {parity.max_abs_logit_diff:.2e}, top-1 agreement "
                f"{parity.top1_agreement:.2%}"
                + (f", valid acc {parity.onnx_valid_acc:.2%}" if parity.onnx_valid_acc is not None else "")
                + f" ({parity.provider})"
            )
            artifacts, calibration, ood = dict(shared), None, None
            if fit is not None:
                calibration, ood, own = fit_artifacts(path, outputs, inputs, fit, tmp_dir, variant, name)
                artifacts.update(own)
                say(f"{variant}: {fit_summary(calibration, ood)}")
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
                valid_acc=metrics.valid_acc if metrics else data.get("valid_acc"),
                test_acc=metrics.test_acc if metrics else None,
                per_class_acc=metrics.per_class_acc if metrics else None,
                confusion_matrix=metrics.confusion_matrix if metrics else None,
                parity=parity.to_dict(),  # type: ignore[arg-type]
                created=created.isoformat(),
                embedding_name=EMBEDDING_NAME,
                calibration=calibration,
                ood=ood,
                explain=explain_record,
                artifacts=artifacts,
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


# --------------------------------------------------------------------------- the command line


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
        "--max-valid",
        type=int,
        default=DEFAULT_MAX_VALID,
        help=f"validation images used: a class-stratified sample with a fixed seed (default {DEFAULT_MAX_VALID})",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        default=REAL_SAMPLE_IMAGES,
        help=f"real sample JPEGs for the gate (default {REAL_SAMPLE_IMAGES})",
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=DEFAULT_MAX_TRAIN,
        help="with --valid-data: training images (class-stratified sample of DIR's train split) whose embeddings "
        f"fit the Mahalanobis OOD score (default {DEFAULT_MAX_TRAIN}; 0: logit scores only)",
    )
    parser.add_argument(
        "--ood-per-kind",
        type=int,
        default=DEFAULT_OOD_PER_KIND,
        help=f"with --valid-data: non-galaxy images of each of 14 kinds that choose the OOD score "
        f"(default {DEFAULT_OOD_PER_KIND}; 0: no OOD rule)",
    )
    parser.add_argument("--no-explain", action="store_true", help="do not export the explain variant")
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
            explain=not args.no_explain,
            max_train=args.max_train,
            ood_per_kind=args.ood_per_kind,
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
