"""Class weights for the cross-entropy loss, for any number of classes K.

A spec is one of:
  uniform              1 for every class
  inverse_frequency    N / (K * n_c) from the training split's label counts (every class the same share of the loss)
  study_tuned          the study's hand-tuned weights (the 8 GZ2 classes only)
  study_inverse        the study's inverse-frequency weights on its GZ2 training split (8 GZ2 classes only)
  K numbers            a comma-separated list such as '1,1,2,1,1,1,3,9'
"""

from __future__ import annotations

from collections.abc import Sequence

from galaxyvit.classes import CLASS_NAMES

STUDY_PRESETS: dict[str, tuple[float, ...]] = {
    "study_tuned": (0.19, 0.21, 0.98, 0.38, 0.53, 0.66, 1.81, 3.23),
    "study_inverse": (0.58, 0.50, 2.62, 1.20, 0.96, 0.63, 3.31, 9.17),
}
CHOICES = ("uniform", "inverse_frequency", *STUDY_PRESETS)


def validate(weights: Sequence[float]) -> tuple[float, ...]:
    """Custom weights: a non-empty list of positive numbers (the length is checked against K by `resolve`)."""
    values = tuple(float(w) for w in weights)
    if not values or any(not w > 0 for w in values):
        raise ValueError(f"class weights must all be positive numbers, got {list(values)}")
    return values


def parse(spec: str | Sequence[float]) -> str | tuple[float, ...]:
    """A preset name, or a comma-separated list of numbers such as '1,1,2,1' (validated)."""
    if not isinstance(spec, str):
        return validate(spec)
    if spec in CHOICES:
        return spec
    try:
        values = [float(part) for part in spec.split(",")]
    except ValueError:
        raise ValueError(
            f"class weights {spec!r}: expected one of {', '.join(CHOICES)} or one comma-separated number per class"
        ) from None
    return validate(values)


def inverse_frequency(label_counts: Sequence[int], class_names: Sequence[str] | None = None) -> tuple[float, ...]:
    """N / (K * n_c): the weight that gives every class the same total share of the loss."""
    empty = [c for c, n in enumerate(label_counts) if n <= 0]
    if empty:
        named = ", ".join(f"{c} ({class_names[c]!r})" if class_names else str(c) for c in empty)
        raise ValueError(
            f"inverse_frequency class weights: class {named} has no image in the training split, so its "
            "weight N/(K*n_c) is undefined; add training images of it, or give explicit weights"
        )
    total, k = sum(label_counts), len(label_counts)
    return tuple(total / (k * n) for n in label_counts)


def resolve(
    spec: str | Sequence[float], label_counts: Sequence[int], class_names: Sequence[str] | None = None
) -> tuple[float, ...]:
    """The weight vector of `spec` for the K = len(label_counts) classes of a training split."""
    spec = parse(spec)
    k = len(label_counts)
    if not isinstance(spec, str):
        if len(spec) != k:
            raise ValueError(f"class weights need exactly {k} values (one per class), got {len(spec)}")
        return spec
    if spec == "uniform":
        return (1.0,) * k
    if spec == "inverse_frequency":
        return inverse_frequency(label_counts, class_names)
    if k != len(CLASS_NAMES) or (class_names is not None and tuple(class_names) != CLASS_NAMES):
        names = f" ({', '.join(class_names)})" if class_names else ""
        raise ValueError(
            f"class weights {spec!r} are the study's, for the 8 GZ2 classes only; this data has {k} classes{names}: "
            f"use uniform, inverse_frequency or {k} comma-separated numbers"
        )
    return STUDY_PRESETS[spec]


def describe(weights: Sequence[float], class_names: Sequence[str]) -> str:
    """'round elliptical 0.58, in-between elliptical 0.50, ...' for the start-of-training message."""
    return ", ".join(f"{name} {w:.3g}" for name, w in zip(class_names, weights, strict=True))
