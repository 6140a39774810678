"""The queue behind `galaxyvit reproduce`: study runs as `galaxyvit train` child processes, several at once
(one per slot, or Ray tasks), finished ones skipped, killed ones resumed, failed ones recorded.

Each run folder OUT/RUN gets train.log (every attempt's output) and reproduce.json (the train options
the run was started with and every attempt: start, wall time, exit code, error).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from training.reproduction import STATUS_FILE, duration, read_history, read_json, run_row, write_table

TRAIN_COMMAND = ("-m", "training.train")  # `galaxyvit train`, run by the Python of whoever runs the child
POLL_S = 2.0


@dataclass
class Job:
    run_id: str
    folder: Path
    options: list[str]  # train options that shape the result: recorded in reproduce.json and checked on restart
    resources: list[str]  # --threads/--workers/--device/--checkpoint-every: free to change between attempts
    max_epochs: int
    patience: int
    status: dict = field(default_factory=dict)
    started: float = 0.0  # monotonic time the current attempt started (0: not yet)
    epochs_at_start: int = 0
    shown_epochs: int = 0
    log_offset: int = 0

    def state(self) -> str:
        if (self.folder / "metrics.json").is_file():
            return "finished"
        if (self.folder / "last.pt").is_file() or (self.folder / "last.prev.pt").is_file():
            return "resumable"
        return "new"

    def train_args(self) -> list[str]:
        results = ["--no-progress", "--results", str(self.folder.parent / "results.md")]
        resume = ["--resume"] if self.state() == "resumable" else []
        return [self.run_id, "--out", str(self.folder), *self.options, *self.resources, *results, *resume]


# Runs `python -m training.train ...` in the same process after asking Linux to SIGTERM it when the process
# that started it dies (even by SIGKILL): no training goes on unobserved. Set here rather than in a preexec_fn,
# which is unsafe in a threaded parent such as a Ray worker.
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform == 'linux':\n"
    "    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def child_command(args: list[str]) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, *TRAIN_COMMAND, *args]


def _log_header(log, args: list[str]) -> None:
    now = dt.datetime.now().isoformat(timespec="seconds")
    log.write(f"--- {now} on {platform.node()}: galaxyvit train {shlex.join(args)}\n".encode())
    log.flush()


def train_child(args: list[str], cwd: str, log_path: str, env: dict[str, str]) -> tuple[int, float]:
    """Run one `galaxyvit train` to the end (the Ray task); returns (exit code, wall seconds)."""
    start = time.monotonic()
    with open(log_path, "ab") as log:
        _log_header(log, args)
        proc = subprocess.run(
            child_command(args), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )
    return proc.returncode, time.monotonic() - start


class Queue:
    """The jobs, their status files, the progress lines and the table."""

    def __init__(self, jobs: list[Job], out: Path, data_label: str):
        self.jobs, self.out, self.data_label = jobs, out, data_label
        self.errors: dict[str, str] = {}
        self.running: set[str] = set()

    def launch(self, job: Job) -> None:
        job.folder.mkdir(parents=True, exist_ok=True)
        job.status = read_json(job.folder / STATUS_FILE) or {"run_id": job.run_id, "train_options": job.options}
        resumed = job.state() == "resumable"
        job.status.setdefault("attempts", []).append(
            {"started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "resumed": resumed, "wall_s": 0.0}
        )
        self._save(job)
        self.running.add(job.run_id)
        log = job.folder / "train.log"
        job.log_offset = log.stat().st_size if log.exists() else 0
        job.epochs_at_start = job.shown_epochs = len(read_history(job.folder))
        print(f"{job.run_id}: {'resuming at epoch ' + str(job.epochs_at_start) if resumed else 'starting'}", flush=True)

    def _save(self, job: Job) -> None:
        path = job.folder / STATUS_FILE
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(job.status, indent=2) + "\n")
        os.replace(tmp, path)

    def progress(self, job: Job) -> None:
        """Note the attempt's wall time; print a line when the run finished another epoch."""
        log = job.folder / "train.log"
        if not job.started and log.is_file() and log.stat().st_size > job.log_offset:
            job.started = time.monotonic()  # its log header is written when the child really starts
        if job.started:
            job.status["attempts"][-1]["wall_s"] = round(time.monotonic() - job.started, 1)
            self._save(job)
        history = read_history(job.folder)
        done = len(history)
        if done <= job.shown_epochs:
            return
        job.shown_epochs = done
        best = max(range(done), key=lambda i: history[i]["valid_acc"])  # the first best, as the trainer keeps
        left = max(0, min(job.max_epochs - done, job.patience - (done - 1 - best)))
        per_epoch = (time.monotonic() - job.started) / max(done - job.epochs_at_start, 1)
        print(
            f"{job.run_id}: epoch {done}/{job.max_epochs}, valid acc {100 * history[-1]['valid_acc']:.2f}% "
            f"(best {100 * history[best]['valid_acc']:.2f}% at epoch {best + 1}), {per_epoch:.1f} s/epoch, "
            f"ETA <= {duration(left * per_epoch)}",
            flush=True,
        )

    def finish(self, job: Job, code: int, wall: float | None = None, error: str | None = None) -> None:
        self.progress(job)
        self.running.discard(job.run_id)
        attempt = job.status["attempts"][-1]
        attempt["wall_s"] = round(wall if wall is not None else attempt["wall_s"], 1)
        attempt["returncode"] = code
        if code != 0 or job.state() != "finished":
            error = error or last_error(job.folder / "train.log", job.log_offset, code)
            attempt["error"] = self.errors[job.run_id] = error
        self._save(job)
        outcome = "finished" if job.state() == "finished" else f"FAILED: {attempt['error']}"
        print(f"{job.run_id}: {outcome} ({duration(attempt['wall_s'])})", flush=True)
        print(self.table(), flush=True)

    def table(self) -> str:
        rows = []
        for job in self.jobs:
            error = self.errors.get(job.run_id)
            status = "failed" if error else "started" if job.run_id in self.running else "queued"
            rows.append(run_row(job.folder, "finished" if job.state() == "finished" else status, error))
        write_table(self.out, rows, self.data_label)
        return (self.out / "reproduction.md").read_text()


def last_error(log: Path, offset: int, code: int) -> str:
    """The child's own error line (`error: ...` or the exception of a traceback), else its exit status."""
    with open(log, "rb") as f:
        f.seek(offset)
        lines = [line.strip() for line in f.read().decode(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    if errors:
        return errors[-1].removeprefix("error:").strip()
    if any(line.startswith("Traceback") for line in lines):
        return lines[-1]
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


def run_local(queue: Queue, jobs: list[Job], slots: list[dict[str, str]]) -> None:
    """Start jobs in free slots, poll the children, until every job has ended."""
    pending, running = list(jobs), {}
    while pending or running:
        for slot, env in enumerate(slots):
            if slot not in running and pending:
                job = pending.pop(0)
                queue.launch(job)
                log = open(job.folder / "train.log", "ab")  # closed when the child has ended
                args = job.train_args()
                _log_header(log, args)
                proc = subprocess.Popen(
                    child_command(args), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
                )
                job.started = time.monotonic()
                running[slot] = (job, proc, log)
        time.sleep(POLL_S)
        for slot, (job, proc, log) in list(running.items()):
            code = proc.poll()
            queue.progress(job)
            if code is not None:
                log.close()
                del running[slot]
                queue.finish(job, code)


def run_ray(queue: Queue, jobs: list[Job], address: str | None, gpus: int, per_gpu: int, cpus: int) -> None:
    """The same children as Ray tasks, each holding 1/per_gpu of a GPU (or `cpus` CPUs)."""
    import ray

    started_here = not ray.is_initialized() and address is None
    if started_here:  # a local instance: this machine's CPUs and the GPUs asked for
        ray.init(num_cpus=os.cpu_count(), num_gpus=gpus, include_dashboard=False, object_store_memory=200 << 20)
    elif not ray.is_initialized():
        ray.init(address=address)
    task = ray.remote(train_child).options(num_gpus=1 / per_gpu if gpus else 0, num_cpus=cpus, max_retries=0)
    refs = {}
    for job in jobs:
        queue.launch(job)
        job.started = 0.0  # set when the task's header reaches the log
        env = {} if gpus else {"CUDA_VISIBLE_DEVICES": ""}
        refs[task.remote(job.train_args(), os.getcwd(), str(job.folder / "train.log"), env)] = job
    try:
        while refs:
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=POLL_S)
            for job in refs.values():
                queue.progress(job)
            for ref in ready:
                job = refs.pop(ref)
                try:
                    code, wall = ray.get(ref)
                    queue.finish(job, code, wall)
                except Exception as exc:  # the task itself failed (worker lost, node died)
                    queue.finish(job, -1, error=f"Ray task failed: {exc}")
    finally:
        if started_here:
            ray.shutdown()
