"""Readiness without asking the inference workers: /readyz answers at once, also while one is down.

Under `bentoml serve` every inference worker, once its models are loaded and warmed up, leaves a marker
file (its PID and start time) in the server's Prometheus multiprocess folder, which all the server's
processes share. An API worker is ready when as many inference workers as configured are running
beside it (children of the same `bentoml serve` process) and each has left its marker: a killed worker
is missing at once, and the one BentoML starts in its place has no marker until it has warmed up.
BentoML's own /readyz calls an inference worker over HTTP and waits up to 5 s when it does not answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from serving.metrics import multiprocess_dir

MARKER = "galaxyvit-ready-{pid}"


def sibling_workers(service_name: str) -> list[Any]:
    """The other live worker processes of `service_name` started by the same `bentoml serve` (psutil.Process;
    a killed worker its parent has not reaped yet is not one)."""
    import psutil

    workers = []
    for process in psutil.Process(os.getppid()).children():
        try:
            command = process.cmdline()
            if process.status() == psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        if process.pid != os.getpid() and "--service-name" in command:
            if command[command.index("--service-name") + 1 :][:1] == [service_name]:
                workers.append(process)
    return workers


def _started(process: Any) -> str:
    return repr(process.create_time())


def mark_ready() -> None:
    """Called by an inference worker once its models are warmed up."""
    import psutil

    folder = multiprocess_dir()
    if folder:
        (Path(folder) / MARKER.format(pid=os.getpid())).write_text(_started(psutil.Process()))


class Readiness:
    """Whether the inference workers of this `bentoml serve` are all up and warmed."""

    def __init__(self, inference_service: str, inference_workers: int) -> None:
        self.service = inference_service
        self.expected = inference_workers

    def applies(self) -> bool:
        """True in an API worker of `bentoml serve` whose inference runs in other processes (BentoML passes
        their addresses in BENTOML_RUNNER_MAP); False when the whole deployment runs in one process."""
        try:
            runners = json.loads(os.environ.get("BENTOML_RUNNER_MAP") or "{}")
        except ValueError:
            return False
        return self.service in runners and bool(multiprocess_dir())

    def problem(self) -> str | None:
        """None when every inference worker is up and warmed, else what is missing."""
        import psutil

        folder = Path(multiprocess_dir() or ".")
        workers = sibling_workers(self.service)
        warmed = 0
        for process in workers:
            marker = folder / MARKER.format(pid=process.pid)
            try:
                warmed += marker.is_file() and marker.read_text() == _started(process)
            except (OSError, psutil.Error):
                continue
        if len(workers) < self.expected or warmed < self.expected:
            return f"{warmed} of {self.expected} inference workers running and warmed up"
        return None
