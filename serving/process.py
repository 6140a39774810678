"""The service in a child process: the one way the project starts `bentoml serve serving.service:GalaxyClassifier`.

`ServerProcess` picks a free port on 127.0.0.1, builds the command line and the GALAXYVIT_* environment
from serving settings (the fields of ServingConfig), starts the server in its own session with a log
file and its own BentoML home (the models linked from the store, so every server has fresh /metrics),
waits for /readyz, and stops it by PID. The demo, the tests, the load-test sweep and the scripts use it;
`galaxyvit serve` execs the same command line in the foreground.

    with ServerProcess({"models": "vit", "workers": 2}, store=home) as server:
        httpx.get(server.url + "/models")
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path

from galaxyvit.store import default_home
from serving.config import ENV_PREFIX, ServingConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SERVICE = "serving.service:GalaxyClassifier"
SETTINGS = tuple(f.name for f in fields(ServingConfig))
PORT_ATTEMPTS = 3  # a port free when picked can be taken by another process before the server binds it


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def bentoml_command(host: str, port: int, service: str = SERVICE) -> list[str]:
    """`bentoml serve` of `service` on host:port (the bentoml beside this Python when there is one)."""
    bentoml = Path(sys.executable).with_name("bentoml")
    return [str(bentoml) if bentoml.exists() else "bentoml", "serve", service, "--host", host, "--port", str(port)]


def serve_env(
    settings: Mapping[str, object], base: Mapping[str, str] | None = None, code: Path = ROOT
) -> dict[str, str]:
    """`base` (default: os.environ) with GALAXYVIT_<SETTING> for every setting that is not None, and `code`
    (default: the repository) first on PYTHONPATH. Lists are joined with commas; unknown setting names are a
    ValueError."""
    env = dict(os.environ if base is None else base)
    for name, value in settings.items():
        if name not in SETTINGS:
            raise ValueError(f"unknown serving setting {name!r}; settings: {', '.join(SETTINGS)}")
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        env[ENV_PREFIX + name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(code), env.get("PYTHONPATH", "")) if p)
    return env


class ServerNotReady(RuntimeError):
    """A started server exited, or did not turn ready in time; the message ends with its log's tail."""


def wait_ready(url: str, process: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Poll URL/readyz until it answers 200; ServerNotReady when `process` exits first or `timeout` s pass."""
    tail = (lambda: ":\n" + log.read_text(errors="replace")[-4000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerNotReady(f"the service exited with code {process.returncode} before it was ready{tail()}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise ServerNotReady(f"the service was not ready after {timeout:.0f} s{tail()}")


def stop_process(process: subprocess.Popen, timeout: float = 30) -> None:
    """Graceful stop of a server started with start_new_session=True: SIGTERM lets in-flight requests
    finish; if it has not exited after `timeout` s, SIGKILL its whole process group (the workers)."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


class ServerProcess:
    """`bentoml serve` of the models in `store` (a BentoML home; default: BENTOML_HOME) on 127.0.0.1.

    settings: serving settings by ServingConfig field name (None: the environment's or the default);
    workdir: this server's own BentoML home and default log folder (default: a temporary folder, removed
    at stop); log: the server's stdout and stderr; port: default a free one; env: extra environment;
    service: what `bentoml serve` serves; code: the folder of its code (working directory, first on PYTHONPATH;
    default the repository, e.g. a built bento's `src` instead).
    Bad settings raise ValueError (FileNotFoundError for a missing settings file) before anything starts.
    start() (or `with`) starts it and waits for /readyz, raising ServerNotReady with the log's tail.
    """

    def __init__(
        self,
        settings: Mapping[str, object] | None = None,
        *,
        store: Path | None = None,
        workdir: Path | None = None,
        log: Path | None = None,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        ready_timeout: float = 300,
        service: str = SERVICE,
        code: Path = ROOT,
    ) -> None:
        self.store = Path(store) if store is not None else default_home()
        if not (self.store / "models").is_dir():
            raise FileNotFoundError(f"no BentoML model store at {self.store / 'models'}: export a model first")
        self.service, self.code = service, Path(code)
        self._own_port = port is None
        self._use_port(port or free_port())
        self.env = serve_env(settings or {}, {**os.environ, **(env or {})}, self.code)
        self.config = load_config(self.env)  # the settings the server will run with, checked now
        self._temporary = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="galaxyvit-serve-")) if workdir is None else Path(workdir)
        self.log = Path(log) if log is not None else self.workdir / "server.log"
        self.env.update({"BENTOML_HOME": str(self.workdir), "BENTOML_DO_NOT_TRACK": "true"})
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the server has not been started")
        return self.process.pid

    def start(self) -> ServerProcess:
        """Start the server and wait until /readyz answers; stopped again if it never does."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        link = self.workdir / "models"
        if not link.is_symlink():
            link.symlink_to((self.store / "models").resolve())  # the same models; metrics stay this server's own
        self.log.parent.mkdir(parents=True, exist_ok=True)
        for attempt in range(PORT_ATTEMPTS):
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(
                    self.command,
                    cwd=self.code,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_ready(self.url, self.process, self.ready_timeout, self.log)
                return self
            except ServerNotReady:
                if not (self._own_port and attempt + 1 < PORT_ATTEMPTS and self._lost_port_race()):
                    self.stop()
                    raise
                self._use_port(free_port())  # another process took the free port before the server bound it
            except BaseException:
                self.stop()
                raise
        return self

    def _use_port(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = bentoml_command("127.0.0.1", port, self.service)

    def _lost_port_race(self) -> bool:
        """Whether the server exited because its port was taken between free_port() and its bind."""
        exited = self.process is not None and self.process.poll() is not None
        return exited and "address already in use" in self.log.read_text(errors="replace").lower()

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM, then SIGKILL to its process group after `timeout` s; a temporary workdir is removed."""
        if self.process is not None:
            stop_process(self.process, timeout)
        if self._temporary:
            (self.workdir / "models").unlink(missing_ok=True)  # the link to the store, never the store itself
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ServerProcess:
        return self if self.process is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
