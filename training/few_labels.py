"""The `galaxyvit train` options for learning from few labels: a teacher to distil from (training/distill.py,
training/teacher.py) and a pre-trained encoder to start from (training/pretrain.py). train() asks this
object for the student's run, the initial weights, the training forward and the loss; without either option
each of them is the plain run's."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch
from torch import nn

from galaxyvit.preprocess import Preprocessing
from training.distill import DISTILL_MODES, DistillationLoss, DistillNet, distillation_params
from training.distributed import GlobalWeightedLoss
from training.registry import Run


@dataclass(frozen=True)
class FewLabels:
    teacher: str | None = None  # a checkpoint (best.pt) or an exported ONNX model to distil from
    distill: str = "hard"  # hard (teacher's argmax) or soft (tau-softened KL)
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha for the class loss
    tau: float = 3.0  # temperature of soft distillation
    init: str | None = None  # pretrained.pt of `galaxyvit pretrain`
    freeze: bool = False  # with init: train only the new head (a linear probe)

    def student(self, run: Run) -> Run:
        """The run to build: with a distillation token when there is a teacher."""
        return run.with_overrides(distill_token=True) if self.teacher else run

    def initialise(self, model: nn.Module) -> nn.Module:
        if self.freeze and not self.init:
            raise ValueError("--freeze needs --init (a pre-trained encoder to keep fixed)")
        if self.init:
            from training.pretrain import load_pretrained

            new = load_pretrained(model, self.init, self.freeze)
            trained = "only " + ", ".join(new) if self.freeze else "all layers"
            print(f"initialised from {self.init}; new: {', '.join(new)}; training {trained}", file=sys.stderr)
        return model

    def net(self, run: Run, model: nn.Module, device: torch.device, prep: Preprocessing, classes: int) -> nn.Module:
        """The training forward: the model, or the student with its teacher."""
        if not self.teacher:
            return model
        from training.teacher import Teacher

        teacher = Teacher(self.teacher, prep, device, classes)
        plain, student = distillation_params(run, classes)
        print(
            f"distilling ({self.distill}, alpha {self.alpha}, tau {self.tau}) from {teacher.description}: "
            f"student {plain:,} parameters of {run.id} + distillation token and head = {student:,} "
            f"(+{student - plain:,})",
            file=sys.stderr,
        )
        return DistillNet(model, teacher)  # type: ignore[arg-type]

    def loss(self, class_loss: GlobalWeightedLoss) -> GlobalWeightedLoss | DistillationLoss:
        if not self.teacher:
            return class_loss
        return DistillationLoss(class_loss, self.distill, self.alpha, self.tau)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> FewLabels:
        return cls(args.teacher, args.distill, args.alpha, args.tau, args.init, args.freeze)


def add_few_label_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("few labels (docs/few-labels.md)")
    g.add_argument("--teacher", help="distil from this checkpoint (best.pt) or exported ONNX model (vit/linformer)")
    g.add_argument("--distill", choices=DISTILL_MODES, default="hard", help="hard or soft distillation (hard)")
    g.add_argument("--alpha", type=float, default=0.5, help="weight of the distillation loss (0.5)")
    g.add_argument("--tau", type=float, default=3.0, help="temperature of soft distillation (3.0)")
    g.add_argument("--init", help="start from a pre-trained encoder (pretrained.pt of `galaxyvit pretrain`)")
    g.add_argument("--freeze", action="store_true", help="with --init: train only the new head (linear probe)")
