"""Class weights for the cross-entropy loss: the study's presets, inverse frequency, or a custom list."""

from __future__ import annotations

from collections.abc import Sequence

from galaxyvit.classes import NUM_CLASSES

PRESETS: dict[str, tuple[float, ...]] = {
    "uniform": (1.0,) * NUM_CLASSES,
    "study_tuned": (0.19, 0.21, 0.98, 0.38, 0.53, 0.66, 1.81, 3.23),
    "study_inverse": (0.58, 0.50, 2.62, 1.20, 0.96, 0.63, 3.31, 9.17),
}
CHOICES = (*PRESETS, "inverse_frequency")


def inverse_frequency(label_counts: Sequence[int]) -> tuple[float, ...]:
    """N / (K * n_c): the weight that gives every class the same total share of the loss."""
    if len(label_counts) != NUM_CLASSES or any(n <= 0 for n in label_counts):
        raise ValueError(f"inverse_frequency needs {NUM_CLASSES} positive label counts, got {list(label_counts)}")
    total = sum(label_counts)
    return tuple(total / (NUM_CLASSES * n) for n in label_counts)


def validate(weights: Sequence[float]) -> tuple[float, ...]:
    weights = tuple(float(w) for w in weights)
    if len(weights) != NUM_CLASSES:
        raise ValueError(f"class weights need exactly {NUM_CLASSES} values (one per class), got {len(weights)}")
    if any(not w > 0 for w in weights):
        raise ValueError(f"class weights must all be positive, got {list(weights)}")
    return weights


def parse(spec: str | Sequence[float]) -> str | tuple[float, ...]:
    """A preset name, or a comma-separated list such as '1,1,2,1,1,1,3,9' (validated)."""
    if not isinstance(spec, str):
        return validate(spec)
    if spec in CHOICES:
        return spec
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"class weights {spec!r}: expected one of {', '.join(CHOICES)} or {NUM_CLASSES} comma-separated numbers"
        ) from None
    return validate(values)


def resolve(spec: str | Sequence[float], label_counts: Sequence[int] | None = None) -> tuple[float, ...]:
    """The weight vector for a spec; `inverse_frequency` needs the training split's label counts."""
    spec = parse(spec)
    if not isinstance(spec, str):
        return spec
    if spec == "inverse_frequency":
        if label_counts is None:
            raise ValueError("inverse_frequency class weights need the training split's label counts")
        return inverse_frequency(label_counts)
    return PRESETS[spec]
