"""The model families, one entry each: how to build a run's model, rebuild it from a checkpoint,
which preprocessing it takes, and how `galaxyvit runs` describes its architecture.

Adding a family means adding one `Family` here (and its normalisation to
`galaxyvit.preprocess.NORMALISATION`, which the torch-free core owns). Builders import torch and
the model code only when called, so listing runs stays cheap.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from galaxyvit.preprocess import Preprocessing, preprocessing_for

if TYPE_CHECKING:
    from torch import nn

    from training.registry import Run


@dataclass(frozen=True)
class Family:
    name: str
    build: Callable[[Run, int, bool, str | None], nn.Module]  # (run, num_classes, pretrained, weights)
    rebuild: Callable[[Run, dict], nn.Module]  # (run, checkpoint dict): the architecture of a saved model
    architecture: Callable[[Run], str]  # the `galaxyvit runs` table's architecture column

    def preprocessing(self, run: Run) -> Preprocessing:
        prep = preprocessing_for(self.name, run.image_size)
        return replace(prep, crop=run.crop) if run.crop else prep  # a larger crop resized to image_size


def _build_vit(run: Run, num_classes: int, pretrained: bool, weights: str | None) -> nn.Module:
    from training.distill import build_distillable
    from training.vit import build_vit

    if run.distill_token:
        return build_distillable(run, num_classes)
    return build_vit(
        image_size=run.image_size,
        patch_size=_int(run, "patch_size"),
        num_classes=num_classes,
        dim=_int(run, "dim"),
        depth=_int(run, "depth"),
        heads=_int(run, "heads"),
        mlp_dim=_int(run, "mlp_dim"),
        dropout=run.dropout or 0.0,
        emb_dropout=run.emb_dropout or 0.0,
    )


def _build_linformer(run: Run, num_classes: int, pretrained: bool, weights: str | None) -> nn.Module:
    from training.distill import build_distillable
    from training.linformer_vit import build_linformer_vit

    if run.distill_token:
        return build_distillable(run, num_classes)
    return build_linformer_vit(
        image_size=run.image_size,
        patch_size=_int(run, "patch_size"),
        num_classes=num_classes,
        dim=_int(run, "dim"),
        depth=_int(run, "depth"),
        heads=_int(run, "heads"),
        k=_int(run, "k"),
        shared_kv=bool(run.shared_kv),
        dropout=run.dropout or 0.0,
    )


def _build_vitbase(run: Run, num_classes: int, pretrained: bool, weights: str | None) -> nn.Module:
    from training.vitbase import DEFAULT_WEIGHTS, build_vitbase

    return build_vitbase(
        num_classes=num_classes,
        fine_tune=run.fine_tune is not False,
        weights=weights or DEFAULT_WEIGHTS,
        pretrained=pretrained,
    )


def _build_resnet50(run: Run, num_classes: int, pretrained: bool, weights: str | None) -> nn.Module:
    from training.resnet import resnet50

    return resnet50(num_classes=num_classes, width=run.dim or 64)


def _rebuild_scratch(run: Run, checkpoint: dict) -> nn.Module:
    """vit / linformer / resnet50: the run's architecture with as many outputs as the checkpoint has classes."""
    from galaxyvit.classes import CLASS_NAMES

    return FAMILIES[run.family].build(run, len(checkpoint.get("class_names", CLASS_NAMES)), False, None)


def _rebuild_vitbase(run: Run, checkpoint: dict) -> nn.Module:
    """ViT-Base: the Hugging Face config saved in the checkpoint, no download."""
    from transformers import ViTConfig

    from training.vitbase import build_vitbase

    config = ViTConfig.from_dict(json.loads(checkpoint["hf_config"]))
    num_classes = config.num_labels or len(checkpoint["class_names"])
    return build_vitbase(num_classes=num_classes, fine_tune=run.fine_tune is not False, pretrained=False, config=config)


def _int(run: Run, name: str) -> int:
    """An architecture field the family needs; a clear error when the run leaves it out."""
    value = getattr(run, name)
    if value is None:
        raise ValueError(f"run {run.id!r}: family {run.family!r} needs {name}")
    return int(value)


def _vit_architecture(run: Run) -> str:
    return f"p{run.patch_size} d{run.depth} dim{run.dim} mlp{run.mlp_dim} h{run.heads}"


def _linformer_architecture(run: Run) -> str:
    kv = "shared" if run.shared_kv else "separate"
    return f"p{run.patch_size} d{run.depth} dim{run.dim} k{run.k} h{run.heads} kv:{kv}"


def _resnet50_architecture(run: Run) -> str:
    return f"ResNet-50 width {run.dim or 64}"


def _vitbase_architecture(run: Run) -> str:
    return "fine-tuned" if run.fine_tune else "frozen backbone"


FAMILIES: dict[str, Family] = {
    "vit": Family("vit", _build_vit, _rebuild_scratch, _vit_architecture),
    "linformer": Family("linformer", _build_linformer, _rebuild_scratch, _linformer_architecture),
    "vitbase": Family("vitbase", _build_vitbase, _rebuild_vitbase, _vitbase_architecture),
    "resnet50": Family("resnet50", _build_resnet50, _rebuild_scratch, _resnet50_architecture),
}


def family(name: str) -> Family:
    """The family called `name`; a clear error lists the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r}: choose one of {', '.join(FAMILIES)}")
    return FAMILIES[name]
