"""Which model classifies: a served model of the BentoML store (`--model NAME`) or an exported file (`--onnx PATH`).

Either way the artifact is the exported ONNX file with its model card beside it, checked against the
card's sha256 before use, and opened by serving's `load_model` (the service's own provider choice
and session settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.inputs import ArgumentError
from catalog.table import ModelInfo
from galaxyvit.card import VARIANTS, CardError, IntegrityError, load_verified
from galaxyvit.preprocess import Preprocessing


@dataclass(frozen=True)
class ModelRef:
    """A verified model variant: where it lies and what its rows record."""

    name: str
    model_dir: Path
    variant: str
    info: ModelInfo
    prep: Preprocessing


def resolve_model(
    model: str | None, onnx: str | Path | None, variant: str | None = None, home: Path | None = None
) -> ModelRef:
    """The model named by --model or --onnx, verified (sha256 against its card); ArgumentError otherwise."""
    if (model is None) == (onnx is None):
        raise ArgumentError("give exactly one of --model NAME and --onnx PATH")
    if onnx is not None:
        onnx = Path(onnx)
        if onnx.suffix != ".onnx" or onnx.stem not in VARIANTS:
            raise ArgumentError(
                f"--onnx {onnx}: expected an exported <variant>.onnx ({', '.join(VARIANTS)}) with its card beside it"
            )
        if variant is not None and variant != onnx.stem:
            raise ArgumentError(f"--variant {variant} contradicts --onnx {onnx.name}")
        model_dir, variant = onnx.resolve().parent, onnx.stem
    else:
        import bentoml

        from galaxyvit.store import default_home, stored_model_dir

        try:
            model_dir = stored_model_dir(model, home)
        except bentoml.exceptions.NotFound:
            where = home or default_home()
            raise ArgumentError(
                f"--model {model}: no model galaxyvit-{model} in the BentoML store at {where}"
            ) from None
        variant = variant or "fp32"
    try:
        _, card = load_verified(model_dir, variant)
    except (CardError, IntegrityError) as exc:
        raise ArgumentError(f"refusing model {model or onnx}: {exc}") from None
    info = ModelInfo(card.name, card.version, card.sha256, tuple(card.class_names))
    return ModelRef(model or card.name, Path(model_dir), variant, info, card.prep)


def open_session(ref: ModelRef, device: str, threads: int = 0):
    """The ONNX Runtime session of `ref` (inference.runtime.LoadedModel); `.provider` is the one ORT really uses."""
    from inference.runtime import load_model

    return load_model(ref.name, ref.model_dir, ref.variant, device, threads)
