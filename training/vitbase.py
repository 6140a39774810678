"""ViT-Base (google/vit-base-patch16-224) from Hugging Face with its classifier replaced by Linear(768, 8).

The weights come from `weights`: a hub id, a local directory written by `save_pretrained`,
or the Hugging Face cache (set HF_HOME / HF_HUB_OFFLINE as usual). `pretrained=False` builds
the same architecture from `ViTConfig()` without downloading anything (for counting parameters).
"""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import ViTConfig, ViTForImageClassification

from galaxyvit.classes import CLASS_NAMES

DEFAULT_WEIGHTS = os.environ.get("GALAXYVIT_VITBASE_WEIGHTS", "google/vit-base-patch16-224")


class ViTBaseClassifier(nn.Module):
    """Wraps ViTForImageClassification so that forward(images) returns logits, like the other families."""

    def __init__(self, hf_model: ViTForImageClassification):
        super().__init__()
        self.hf = hf_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.hf(pixel_values=images).logits

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        self.hf.save_pretrained(directory)


def replace_classifier(model: ViTForImageClassification, num_classes: int) -> None:
    """New Linear(hidden, num_classes) head; the config follows so that save/load round-trips."""
    model.classifier = nn.Linear(model.config.hidden_size, num_classes)
    model.config.num_labels = num_classes
    model.config.id2label = dict(enumerate(CLASS_NAMES[:num_classes]))
    model.config.label2id = {name: i for i, name in model.config.id2label.items()}


def build_vitbase(
    *,
    num_classes: int = len(CLASS_NAMES),
    fine_tune: bool = True,
    weights: str | os.PathLike = DEFAULT_WEIGHTS,
    pretrained: bool = True,
    config: ViTConfig | None = None,
) -> ViTBaseClassifier:
    """Load (or, with pretrained=False, initialise) ViT-Base; `fine_tune=False` trains only the classifier."""
    if pretrained:
        hf_model = ViTForImageClassification.from_pretrained(str(weights))
    else:
        hf_model = ViTForImageClassification(config or ViTConfig())
    if hf_model.config.num_labels != num_classes or hf_model.classifier.out_features != num_classes:
        replace_classifier(hf_model, num_classes)
    for name, param in hf_model.named_parameters():
        param.requires_grad = fine_tune or name.startswith("classifier.")
    return ViTBaseClassifier(hf_model)
