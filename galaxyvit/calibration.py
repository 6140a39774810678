"""Temperature scaling (Guo et al. 2017): one temperature T fitted on validation logits (numpy only).

A calibrated probability of 0.9 should be right 90% of the time. Training with cross-entropy tends to
leave models over-confident; dividing every logit by one T > 1 fitted to minimise the validation
negative log-likelihood (NLL) softens them without changing any prediction (argmax is unchanged).

`calibrate(valid_logits, valid_labels)` fits T and measures NLL and the expected calibration error
(ECE, 15 equal-width confidence bins) before and after; `write_reliability_diagram` draws both.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

N_BINS = 15
T_BOUNDS = (0.05, 20.0)


def log_softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    return np.exp(log_softmax(logits, temperature))


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.shape != (len(logits),) or not len(logits):
        raise ValueError(f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(f"labels must be in 0..{logits.shape[1] - 1}")
    return logits, labels


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true labels under softmax(logits / T)."""
    logits, labels = _check(logits, labels)
    return float(-log_softmax(logits, temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = T_BOUNDS, iterations: int = 60
) -> float:
    """The T in `bounds` that minimises NLL(logits / T), by golden-section search over log T.

    NLL is convex in 1/T (log-sum-exp minus a linear term), so it has one minimum along log T and a
    bracketing search finds it; a minimum beyond the bounds returns the nearest bound.
    """
    logits, labels = _check(logits, labels)
    lo, hi = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(logits, labels, math.exp(log_t))

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(iterations):
        if fa <= fb:  # the minimum is in [lo, b]
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:  # in [a, hi]
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(math.exp((lo + hi) / 2))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> dict[str, np.ndarray]:
    """Per equal-width confidence bin (lo, hi]: count, mean confidence and accuracy (NaN where empty)."""
    probs, labels = _check(probs, labels)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    index = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(index, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(index, weights=correct, minlength=n_bins) / count
    return {"edges": np.linspace(0, 1, n_bins + 1), "count": count, "confidence": mean_confidence, "accuracy": accuracy}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: sum over bins of (bin share of samples) * |accuracy - mean confidence|, top-class confidence."""
    bins = reliability_bins(probs, labels, n_bins)
    used = bins["count"] > 0
    gaps = np.abs(bins["accuracy"][used] - bins["confidence"][used])
    return float((bins["count"][used] / bins["count"].sum() * gaps).sum())


@dataclass(frozen=True)
class Calibration:
    """What the model card stores: the temperature and the validation NLL / ECE before and after it."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n_bins: int
    n_samples: int

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def calibrate(logits: np.ndarray, labels: np.ndarray, n_bins: int = N_BINS) -> Calibration:
    """Fit the temperature on (validation) logits and measure NLL and ECE with T = 1 and with the fitted T."""
    logits, labels = _check(logits, labels)
    temperature = fit_temperature(logits, labels)
    return Calibration(
        temperature=temperature,
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        ece_before=expected_calibration_error(softmax(logits), labels, n_bins),
        ece_after=expected_calibration_error(softmax(logits, temperature), labels, n_bins),
        n_bins=n_bins,
        n_samples=len(labels),
    )


def write_reliability_diagram(
    logits: np.ndarray, labels: np.ndarray, temperature: float, path: str | Path, title: str = ""
) -> Path:
    """PNG with two reliability diagrams, T = 1 and the fitted T: accuracy per confidence bin against the
    diagonal of perfect calibration, the gap shaded, the sample count of each bin beneath."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 2, figsize=(9, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}, constrained_layout=True
    )
    for column, (name, t) in enumerate((("uncalibrated", 1.0), (f"temperature {temperature:.3g}", temperature))):
        probs = softmax(logits, t)
        bins = reliability_bins(probs, labels)
        ece = expected_calibration_error(probs, labels)
        left, width = bins["edges"][:-1], np.diff(bins["edges"])
        used = bins["count"] > 0
        top, bottom = axes[0, column], axes[1, column]
        top.bar(left[used], bins["accuracy"][used], width[used], align="edge", color="#4c72b0", edgecolor="white")
        gap_low = np.minimum(bins["accuracy"], bins["confidence"])[used]
        gap = np.abs(bins["accuracy"] - bins["confidence"])[used]
        top.bar(left[used], gap, width[used], bottom=gap_low, align="edge", color="#dd8452", alpha=0.5, label="gap")
        top.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
        top.set(ylim=(0, 1), ylabel="accuracy", title=f"{name}: ECE {100 * ece:.2f}%, NLL {nll(logits, labels, t):.3f}")
        top.legend(loc="upper left", fontsize=8)
        bottom.bar(left, bins["count"], width, align="edge", color="#8c8c8c", edgecolor="white")
        bottom.set(xlim=(0, 1), xlabel="confidence (top-class probability)", ylabel="images")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
