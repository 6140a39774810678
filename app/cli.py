"""`galaxyvit` command line. Each subcommand lives in its own module, imported only when used,
so `galaxyvit runs` or `galaxyvit serve` never pay for torch when they do not need it.

A subcommand module defines `configure(parser)` (adds its arguments) and `main(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "runs": ("training.runs_cli", "list the study's runs with hyperparameters, parameter counts and reported accuracy"),
    "synth": ("training.synthetic", "write a synthetic dataset of the 8 galaxy classes in the GZ2 layout"),
    "train": ("training.train", "train a study run by id on synthetic, GZ2 or folder data"),
    "pretrain": ("training.pretrain", "self-supervised (SimCLR) pre-training of a run's encoder on unlabelled cutouts"),
    "prepare": ("training.prepared", "decode the centre crops of a dataset once into checksummed uint8 arrays"),
    "reproduce": (
        "training.reproduce",
        "queue study runs (resumable, several at once), then tabulate them against the study",
    ),
    "evaluate": ("training.evaluate", "evaluate a checkpoint on a test split"),
    "export": ("training.export", "export a checkpoint (or the best of a results dir) to verified ONNX"),
    "serve": ("serving.cli", "start the BentoML HTTP service for the exported models"),
    "loadtest": ("load_tests.sweep", "run a Locust load-test sweep against the service and write a report"),
    "explain": ("training.explain", "attention maps of a checkpoint for galaxy images: overlay PNGs and raw .npy maps"),
    "classify": ("catalog.cli", "classify a catalogue or folders of cutouts into a sharded Parquet table"),
    "similar": ("catalog.similar_cli", "find the galaxies of a classified catalogue most like one, or the oddest"),
    "demo": ("app.demo", "the main job: synthesise, train, export, serve and classify sample images"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="galaxyvit",
        description="Galaxy morphology classification with vision transformers: reproduce the study's runs, "
        "export to ONNX and serve over HTTP. Run `galaxyvit COMMAND --help` for a command's options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in SUBCOMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] not in SUBCOMMANDS:
        parser.parse_args(argv)  # prints help or the "invalid choice" error
        parser.print_help()
        return 2
    name = argv[0]
    module_name, help_text = SUBCOMMANDS[name]
    module = importlib.import_module(module_name)
    sub_parser = argparse.ArgumentParser(
        prog=f"galaxyvit {name}",
        description=(module.__doc__ or help_text).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    module.configure(sub_parser)
    args = sub_parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `galaxyvit runs | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
