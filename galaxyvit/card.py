"""Model cards: the JSON written beside every exported ONNX artifact, and the integrity check on load.

Torch-free, so serving can use it. A model directory `models/<name>/` holds `<variant>.onnx`
and `<variant>.card.json` for each variant (fp32, int8, fp16), and the files a card lists in its
`artifacts` (the `explain.onnx` variant, the OOD Gaussians, the reliability diagram), each with its
sha256. docs/export.md describes every field; cards written before a field existed still load (the
field takes its default).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from galaxyvit.preprocess import Preprocessing

VARIANTS = ("fp32", "int8", "fp16")


class CardError(ValueError):
    """A model card is missing, unreadable or incomplete."""


class IntegrityError(ValueError):
    """An artifact does not match the sha256 its card records."""


class Parity(TypedDict, total=False):
    """The export's check of one ONNX variant against the PyTorch model on the gate inputs (training/export.py)."""

    provider: str  # ONNX Runtime provider the check ran on
    n_inputs: int  # gate inputs: random, real sample and validation images
    n_random: int
    n_real: int
    n_valid: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    top1_agreement: float  # fraction of inputs whose top class is the PyTorch model's
    tolerance: float | None  # the fp32 gate's limit on max_abs_logit_diff; None for int8/fp16
    torch_valid_acc: float | None  # accuracies on the validation images, when the gate had some
    onnx_valid_acc: float | None
    valid_acc_change: float | None
    export_seconds: float
    max_abs_embedding_diff: float  # the `embedding` output (absent on cards from before it existed)
    embedding_tolerance: float | None  # the fp32 gate's limit on it; None for int8/fp16


class Artifact(TypedDict):
    """A file beside the cards that a card names: its name in the model folder and its sha256."""

    file: str
    sha256: str


class CalibrationRecord(TypedDict):
    """Temperature scaling fitted on the validation images (galaxyvit.calibration.Calibration.to_dict())."""

    temperature: float  # calibrated probabilities = softmax(logits / temperature)
    nll_before: float  # validation NLL with T = 1 and with the fitted T
    nll_after: float
    ece_before: float  # expected calibration error (fraction, n_bins equal-width bins) before and after
    ece_after: float
    n_bins: int
    n_samples: int


class OODRecord(TypedDict):
    """The not-a-galaxy rule (galaxyvit.ood.OODRule.to_dict() plus how the score was chosen)."""

    method: str  # "energy" | "max_softmax" | "mahalanobis": the score used, higher = more like a galaxy
    threshold: float  # in_distribution = score >= threshold
    keep: float  # the share of validation galaxies the threshold was fitted to pass (0.95)
    valid_pass_rate: float
    n_valid: int
    aurocs: dict[str, float]  # every score measured: validation galaxies against the non-galaxy image set
    n_ood: int  # non-galaxy images the AUROCs were measured on
    pixels: NotRequired[dict[str, Any]]  # the pixel rule (galaxyvit.pixels.PixelRule.to_dict()); absent on older cards


class ExplainRecord(TypedDict):
    """The `explain` ONNX variant (artifact "explain"): its outputs and its parity with PyTorch."""

    outputs: list[str]  # logits (N, C), embedding (N, D), rollout (N, g, g), heads (N, H, g, g)
    map_method: str  # "rollout", or for the Linformer "linformer-value-projection" (see docs/explain.md)
    grid: int  # g: patches per side
    heads: int  # H: heads of the last layer
    parity: dict[str, Any]


@dataclass
class ModelCard:
    """What an exported artifact is: its model, classes (in label order), preprocessing, accuracy and parity."""

    name: str
    version: str
    variant: str
    run_id: str
    family: str
    run_config: dict[str, Any]  # the training run's settings (training.registry.Run.to_dict())
    class_names: list[str]
    preprocessing: dict[str, Any]  # Preprocessing.to_dict()
    params: int
    onnx_file: str
    sha256: str
    opset: int
    input_name: str = "images"
    output_name: str = "logits"
    valid_acc: float | None = None
    test_acc: float | None = None
    per_class_acc: list[float] | None = None
    confusion_matrix: list[list[float]] | None = None
    parity: Parity = field(default_factory=Parity)
    created: str = ""
    embedding_name: str | None = None  # the ONNX output holding the CLS embedding (N, D); None on older exports
    calibration: CalibrationRecord | None = None  # None: exported without validation images (or an older card)
    ood: OODRecord | None = None
    explain: ExplainRecord | None = None
    artifacts: dict[str, Artifact] = field(default_factory=dict)  # key -> file beside the card, with its sha256

    @property
    def prep(self) -> Preprocessing:
        return Preprocessing.from_dict(self.preprocessing)

    @property
    def temperature(self) -> float:
        """The fitted temperature, or 1.0 (no change) for a card without calibration."""
        return float(self.calibration["temperature"]) if self.calibration else 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(model_dir: str | Path, variant: str = "fp32") -> Path:
    return Path(model_dir) / f"{variant}.card.json"


def load_card(path: str | Path) -> ModelCard:
    """Read and validate a card; every problem is a CardError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CardError(f"model card {path} is missing")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CardError(f"model card {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CardError(f"model card {path} must be a JSON object")
    required = [f.name for f in fields(ModelCard) if f.default is MISSING and f.default_factory is MISSING]
    missing = [name for name in required if name not in data]
    if missing:
        raise CardError(f"model card {path} lacks field(s): {', '.join(missing)}")
    known = {f.name for f in fields(ModelCard)}
    card = ModelCard(**{k: v for k, v in data.items() if k in known})
    try:
        Preprocessing.from_dict(card.preprocessing)
    except (KeyError, TypeError, ValueError) as exc:
        raise CardError(f"model card {path} has malformed preprocessing: {exc}") from None
    if card.variant not in VARIANTS:
        raise CardError(f"model card {path}: unknown variant {card.variant!r}")
    return card


def load_verified(model_dir: str | Path, variant: str = "fp32") -> tuple[Path, ModelCard]:
    """The ONNX path and card of a variant, after checking the file's sha256 against the card."""
    card = load_card(card_path(model_dir, variant))
    onnx_path = Path(model_dir) / card.onnx_file
    if not onnx_path.is_file():
        raise IntegrityError(f"{onnx_path} named by {card_path(model_dir, variant)} is missing")
    actual = sha256_file(onnx_path)
    if actual != card.sha256:
        raise IntegrityError(
            f"{onnx_path} does not match its model card (sha256 {actual[:12]}… != {card.sha256[:12]}…): "
            "the artifact was modified or corrupted; re-export it"
        )
    return onnx_path, card


def verified_artifact(model_dir: str | Path, card: ModelCard, key: str) -> Path:
    """The path of the artifact `key` a card lists, after checking its sha256 (CardError when the card
    lists no such artifact, IntegrityError when the file is missing or modified)."""
    entry = card.artifacts.get(key)
    if entry is None:
        raise CardError(f"the {card.variant} card of {card.name} lists no {key!r} artifact")
    path = Path(model_dir) / entry["file"]
    if not path.is_file():
        raise IntegrityError(f"{path} ({key}) named by the {card.variant} card is missing")
    if sha256_file(path) != entry["sha256"]:
        raise IntegrityError(f"{path} ({key}) does not match its model card: the artifact was modified; re-export it")
    return path
