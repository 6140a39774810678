"""Randomly initialised models of the three families, exported and registered for load tests.

Speed does not depend on the weights, so a load test needs no trained checkpoint: each model is
built at its study run's size (or tiny, for tests), saved as best.pt and exported by
training.export.export_checkpoint exactly as `galaxyvit export` does, which registers it in the
BentoML model store (BENTOML_HOME) as `galaxyvit-<name>`.

  python -m load_tests.models --out /tmp/lt --home /tmp/lt/bentoml_home     # vit, linformer, vitbase
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# name -> (run id whose architecture is used, tiny overrides for tests)
FAMILIES: dict[str, tuple[str, dict]] = {
    "vit": ("vit-110421", dict(depth=2, dim=32, mlp_dim=64, heads=2)),
    "linformer": ("linformer-010522B", dict(depth=1, dim=32, heads=2, k=16)),
    "vitbase": ("vitbase-010822B", {}),
}
TINY_VITBASE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, patch_size=32)


def export_random(name: str, out_root: Path, home: Path, tiny: bool = False, seed: int = 0) -> Path:
    """Build family `name` with random weights, export its fp32 ONNX into out_root/<name> and register it in `home`."""
    import torch
    from transformers import ViTConfig

    from training.checkpoint import save_model
    from training.export import export_checkpoint
    from training.models import build_model
    from training.registry import get_run
    from training.vitbase import build_vitbase

    if name not in FAMILIES:
        raise ValueError(f"unknown family {name!r}; choose from {', '.join(FAMILIES)}")
    run_id, tiny_overrides = FAMILIES[name]
    run = get_run(run_id)
    torch.manual_seed(seed)
    if run.family == "vitbase":
        # the real ViT-Base size is ViTConfig()'s default (86M parameters, patch 16)
        config = ViTConfig(**TINY_VITBASE) if tiny else ViTConfig()
        model = build_vitbase(pretrained=False, config=config)
    else:
        run = run.with_overrides(**tiny_overrides) if tiny else run
        model = build_model(run, pretrained=False)
    checkpoint = Path(out_root) / "checkpoints" / name / "best.pt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    save_model(checkpoint, model.eval(), run, epoch=0, valid_acc=0.0)  # untrained
    previous = os.environ.get("BENTOML_HOME")
    os.environ["BENTOML_HOME"] = str(home)
    try:
        export_checkpoint(checkpoint, out_root=Path(out_root) / "models", name=name, quiet=True, max_valid=0)
    finally:
        if previous is None:
            os.environ.pop("BENTOML_HOME", None)
        else:
            os.environ["BENTOML_HOME"] = previous
    return Path(out_root) / "models" / name


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints/ and models/")
    parser.add_argument("--home", type=Path, required=True, help="BENTOML_HOME to register the models in")
    parser.add_argument("--families", default=",".join(FAMILIES), help="comma-separated: vit, linformer, vitbase")
    parser.add_argument("--tiny", action="store_true", help="tiny models (tests), not the study sizes")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    for name in [n.strip() for n in args.families.split(",") if n.strip()]:
        print(f"exporting {name} -> {export_random(name, args.out, args.home, tiny=args.tiny)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
