"""The main job in one command, on built-in synthetic galaxies:

  1. if no model is registered yet (BentoML model galaxyvit-NAME): generate synthetic galaxies,
     train a small run on them (`galaxyvit train`), export it to verified ONNX (`galaxyvit export`);
  2. start the service on a free port of 127.0.0.1 (as `galaxyvit serve` does), wait until /readyz answers and
     print the address of its web page (/ui);
  3. classify the three real GZ2 cutouts of data/gz2_real_samples and a synthetic
     galaxy over HTTP, averaged over their 8 rotated/flipped views (tta=8), and print the calibrated
     answers with their spread and not-a-galaxy flag next to the known classes;
  4. write the attention map of each real cutout (POST /explain?format=png) and print the paths;
  5. classify the synthetic test split as a catalogue into a Parquet table (`galaxyvit classify`);
  6. stop the service (unless --keep-serving).

Every step is an ordinary `galaxyvit` command, printed before it runs, so it can be repeated by hand.
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from pathlib import Path

from galaxyvit.classes import CLASS_NAMES
from galaxyvit.paths import REAL_SAMPLE_IMAGES, REAL_SAMPLE_LABELS
from galaxyvit.store import is_registered, tag
from serving.client import classify, explain_png
from serving.process import ServerNotReady, ServerProcess

ROOT = Path(__file__).resolve().parents[1]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", default="linformer-010522", help="study run to train when no model exists yet")
    parser.add_argument("--name", default="demo", help="model name to export/serve (BentoML model galaxyvit-NAME)")
    parser.add_argument("--n", type=int, default=1500, help="synthetic images to generate (all splits; default 1500)")
    parser.add_argument("--epochs", type=int, default=4, help="training epochs for the demo run (default 4)")
    parser.add_argument("--dataset", type=Path, default=Path("data/demo-synthetic"), help="synthetic dataset folder")
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="training output folder")
    parser.add_argument("--port", type=int, default=None, help="service port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--retrain", action="store_true", help="train and export again even if the model exists")
    parser.add_argument("--keep-serving", action="store_true", help="leave the service running at the end")
    parser.add_argument("--ready-timeout", type=float, default=300, help="seconds to wait for /readyz (300)")


def galaxyvit(*args: str) -> None:
    """Run a galaxyvit subcommand in a child process; stop the demo if it fails."""
    command = [sys.executable, "-m", "app", *args]
    print(f"\n$ galaxyvit {' '.join(args)}", flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"demo: `galaxyvit {' '.join(args)}` failed with exit code {result.returncode}")


def sample_images(dataset: Path) -> list[tuple[Path, int]]:
    """The three real GZ2 cutouts the repository carries and the first synthetic test galaxy, with known labels."""
    samples = [(REAL_SAMPLE_IMAGES / name, label) for name, label in REAL_SAMPLE_LABELS.items()]
    missing = [str(path) for path, _ in samples if not path.is_file()]
    if missing:
        raise SystemExit(f"demo: the real GZ2 samples are missing: {', '.join(missing)} (a partial checkout?)")
    with open(dataset / "gz2_test.csv") as f:
        first = next(csv.DictReader(f))
    samples.append((dataset / "images" / f"{first['galaxyID']}.jpg", int(first["label1"])))
    return samples


def print_predictions(samples: list[tuple[Path, int]], predictions: list[dict]) -> None:
    """One line per image: known and predicted class, the mean probability over the 8 views with its spread
    (std across views), whether it is calibrated, and the not-a-galaxy flag (galaxy? yes/no; - without a rule)."""
    print(f"{'image':<34} {'known class':<24} {'predicted':<24} {'p':>5} {'spread':>7} {'galaxy?':>7}")
    for (path, label), pred in zip(samples, predictions, strict=True):
        p = max(pred["probabilities"].values())
        source = "real GZ2 " if path.parent == REAL_SAMPLE_IMAGES else "synthetic "
        flag = {True: "yes", False: "no", None: "-"}[pred["in_distribution"]]
        print(f"{source + path.name:<34} {CLASS_NAMES[label]:<24} {pred['class_name']:<24} {p:5.2f} "
              f"±{pred['spread']:5.3f} {flag:>7}")  # fmt: skip
    calibrated = all(pred["calibrated"] for pred in predictions)
    print(f"p: {'calibrated' if calibrated else 'uncalibrated'} probability, mean of 8 rotated/flipped views")


def main(args: argparse.Namespace) -> int:
    started = time.monotonic()
    dataset, out = (ROOT / args.dataset).resolve(), (ROOT / args.out).resolve()
    if args.retrain or not is_registered(args.name):
        galaxyvit(
            "train", args.run, "--data", "synthetic", "--synth-n", str(args.n), "--dataset", str(dataset),
            "--epochs", str(args.epochs), "--out", str(out),
        )  # fmt: skip
        galaxyvit("export", str(out / "best.pt"), "--name", args.name, "--valid-data", str(dataset))
    else:
        print(f"model {tag(args.name)} is registered: skipping training (--retrain to redo it)")
        if not (dataset / "gz2_test.csv").is_file():
            galaxyvit("synth", "--n", str(args.n), "--out", str(dataset))

    # 4 images x 8 views in one request: max_images counts views (at most max_batch_size, 32 by default)
    settings = {"models": args.name, "max_images": 32}
    server = ServerProcess(settings, port=args.port, log=out / "serve.log", ready_timeout=args.ready_timeout)
    command = f"GALAXYVIT_MAX_IMAGES=32 galaxyvit serve --port {server.port} --models {args.name}"
    print(f"\n$ {command}   (log: {server.log})", flush=True)
    keep = False
    try:
        try:
            server.start()
        except ServerNotReady as exc:
            raise SystemExit(f"demo: {exc}") from None
        print(f"web page: {server.url}/ui  (drop cutouts on it while the service runs; --keep-serving keeps it up)")
        samples = sample_images(dataset)
        predictions = classify(server.url, [path for path, _ in samples], args.name, tta=8)
        print(f"\nPredictions of {tag(args.name)} over HTTP ({server.url}/classify, tta=8):")
        print_predictions(samples, predictions)
        maps = out / "attention"
        maps.mkdir(parents=True, exist_ok=True)
        print(f"\nAttention maps ({server.url}/explain?format=png):")
        for path in [path for path, _ in samples if path.parent == REAL_SAMPLE_IMAGES]:
            target = maps / f"{path.stem}.png"
            target.write_bytes(explain_png(server.url, path, args.name))
            print(f"attention map of {path.name}: {target}")
        print(
            "\nThe demo model saw only synthetic galaxies for a few epochs: expect it to get most real GZ2 cutouts\n"
            "wrong. Train on the GZ2 images (`galaxyvit train RUN --data gz2 ...`) for the study's accuracy."
        )
        from catalog import classify_catalogue

        split, table = dataset / "gz2_test.csv", out / "catalogue"
        print(f"\n$ galaxyvit classify {split} --id-col galaxyID --path-template 'images/{{galaxyID}}.jpg' "
              f"--model {args.name} --out {table} --force")  # fmt: skip
        summary = classify_catalogue([split], table, model=args.name, id_col="galaxyID",
                                     path_template="images/{galaxyID}.jpg", force=True, progress=False)  # fmt: skip
        print(f"{summary.line()}\npredictions of the synthetic test split: {table}")
        print(f"demo finished in {time.monotonic() - started:.0f} s")
        if args.keep_serving:
            print(
                f"the service keeps running at {server.url}, web page {server.url}/ui (pid {server.pid}); "
                f"stop it with: kill -TERM -{server.pid}"
            )
            keep = True
    finally:
        if not keep:
            server.stop()
    return 0
