"""Rebuild a training checkpoint of a Linformer run from its exported fp32.onnx, to train it further.

  python scripts/onnx_to_checkpoint.py data/builtin_model/synthetic-linformer/fp32.onnx \\
      --run linformer-010522 --epoch 15 --valid-acc 0.742 --out runs/nb-cont
  galaxyvit train linformer-010522 --data gz2 --dataset data/synth-u4000-0 --epochs 40 --resume --out runs/nb-cont

The export (training/onnx_graph.py) keeps the parameter names under `module.` but stores the patch embedding
as a Conv2d, the Linformer sequence projections transposed (`proj_k_t`) and every Linear weight transposed as an
anonymous MatMul initializer; the MatMul node names (`.../to_q/MatMul`) say which Linear each one is. The rebuilt
model's logits are checked against ONNX Runtime's. Writes best.pt (what export reads) and last.pt for `--resume`:
the model, a fresh Adam (its moments are not in the ONNX file), the StepLR schedule as after `--epoch` epochs, and
one history row (the given validation accuracy; the training columns are unknown, 0).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from galaxyvit.classes import CLASS_NAMES  # noqa: E402
from training.checkpoint import save_model  # noqa: E402
from training.distributed import Processes  # noqa: E402
from training.epoch import Learner  # noqa: E402
from training.models import build_model  # noqa: E402
from training.registry import Run, get_run  # noqa: E402
from training.resume import save_last, seed_everything  # noqa: E402
from training.run_log import EpochRecord  # noqa: E402


def state_dict_from_onnx(path: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state_dict filled from the ONNX initializers; KeyError if a tensor has no source."""
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    linear = {}  # "transformer.net.layers.0.0.fn.to_q.weight" -> W^T initializer of its MatMul
    for node in graph.node:
        if node.op_type == "MatMul" and node.name.endswith("/MatMul"):
            weight = [name for name in node.input if name.startswith("onnx::MatMul")]
            if weight:
                module = node.name.removeprefix("/module/").removesuffix("/MatMul").replace("/", ".")
                linear[f"{module}.weight"] = inits[weight[0]].T
    state = {}
    for key, target in model.state_dict().items():
        if key in linear:
            value = linear[key]
        elif key.endswith(("proj_k", "proj_v")):
            value = inits[f"module.{key}_t"].T
        elif key.startswith("to_patch_embedding."):  # Linear over (p1, p2, c) <- Conv2d (dim, c, p1, p2)
            conv = inits[f"module.to_patch_embedding.conv.{key.rsplit('.', 1)[1]}"]
            value = conv.transpose(0, 2, 3, 1).reshape(conv.shape[0], -1) if conv.ndim == 4 else conv
        else:
            value = inits[f"module.{key}"]
        if tuple(value.shape) != tuple(target.shape):
            raise ValueError(f"{key}: ONNX gives {value.shape}, the model has {tuple(target.shape)}")
        state[key] = torch.from_numpy(np.array(value, copy=True)).to(target.dtype)
    return state


def check_logits(path: Path, model: torch.nn.Module, size: int, n: int = 6) -> float:
    """Largest |torch logit - ONNX Runtime logit| over n random normalised images."""
    images = np.random.default_rng(0).normal(size=(n, 3, size, size)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {session.get_inputs()[0].name: images})[0]
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(images)).numpy()
    return float(np.abs(torch_logits - onnx_logits).max())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("onnx", type=Path, help="an exported fp32.onnx of a linformer run")
    parser.add_argument("--run", required=True, help="its run id, e.g. linformer-010522")
    parser.add_argument("--epoch", type=int, required=True, help="epochs it was trained")
    parser.add_argument("--valid-acc", type=float, required=True, help="its validation accuracy (0-1)")
    parser.add_argument("--dataset", default="data/synth-u4000-0", help="the dataset it was trained on (for last.pt)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    run: Run = get_run(args.run).with_overrides(epochs=args.epoch)
    seed_everything(0)
    model = build_model(run, num_classes=len(CLASS_NAMES))
    model.load_state_dict(state_dict_from_onnx(args.onnx, model))
    diff = check_logits(args.onnx, model, run.image_size)
    print(f"rebuilt {run.id} from {args.onnx}: max |logit difference| vs ONNX Runtime {diff:.2e}")
    if diff > 1e-4:
        print("error: the rebuilt model does not compute the ONNX model's logits", file=sys.stderr)
        return 1

    args.out.mkdir(parents=True, exist_ok=True)
    save_model(args.out / "best.pt", model, run, epoch=args.epoch, valid_acc=args.valid_acc, class_names=CLASS_NAMES)
    optimizer = torch.optim.Adam(model.parameters(), lr=run.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=run.step_size, gamma=run.gamma)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": on purpose
        warnings.simplefilter("ignore")
        for _ in range(args.epoch - 1):
            scheduler.step()
        lr = optimizer.param_groups[0]["lr"]  # the rate of the last epoch trained, for its history row
        scheduler.step()
    learner = Learner(model, model, optimizer, scheduler, torch.amp.GradScaler("cpu", enabled=False))
    record = EpochRecord(args.epoch, lr, 0.0, 0.0, 0.0, args.valid_acc, 0, 0.0, 0.0)
    progress = {"epoch": args.epoch, "step": 0, "best_acc": args.valid_acc, "best_epoch": args.epoch, "stale": 0,
                "history": [record.__dict__]}  # fmt: skip
    data = {"kind": "gz2", "dataset": args.dataset}
    about = {"run": run.to_dict(), "data": data, "seed": 0, "precision": "fp32"}
    save_last(args.out / "last.pt", learner, progress, [0.0, 0.0, 0.0], Processes(), about=about)
    print(f"wrote {args.out / 'best.pt'} and {args.out / 'last.pt'} (lr now {optimizer.param_groups[0]['lr']:.3g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
