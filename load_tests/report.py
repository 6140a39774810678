"""The load test report: results.json, a markdown table (results.md) and a PNG plot (loadtest.png)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class Point:
    """One model at one concurrency, measured window only."""

    model: str
    family: str
    variant: str
    provider: str
    concurrency: int
    images_per_request: int
    seconds: float  # measured window
    requests: int
    failures: int
    req_s: float
    img_s: float  # successfully classified images per second
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    batches: int  # ONNX Runtime calls the service made in the window (its /metrics)
    mean_batch: float | None  # images per call in the window
    engine_busy: float | None  # fraction of the window the service's inference worker(s) spent in ONNX Runtime
    engine_batch: int | None = None  # batch size the yardstick ran right after the point: the rounded mean batch
    engine_img_s: float | None = None
    efficiency: float | None = None  # img_s / the yardstick (engine_reference)
    protocol: str = ""  # what the users posted (load_tests/locustfile.py PROTOCOLS); "" in older reports
    run: int = 1  # the repetition of this (model, protocol, concurrency) point, with --repeat
    # the yardstick right before the point, at the mean batch of the previous run of the same point (else
    # at the concurrency's images, capped by the batch limit): machine load that changed during the point
    # shows as a difference between before and after
    engine_before_batch: int | None = None
    engine_before_img_s: float | None = None
    engine_reference: float | None = None  # mean of before and after at the same batch, else after
    load_before: float | None = None  # the machine's 1-minute load average right before and after the point
    load_after: float | None = None
    failure_messages: list[str] = field(default_factory=list)
    # CPU time per served image in the window, core-ms: the service's API worker(s) (with its supervisor),
    # its inference worker(s) (ONNX Runtime and BentoML's batching), the Locust client; cores_used = all
    # of them together over the window. Only when the sweep started the service (it knows the processes).
    cpu_ms_api: float | None = None
    cpu_ms_inference: float | None = None
    cpu_ms_client: float | None = None
    cores_used: float | None = None
    # the yardstick's own CPU time per image right after the point (core-ms, all its threads): with the three
    # above, what one image costs the machine in all, and so the most images/s its cores allow
    engine_cpu_ms: float | None = None


def machine() -> dict:
    """CPU model and cores this ran on (and the GPU when ONNX Runtime used CUDA)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = {"cpu": cpu, "cores": cores, "python": platform.python_version(), "gpu": None}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
        )
        if out.returncode == 0 and out.stdout.strip():
            info["gpu"] = ", ".join(out.stdout.split("\n")).strip(", ")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(points: list[Point], info: dict, settings: dict) -> str:
    """The report: where it ran, the service settings, one table row per point, and with repeated runs the
    medians per (model, protocol, concurrency, images per request)."""
    hardware = f"{info['cpu']}, {info['cores']} cores" + (f", GPU {info['gpu']}" if info.get("gpu") else ", no GPU")
    lines = [
        "# galaxyvit load test",
        "",
        f"- machine: {hardware}; onnxruntime {info.get('onnxruntime', '?')}",
        "- settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "- img/s counts successfully classified images; latency percentiles are Locust's (ms, whole HTTP request);",
        "  protocol: what the users posted (load_tests/locustfile.py); run: the repetition of the point;",
        "  mean batch = images per ONNX Runtime call in the service (its /metrics) over the measured window;",
        "  engine img/s = the same ONNX model in-process (same provider and threads), right before the point (at the",
        "  previous run's batch) and right after it (at this point's mean batch, rounded); efficiency = service img/s",
        "  / engine img/s (the mean of before and after when both ran the same batch, else after); busy = ONNX",
        "  Runtime time of the batches that ended in the window, over the window (it can pass 100% when a batch is",
        "  long compared with the window).",
        "  CPU ms/img = CPU time per served image in the window (core-ms) of the service's API process(es),",
        "  of its inference process(es) and of the Locust client, and the engine's own per image (its run after",
        "  the point); cores = the service and client together over the window",
        "  (with --start only); load = the machine's 1-minute load average before / after the point.",
        "  `*`: p99 latency above a fifth of the window: requests straddling its ends weigh in; use a longer",
        "  --duration.",
        "",
        "| model | variant | provider | protocol | run | concurrency | img/req | req/s | img/s | p50 ms | p95 ms "
        "| p99 ms | errors | mean batch | engine img/s before / after | efficiency | busy "
        "| CPU ms/img API / inference / client / engine | cores | load |",
        "|---|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for p in points:
        efficiency = "-" if p.efficiency is None else f"{100 * p.efficiency:.0f}%"
        busy = "-" if p.engine_busy is None else f"{100 * p.engine_busy:.0f}%"
        flag = "*" if p.p99_ms is not None and p.p99_ms > 1000 * p.seconds / 5 else ""
        provider = p.provider.replace("ExecutionProvider", "")
        lines.append(
            f"| {p.model} ({p.family}) | {p.variant} | {provider} | {protocol_of(p)} | {p.run} | {p.concurrency}{flag} "
            f"| {p.images_per_request} | {p.req_s:.1f} | {p.img_s:.1f} | {_fmt(p.p50_ms, 0)} | {_fmt(p.p95_ms, 0)} "
            f"| {_fmt(p.p99_ms, 0)} | {p.failures} | {_fmt(p.mean_batch, 2)} "
            f"| {_fmt(p.engine_before_img_s)} / {_fmt(p.engine_img_s)} | {efficiency} | {busy} "
            f"| {_fmt(p.cpu_ms_api)} / {_fmt(p.cpu_ms_inference)} / {_fmt(p.cpu_ms_client)} / {_fmt(p.engine_cpu_ms)} "
            f"| {_fmt(p.cores_used, 2)} "
            f"| {_fmt(p.load_before, 2)} / {_fmt(p.load_after, 2)} |"
        )
    lines += medians(points)
    return "\n".join(lines) + "\n"


def protocol_of(point: Point) -> str:
    """The point's protocol; older reports (no protocol recorded) posted /classify/raw for 1 image, else /classify."""
    return point.protocol or ("raw" if point.images_per_request == 1 else "classify")


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def medians(points: list[Point]) -> list[str]:
    """The table of medians over the runs of each (model, protocol, concurrency, images per request)."""
    groups: dict[tuple[str, str, int, int], list[Point]] = {}
    for p in points:
        groups.setdefault((p.model, protocol_of(p), p.concurrency, p.images_per_request), []).append(p)
    if all(len(runs) == 1 for runs in groups.values()):
        return []
    lines = [
        "",
        "## Medians over the runs",
        "",
        "| model | protocol | concurrency | img/req | runs | img/s | share of engine | p50 ms | p95 ms | p99 ms "
        "| API core-ms/img | inference core-ms/img | client core-ms/img | engine core-ms/img | errors |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for (model, protocol, users, k), runs in groups.items():

        def median(key: str, runs: list[Point] = runs) -> float | None:
            return _median([getattr(p, key) for p in runs])

        share = median("efficiency")
        lines.append(
            f"| {model} | {protocol} | {users} | {k} | {len(runs)} | {_fmt(median('img_s'))} "
            f"| {'-' if share is None else f'{100 * share:.0f}%'} | {_fmt(median('p50_ms'), 0)} "
            f"| {_fmt(median('p95_ms'), 0)} | {_fmt(median('p99_ms'), 0)} | {_fmt(median('cpu_ms_api'), 2)} "
            f"| {_fmt(median('cpu_ms_inference'), 2)} | {_fmt(median('cpu_ms_client'), 2)} "
            f"| {_fmt(median('engine_cpu_ms'), 2)} | {sum(p.failures for p in runs)} |"
        )
    return lines


def plot(points: list[Point], path: Path, title: str) -> None:
    """Left: images/s vs concurrency per model (service solid, engine yardstick dotted). Right: latency vs images/s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(p: Point) -> str:  # one line per model, protocol and images per request
        name = f"{p.model} {protocol_of(p)}"
        return name if p.images_per_request == 1 else f"{name} x{p.images_per_request} img/req"

    models = list(dict.fromkeys(series(p) for p in points))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, model in enumerate(models):
        rows = sorted((p for p in points if series(p) == model), key=lambda p: p.concurrency)
        colour = colours[i % len(colours)]
        conc = [p.concurrency for p in rows]
        ax1.plot(conc, [p.img_s for p in rows], "o-", color=colour, label=f"{model} service")
        engine = [(p.concurrency, p.engine_img_s) for p in rows if p.engine_img_s]
        if engine:
            ax1.plot(*zip(*engine), "x:", color=colour, label=f"{model} engine at the service's batch")
        for key, style, label in (("p50_ms", "o-", "p50"), ("p95_ms", "s--", "p95"), ("p99_ms", "^:", "p99")):
            pts = [(p.img_s, getattr(p, key)) for p in rows if getattr(p, key) is not None]
            if pts:
                ax2.plot(*zip(*pts), style, color=colour, label=f"{model} {label}")
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    def log_ticks(axis) -> None:  # plain numbers at 1, 2, 5 x 10^k
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())

    ax1.set_xscale("log", base=2)
    ax1.set_xticks(sorted({p.concurrency for p in points}))
    ax1.xaxis.set_major_formatter(ScalarFormatter())
    ax1.set_yscale("log")
    log_ticks(ax1.yaxis)
    ax1.set_xlabel("concurrency (Locust users)")
    ax1.set_ylabel("images / s")
    ax1.set_title("throughput vs concurrency")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(2, len(models)))
    ax2.set_yscale("log")
    log_ticks(ax2.yaxis)
    ax2.set_xlabel("images / s")
    ax2.set_ylabel("latency (ms)")
    ax2.set_title("latency percentiles vs throughput")
    ax2.grid(True, which="both", alpha=0.3)
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=min(2, len(models)))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write(points: list[Point], out_dir: Path, settings: dict, info: dict | None = None) -> dict[str, Path]:
    """results.json, results.md and loadtest.png in out_dir; their paths."""
    info = info or machine()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md", "plot": out_dir / "loadtest.png"}
    paths["json"].write_text(
        json.dumps({"machine": info, "settings": settings, "points": [asdict(p) for p in points]}, indent=2) + "\n"
    )
    paths["markdown"].write_text(markdown(points, info, settings))
    hardware = f"{info['cpu']} ({info['cores']} cores)" + (f", {info['gpu']}" if info.get("gpu") else ", no GPU")
    plot(points, paths["plot"], f"galaxyvit service on {hardware}")
    return paths


def merge(sources: list[Path], out_dir: Path) -> dict[str, Path]:
    """One report from several sweeps' results.json (e.g. one sweep per family with its own concurrencies)."""
    points, settings, info = [], {}, None
    for source in sources:
        data = json.loads((source / "results.json" if source.is_dir() else source).read_text())
        points += [Point(**p) for p in data["points"]]
        info = info or data["machine"]
        for key, value in data["settings"].items():
            if settings.setdefault(key, value) != value and not str(settings[key]).endswith("(varies)"):
                settings[key] = f"{settings[key]} (varies)"
    return write(points, out_dir, settings, info)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Merge load-test sweeps (their output folders) into one report.")
    parser.add_argument("sources", nargs="+", type=Path, help="sweep output folders or their results.json")
    parser.add_argument("--out", type=Path, required=True, help="folder for the merged report")
    args = parser.parse_args(argv)
    paths = merge(args.sources, args.out)
    print(paths["markdown"].read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
