"""Knowledge distillation with a distillation token (DeiT, Touvron et al. 2021), in the 2021 vit-pytorch layout.

`DistillableViT` is the run's ViT / Linformer-ViT plus one learned token (`distillation_token`, appended after
the patches without a position embedding, as vit-pytorch's `DistillableViT`) and one head (`distill_mlp`,
LayerNorm + Linear, as vit-pytorch's `DistillWrapper`): the run's parameter count plus dim + 2 dim + dim x C + C.
The Linformer's key/value projections are sized for the sequence, so a Linformer student also has one more row
in each (k more parameters per projection and layer); `distillation_params` counts the difference exactly.

Training (`galaxyvit train RUN --teacher CHECKPOINT_OR_ONNX`): `DistillNet` returns the class logits, the
distillation logits and the teacher's logits of the same augmented batch (training/teacher.py, no gradients);
`DistillationLoss` is (1 - alpha) x the run's weighted cross-entropy on the class head + alpha x the
distillation term on the distillation head: hard = cross-entropy with the teacher's argmax (DeiT's choice),
soft = tau^2 KL(softmax(teacher / tau) || softmax(student / tau)), batch mean. At inference (eval mode and
every exported ONNX) the forward is the mean of the two heads' logits, so export, serving and the catalogue
take a distilled student like any other model: same input, same (N, C) logits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.distributed import GlobalWeightedLoss
from training.registry import Run
from training.vit import Transformer, ViT

DISTILL_MODES = ("hard", "soft")


class DistillableViT(ViT):
    """ViT with a distillation token and head; forward() averages the class and distillation heads."""

    def __init__(self, *, num_classes: int, dim: int, **vit_args: Any):
        super().__init__(num_classes=num_classes, dim=dim, **vit_args)
        self.distillation_token = nn.Parameter(torch.randn(1, 1, dim))
        self.distill_mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    def forward_heads(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-head logits, distillation-head logits)."""
        x = self.to_patch_embedding(images)
        b = x.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1) + self.pos_embedding
        x = torch.cat((x, self.distillation_token.expand(b, -1, -1)), dim=1)
        x = self.transformer(self.dropout(x))
        return self.mlp_head(x[:, 0]), self.distill_mlp(x[:, -1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        cls_logits, distill_logits = self.forward_heads(images)
        return (cls_logits + distill_logits) / 2


def build_distillable(run: Run, num_classes: int) -> DistillableViT:
    """The run's vit / linformer architecture with a distillation token and head."""
    if None in (run.patch_size, run.dim, run.depth, run.heads):
        raise ValueError(f"run {run.id!r}: a distillation student needs patch_size, dim, depth and heads")
    assert run.patch_size and run.dim and run.depth and run.heads  # for mypy
    transformer: nn.Module
    if run.family == "vit":
        if run.mlp_dim is None:
            raise ValueError(f"run {run.id!r}: family vit needs mlp_dim")
        transformer = Transformer(run.dim, run.depth, run.heads, 64, run.mlp_dim, run.dropout or 0.0)
        emb_dropout = run.emb_dropout or 0.0
    elif run.family == "linformer":
        from linformer import Linformer

        seq_len = (run.image_size // run.patch_size) ** 2 + 2  # patches + cls + distillation token
        transformer = Linformer(
            dim=run.dim,
            seq_len=seq_len,
            depth=run.depth,
            heads=run.heads,
            k=int(run.k or 0),
            share_kv=bool(run.shared_kv),
            dropout=run.dropout or 0.0,
        )
        emb_dropout = 0.0  # 2021 efficient.ViT: none
    else:
        raise ValueError(f"only vit and linformer runs take a distillation token, not family {run.family!r}")
    return DistillableViT(
        image_size=run.image_size,
        patch_size=run.patch_size,
        num_classes=num_classes,
        dim=run.dim,
        transformer=transformer,
        emb_dropout=emb_dropout,
    )


def distillation_params(run: Run, num_classes: int) -> tuple[int, int]:
    """(parameters of the run's model, of its distillable student), counted on the meta device."""
    from training.models import build_model, count_trainable_params

    with torch.device("meta"):
        plain = count_trainable_params(build_model(run.with_overrides(distill_token=False), num_classes=num_classes))
        student = count_trainable_params(build_distillable(run, num_classes))
    return plain, student


def distillation_term(student: torch.Tensor, teacher: torch.Tensor, mode: str, tau: float) -> torch.Tensor:
    """The distillation head's loss against the teacher's logits (batch mean)."""
    if mode == "hard":
        return F.cross_entropy(student.float(), teacher.argmax(dim=-1))
    if mode == "soft":
        log_p = F.log_softmax(student.float() / tau, dim=-1)
        q = F.softmax(teacher.float() / tau, dim=-1)
        return F.kl_div(log_p, q, reduction="batchmean") * tau**2
    raise ValueError(f"unknown distillation {mode!r}: choose one of {', '.join(DISTILL_MODES)}")


class DistillationLoss:
    """(1 - alpha) x the run's class loss (GlobalWeightedLoss) + alpha x the distillation term.

    Called like GlobalWeightedLoss with (class logits, distillation logits, teacher logits) for the logits;
    returns (the loss to backpropagate, this process's share of the epoch's loss sum)."""

    def __init__(self, class_loss: GlobalWeightedLoss, mode: str = "hard", alpha: float = 0.5, tau: float = 3.0):
        if mode not in DISTILL_MODES:
            raise ValueError(f"unknown distillation {mode!r}: choose one of {', '.join(DISTILL_MODES)}")
        if not 0.0 <= alpha <= 1.0 or tau <= 0:
            raise ValueError(f"--alpha must be in [0, 1] and --tau positive, not {alpha} and {tau}")
        self.class_loss, self.mode, self.alpha, self.tau = class_loss, mode, alpha, tau

    def __call__(
        self, outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor], labels: torch.Tensor
    ) -> tuple[torch.Tensor, float]:
        cls_logits, distill_logits, teacher_logits = outputs
        class_loss, class_share = self.class_loss(cls_logits, labels)
        distill = distillation_term(distill_logits, teacher_logits, self.mode, self.tau)
        loss = (1 - self.alpha) * class_loss + self.alpha * distill
        return loss, (1 - self.alpha) * class_share + self.alpha * distill.item() * len(labels)


class DistillNet(nn.Module):
    """The training forward of a distillation run: (class logits, distillation logits, teacher logits).

    The teacher is kept out of the module tree (no parameters in the optimiser, last.pt or DDP), in eval mode."""

    def __init__(self, student: DistillableViT, teacher: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.student = student
        self.teacher = [teacher]  # a list: not a submodule

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cls_logits, distill_logits = self.student.forward_heads(images)
        return cls_logits, distill_logits, self.teacher[0](images)


def merged_logits(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The logits a training step scores its accuracy with: the model's, or the mean of the two student heads."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    return (outputs[0] + outputs[1]) / 2
