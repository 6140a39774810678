"""Out-of-distribution flag: is this input like the galaxies the model was trained on? (numpy only)

Two scores from the logits, both "higher = more like the training galaxies":
  energy:      logsumexp(logits), the negative of the free energy E(x) = -logsumexp(logits)
               (Liu et al. 2020, "Energy-based Out-of-distribution Detection");
  max_softmax: the largest softmax probability (Hendrycks & Gimpel 2017).
A threshold is fitted on validation galaxies so that (at least) 95% of them pass; an input scoring
below it gets `in_distribution: false`. Scores are computed on the raw logits (before any
temperature), at fit time and at prediction time alike. `auroc` measures how well a score separates
galaxies from a set of non-galaxies, which is how `choose_method` picks the score to use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

METHODS = ("energy", "max_softmax")
KEEP = 0.95


def logsumexp(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=-1, keepdims=True)))[..., 0]


def energy(logits: np.ndarray) -> np.ndarray:
    """Free energy -logsumexp(logits) per row: low for inputs like the training data."""
    return -logsumexp(logits)


def galaxy_score(logits: np.ndarray, method: str) -> np.ndarray:
    """(N,) scores, higher = more like the training galaxies: -energy or the max softmax probability."""
    if method == "energy":
        return -energy(logits)
    if method == "max_softmax":
        z = np.asarray(logits, dtype=np.float64)
        return np.exp(z.max(axis=-1) - logsumexp(z))
    raise ValueError(f"unknown OOD score {method!r}; choose from {', '.join(METHODS)}")


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of `positive` scored above `negative`: P(pos > neg) + P(pos = neg) / 2
    (the Mann-Whitney U statistic over all pairs, ties counted half), in O(n log n)."""
    positive, negative = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if not len(positive) or not len(negative):
        raise ValueError("AUROC needs at least one score on each side")
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")
    not_above = np.searchsorted(ordered, positive, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(positive) * len(negative)))


@dataclass(frozen=True)
class OODRule:
    """What the model card stores: the score, its threshold and the share of validation galaxies passing."""

    method: str
    threshold: float
    keep: float
    valid_pass_rate: float
    n_valid: int

    def scores(self, logits: np.ndarray) -> np.ndarray:
        return galaxy_score(logits, self.method)

    def in_distribution(self, logits: np.ndarray) -> np.ndarray:
        """(N,) booleans: the input scores at least the threshold (like >= `keep` of validation galaxies)."""
        return self.scores(logits) >= self.threshold

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> OODRule:
        rule = cls(**{k: data[k] for k in cls.__dataclass_fields__})
        galaxy_score(np.zeros((1, 2)), rule.method)  # an unknown method fails here, not at the first request
        return rule


def fit_ood_rule(valid_logits: np.ndarray, method: str = "energy", keep: float = KEEP) -> OODRule:
    """Threshold = the score that `keep` of the validation galaxies reach or exceed (the lowest such value)."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    scores = np.sort(galaxy_score(valid_logits, method))
    if not len(scores):
        raise ValueError("fitting an OOD threshold needs validation logits")
    threshold = float(scores[int(np.floor((1 - keep) * len(scores)))])
    return OODRule(
        method=method,
        threshold=threshold,
        keep=keep,
        valid_pass_rate=float((scores >= threshold).mean()),
        n_valid=len(scores),
    )


def compare_methods(galaxy_logits: np.ndarray, ood_logits: np.ndarray) -> dict[str, float]:
    """AUROC of each score, galaxies (positive) against non-galaxies (negative)."""
    return {m: auroc(galaxy_score(galaxy_logits, m), galaxy_score(ood_logits, m)) for m in METHODS}


def choose_method(galaxy_logits: np.ndarray, ood_logits: np.ndarray) -> tuple[str, dict[str, float]]:
    """The score that separates galaxies from non-galaxies better (higher AUROC; energy on a tie), with both AUROCs."""
    aurocs = compare_methods(galaxy_logits, ood_logits)
    return max(METHODS, key=lambda m: (aurocs[m], m == "energy")), aurocs
