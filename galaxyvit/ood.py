"""Out-of-distribution flag: is this input like the galaxies the model was trained on? (numpy only)

Three scores, all "higher = more like the training galaxies":
  energy:      logsumexp(logits), the negative of the free energy E(x) = -logsumexp(logits)
               (Liu et al. 2020, "Energy-based Out-of-distribution Detection");
  max_softmax: the largest softmax probability (Hendrycks & Gimpel 2017);
  mahalanobis: minus the smallest Mahalanobis distance (squared) of the CLS embedding (the head's
               input) to the class means of training galaxies, with one shared covariance
               (Lee et al. 2018). Needs the embeddings and the fitted `FeatureGaussians`.
The logit scores come free with every prediction but can be fooled: a model is often as confident
on noise or blank sky as on a galaxy, because the classifier head only sees which class direction
an input's features point to, not whether they look like any galaxy's features (docs/explain.md
measures this). The feature-space score checks exactly that.

A threshold is fitted on validation galaxies so that (at least) 95% of them pass; an input scoring
below it gets `in_distribution: false`. Logit scores use the raw logits (before any temperature),
at fit time and at prediction time alike. `auroc` measures how well a score separates galaxies from
a set of non-galaxies, which is how `choose_method` picks the score to use.

An export stores the rule in the model card (`ood`) and, for "mahalanobis", the Gaussians in the
artifact `ood_gaussians` (an .npz of float64 `means` (C, D) and `precision` (D, D)); `load_ood_rule`
reads both back, checking the artifact's sha256.

An export with training images also fits a pixel rule (galaxyvit/pixels.py, the card's `ood.pixels`): then an
input is in distribution only if both rules pass, and its `ood_score` is one number, the smaller of the two
margins in robust sigmas of the validation galaxies, min((score - threshold) / model_scale, pixel threshold -
pixel distance), with pass level 0. Without `ood.pixels` (older exports) the score and threshold are the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from galaxyvit.card import ModelCard, verified_artifact
from galaxyvit.pixels import PixelRule

LOGIT_METHODS = ("energy", "max_softmax")
METHODS = (*LOGIT_METHODS, "mahalanobis")
KEEP = 0.95
RIDGE = 1e-3
GAUSSIANS_ARTIFACT, GAUSSIANS_FILE = "ood_gaussians", "ood_gaussians.npz"  # card artifact key, file name


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
    raise ValueError(f"unknown logit OOD score {method!r}; choose from {', '.join(LOGIT_METHODS)}")


@dataclass
class FeatureGaussians:
    """Class-conditional Gaussians of CLS embeddings with one shared covariance: means (C, D), precision (D, D)."""

    means: np.ndarray
    precision: np.ndarray

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) minus the squared Mahalanobis distance to the nearest class mean (0 at a mean, lower further out)."""
        e = np.asarray(embeddings, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != self.means.shape[1]:
            raise ValueError(f"expected embeddings (N, {self.means.shape[1]}), got {e.shape}")
        ep, mp = e @ self.precision, self.means @ self.precision
        squared = (ep * e).sum(1)[:, None] - 2 * ep @ self.means.T + (mp * self.means).sum(1)[None, :]
        return -np.maximum(squared, 0).min(axis=1)

    def save(self, path: str | Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, means=self.means, precision=self.precision)

    @classmethod
    def load(cls, path: str | Path) -> FeatureGaussians:
        with np.load(path, allow_pickle=False) as data:
            return cls(means=data["means"], precision=data["precision"])


def fit_feature_gaussians(embeddings: np.ndarray, labels: np.ndarray, ridge: float = RIDGE) -> FeatureGaussians:
    """Class means and the shared covariance of (training) embeddings; the covariance gets `ridge` times its
    mean variance added on the diagonal, so it inverts even with fewer images than dimensions."""
    e, labels = np.asarray(embeddings, dtype=np.float64), np.asarray(labels)
    if e.ndim != 2 or labels.shape != (len(e),) or len(e) < 2:
        raise ValueError(f"expected embeddings (N >= 2, D) and labels (N,), got {e.shape} and {labels.shape}")
    classes = np.unique(labels)
    means = np.stack([e[labels == c].mean(axis=0) for c in classes])
    centred = e - means[np.searchsorted(classes, labels)]
    covariance = centred.T @ centred / len(e)
    covariance += ridge * max(float(np.trace(covariance)) / e.shape[1], 1e-12) * np.eye(e.shape[1])
    return FeatureGaussians(means=means, precision=np.linalg.inv(covariance))


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
    """What the model card stores: the score, its threshold and the share of validation galaxies passing.

    For "mahalanobis" the rule also holds the `FeatureGaussians` (not in `to_dict`: they are saved
    beside the card with `FeatureGaussians.save`, and handed to `from_dict`).
    """

    method: str
    threshold: float
    keep: float
    valid_pass_rate: float
    n_valid: int
    gaussians: FeatureGaussians | None = field(default=None, compare=False, repr=False)
    pixels: PixelRule | None = None

    def scores(self, logits: np.ndarray | None, embeddings: np.ndarray | None = None) -> np.ndarray:
        if self.method != "mahalanobis":
            if logits is None:
                raise ValueError(f"the {self.method} OOD score needs the logits")
            return galaxy_score(logits, self.method)
        if self.gaussians is None or embeddings is None:
            raise ValueError("the mahalanobis OOD score needs the fitted FeatureGaussians and the CLS embeddings")
        return self.gaussians.score(embeddings)

    def ood_scores(
        self,
        logits: np.ndarray | None,
        embeddings: np.ndarray | None = None,
        crops: np.ndarray | list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """(N,) the answers' `ood_score`: the model's score, or with a pixel rule the smaller margin (see above)."""
        scores = self.scores(logits, embeddings)
        if self.pixels is None:
            return scores
        if crops is None:
            raise ValueError("this OOD rule has a pixel rule: it needs the evaluation crops")
        return self.combine(scores, self.pixels.margin(crops))

    def combine(self, scores: np.ndarray, pixel_margins: np.ndarray) -> np.ndarray:
        """The model's scores and the pixel rule's margins as one score (the model's scores without a pixel rule)."""
        if self.pixels is None:
            return scores
        return np.minimum((np.asarray(scores) - self.threshold) / self.pixels.model_scale, pixel_margins)

    @property
    def pass_level(self) -> float:
        """The `ood_score` an input needs to be in distribution: the threshold, or 0 with a pixel rule."""
        return self.threshold if self.pixels is None else 0.0

    def in_distribution(
        self,
        logits: np.ndarray | None,
        embeddings: np.ndarray | None = None,
        crops: np.ndarray | list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """(N,) booleans: the model's score reaches its threshold (as >= `keep` of validation galaxies do) and
        the crop passes the pixel rule, if there is one."""
        return self.ood_scores(logits, embeddings, crops) >= self.pass_level

    def to_dict(self) -> dict:
        data = {
            "method": self.method,
            "threshold": self.threshold,
            "keep": self.keep,
            "valid_pass_rate": self.valid_pass_rate,
            "n_valid": self.n_valid,
        }
        return data if self.pixels is None else {**data, "pixels": self.pixels.to_dict()}

    @classmethod
    def from_dict(cls, data: dict, gaussians: FeatureGaussians | None = None) -> OODRule:
        """Read a rule back; an unknown method, or mahalanobis without its Gaussians, fails here, not at a request."""
        if data["method"] not in METHODS:
            raise ValueError(f"unknown OOD score {data['method']!r}; choose from {', '.join(METHODS)}")
        if data["method"] == "mahalanobis" and gaussians is None:
            raise ValueError("a mahalanobis OOD rule needs its FeatureGaussians")
        fields = ("method", "threshold", "keep", "valid_pass_rate", "n_valid")
        pixels = PixelRule.from_dict(data["pixels"]) if data.get("pixels") else None
        return cls(**{k: data[k] for k in fields}, gaussians=gaussians, pixels=pixels)


def fit_ood_rule(
    valid_logits: np.ndarray | None,
    method: str = "energy",
    keep: float = KEEP,
    valid_embeddings: np.ndarray | None = None,
    gaussians: FeatureGaussians | None = None,
    pixels: PixelRule | None = None,
    valid_pixel_margins: np.ndarray | None = None,
) -> OODRule:
    """Threshold = the score that `keep` of the validation galaxies reach or exceed (the lowest such value).
    With a pixel rule (and the validation galaxies' margins under it, in the same order), its `model_scale`
    (the scores' robust sigma) and the share of validation galaxies passing both are filled in."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    unfitted = OODRule(method, 0.0, keep, 0.0, 0, gaussians)
    scores = np.sort(unfitted.scores(valid_logits, valid_embeddings))
    if not len(scores):
        raise ValueError("fitting an OOD threshold needs validation galaxies")
    threshold = float(scores[int(np.floor((1 - keep) * len(scores)))])
    if pixels is not None:
        if valid_pixel_margins is None or len(valid_pixel_margins) != len(scores):
            raise ValueError("a pixel rule needs the validation galaxies' pixel margins, one per galaxy")
        scale = max(1.4826 * float(np.median(np.abs(scores - np.median(scores)))), 1e-12)
        pixels = replace(pixels, model_scale=scale)
        both = np.minimum((unfitted.scores(valid_logits, valid_embeddings) - threshold) / scale, valid_pixel_margins)
        pixels = replace(pixels, both_pass_rate=float((both >= 0).mean()))
    return OODRule(
        method=method,
        threshold=threshold,
        keep=keep,
        valid_pass_rate=float((scores >= threshold).mean()),
        n_valid=len(scores),
        gaussians=gaussians,
        pixels=pixels,
    )


def compare_methods(
    galaxy_logits: np.ndarray,
    ood_logits: np.ndarray,
    galaxy_embeddings: np.ndarray | None = None,
    ood_embeddings: np.ndarray | None = None,
    gaussians: FeatureGaussians | None = None,
) -> dict[str, float]:
    """AUROC of each score, galaxies (positive) against non-galaxies (negative); mahalanobis when the
    embeddings and Gaussians are given."""
    aurocs = {m: auroc(galaxy_score(galaxy_logits, m), galaxy_score(ood_logits, m)) for m in LOGIT_METHODS}
    if gaussians is not None and galaxy_embeddings is not None and ood_embeddings is not None:
        aurocs["mahalanobis"] = auroc(gaussians.score(galaxy_embeddings), gaussians.score(ood_embeddings))
    return aurocs


def choose_method(
    galaxy_logits: np.ndarray,
    ood_logits: np.ndarray,
    galaxy_embeddings: np.ndarray | None = None,
    ood_embeddings: np.ndarray | None = None,
    gaussians: FeatureGaussians | None = None,
) -> tuple[str, dict[str, float]]:
    """The score that separates galaxies from non-galaxies best (highest AUROC; on a tie the earlier of
    METHODS), with every AUROC measured."""
    aurocs = compare_methods(galaxy_logits, ood_logits, galaxy_embeddings, ood_embeddings, gaussians)
    return max(aurocs, key=lambda m: (aurocs[m], -METHODS.index(m))), aurocs


def load_ood_rule(model_dir: str | Path, card: ModelCard) -> OODRule | None:
    """The card's OOD rule, with its Gaussians for "mahalanobis" (sha256-checked); None if the card has none."""
    if card.ood is None:
        return None
    gaussians = None
    if card.ood["method"] == "mahalanobis":
        gaussians = FeatureGaussians.load(verified_artifact(model_dir, card, GAUSSIANS_ARTIFACT))
    return OODRule.from_dict(dict(card.ood), gaussians)


def _rows(array: np.ndarray | None, mask: np.ndarray) -> np.ndarray | None:
    return None if array is None else array[mask]


@dataclass(frozen=True)
class HeldOutKind:
    """How a rule fitted without one kind of non-galaxy image does on that kind."""

    kind: str
    method: str  # the score chosen on the other kinds
    auroc: float  # galaxies against the held-out kind, with that score
    flagged: float  # share of the held-out kind below the rule's threshold


def leave_one_kind_out(
    galaxy_logits: np.ndarray,
    ood_logits: np.ndarray,
    kinds: list[str],
    galaxy_embeddings: np.ndarray | None = None,
    ood_embeddings: np.ndarray | None = None,
    gaussians: FeatureGaussians | None = None,
    keep: float = KEEP,
    pixels: PixelRule | None = None,
    pixel_margins: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[HeldOutKind]:
    """For every kind: choose the score and fit the rule as an export does, on the other kinds only, then
    measure it on the held-out kind (is the flag ready for a kind of non-galaxy it never saw?). With a pixel
    rule (fitted on galaxies only, no kind) and the margins of (galaxies, non-galaxies) under it, the rule is
    the combined one and its `ood_score` is measured."""
    kinds_array = np.asarray(kinds)
    if len(kinds_array) != len(ood_logits):
        raise ValueError(f"{len(kinds_array)} kinds for {len(ood_logits)} non-galaxy images")
    out = []
    for kind in dict.fromkeys(kinds):
        seen, held = kinds_array != kind, kinds_array == kind
        if not seen.any():
            raise ValueError("leave-one-kind-out needs at least two kinds")
        method, _ = choose_method(
            galaxy_logits, ood_logits[seen], galaxy_embeddings, _rows(ood_embeddings, seen), gaussians
        )
        galaxy_margins, ood_margins = pixel_margins if pixel_margins is not None else (None, None)
        rule = fit_ood_rule(galaxy_logits, method, keep, galaxy_embeddings, gaussians, pixels, galaxy_margins)
        held_scores = rule.scores(ood_logits[held], _rows(ood_embeddings, held))
        galaxy_scores = rule.scores(galaxy_logits, galaxy_embeddings)
        if rule.pixels is not None and galaxy_margins is not None and ood_margins is not None:
            held_scores = rule.combine(held_scores, ood_margins[held])
            galaxy_scores = rule.combine(galaxy_scores, galaxy_margins)
        flagged = float((held_scores < rule.pass_level).mean())
        out.append(HeldOutKind(kind, method, auroc(galaxy_scores, held_scores), flagged))
    return out
