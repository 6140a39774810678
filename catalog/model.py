"""Which model classifies: a served model of the BentoML store (`--model NAME`) or an exported file (`--onnx PATH`).

Either way the artifact is the exported ONNX file with its model card beside it, checked against the
card's sha256 before use, and opened by inference.runtime's `load_model` (the service's own provider choice
and session settings), with the card's temperature and OOD rule (inference.scoring.Scorer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from catalog.inputs import ArgumentError
from catalog.predict import TTA_CHOICES
from catalog.table import ModelInfo
from galaxyvit.card import VARIANTS, CardError, IntegrityError, ModelCard, load_verified
from galaxyvit.preprocess import Preprocessing


@dataclass(frozen=True)
class ModelRef:
    """A verified model variant: where it lies and what its rows record."""

    name: str
    model_dir: Path
    variant: str
    info: ModelInfo  # with the answer's options: tta, embedding size
    prep: Preprocessing
    calibrate: bool = True  # False: the raw softmax (the service's `calibrate` setting off)


def resolve_model(
    model: str | None,
    onnx: str | Path | None,
    variant: str | None = None,
    home: Path | None = None,
    *,
    calibrate: bool = True,
    tta: int = 1,
    embeddings: bool = False,
) -> ModelRef:
    """The model named by --model or --onnx, verified (sha256 against its card); ArgumentError otherwise."""
    if tta not in TTA_CHOICES:
        raise ArgumentError(f"--tta must be 1 or 8, not {tta}")
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
        onnx_path, card = load_verified(model_dir, variant)
    except (CardError, IntegrityError) as exc:
        raise ArgumentError(f"refusing model {model or onnx}: {exc}") from None
    dim = embedding_dim(onnx_path, card) if embeddings else 0
    info = ModelInfo(card.name, card.version, card.sha256, tuple(card.class_names), tta, dim)
    return ModelRef(model or card.name, Path(model_dir), variant, info, card.prep, calibrate)


def embedding_dim(onnx_path: Path, card: ModelCard) -> int:
    """D of the card's CLS embedding output (N, D), read from the ONNX graph; ArgumentError for an export without."""
    from inference.runtime import open_session

    if not card.embedding_name:
        raise ArgumentError(f"--embeddings: {onnx_path} has no embedding output (an older export): re-export it")
    outputs = {o.name: o.shape for o in open_session(onnx_path, "cpu", 1).get_outputs()}
    dim = outputs.get(card.embedding_name, [None])[-1]
    if not isinstance(dim, int) or dim < 1:
        raise ArgumentError(f"--embeddings: {onnx_path} output {card.embedding_name!r} has no fixed size ({dim})")
    return dim
