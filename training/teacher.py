"""The teacher of a distillation run: a checkpoint (best.pt of any family, e.g. a resnet50 or vitbase run) run in
torch, or an exported ONNX model (a file with its `<variant>.card.json` beside it, or a model folder: fp32) run
in ONNX Runtime; either way without gradients, in eval mode.

The teacher sees the student's augmented batch: the student's normalisation is undone and the teacher's applied,
and the batch is resized when the teacher takes another size of the same crop. Its logits are not cached: the
augmentation of an image differs every epoch (training/transforms.py), so a cache would never be hit exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from galaxyvit.card import load_verified
from galaxyvit.preprocess import Preprocessing
from training.checkpoint import model_from_checkpoint


class Teacher:
    """Call with the student's (B, 3, H, W) batch; returns the teacher's (B, C) logits on the same device."""

    def __init__(self, source: str | Path, student: Preprocessing, device: torch.device, num_classes: int):
        source = Path(source)
        self.device, self.student = device, student
        self.session = None
        self.model: torch.nn.Module | None = None
        if source.suffix == ".onnx" or source.is_dir():
            import onnxruntime as ort

            onnx_path, card = load_verified(*((source, "fp32") if source.is_dir() else (source.parent, source.stem)))
            self.session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            self.prep, self.names = card.prep, (card.input_name, card.output_name)
            classes, self.description = len(card.class_names), f"{card.family} ONNX {onnx_path}"
        else:
            model, data = model_from_checkpoint(source)
            self.model = model.to(device).eval()
            self.prep = Preprocessing.from_dict(data["preprocessing"])
            classes, self.description = len(data["class_names"]), f"{data['run']['id']} checkpoint {source}"
        if classes != num_classes:
            raise ValueError(f"teacher {source} has {classes} classes, the data {num_classes}")
        if self.prep.crop != student.crop:
            raise ValueError(
                f"teacher {source} sees a {self.prep.crop}-pixel crop at {self.prep.size} pixels, the student a "
                f"{student.crop}-pixel crop at {student.size}: they must see the same part of the sky"
            )
        # the student's normalised values -> the teacher's: x_t = x_s * scale + shift, per channel
        s_mean, s_std = torch.tensor(student.mean), torch.tensor(student.std)
        t_mean, t_std = torch.tensor(self.prep.mean), torch.tensor(self.prep.std)
        self.scale = (s_std / t_std).view(1, 3, 1, 1).to(device)
        self.shift = ((s_mean - t_mean) / t_std).view(1, 3, 1, 1).to(device)

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """The student's batch as the teacher's preprocessing would have made it."""
        x = images.float() * self.scale + self.shift
        if self.prep.size != x.shape[-1]:
            x = F.interpolate(x, size=(self.prep.size, self.prep.size), mode="bilinear", antialias=True)
        return x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = self.inputs(images)
        if self.model is not None:
            return self.model(x).float()
        assert self.session is not None
        (logits,) = self.session.run([self.names[1]], {self.names[0]: np.ascontiguousarray(x.cpu().numpy())})
        return torch.from_numpy(logits.astype(np.float32)).to(images.device)
