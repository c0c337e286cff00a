"""The one helper for tests that need a real MLflow tracking server: started through
clarlab's own launcher (``python -m core.serve mlflow``), as a user starts it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def answers(url: str) -> bool:
    """Whether ``url`` answers 200 within two seconds (directly: a proxy from the
    environment would not reach a loopback or private address)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class MlflowServer:
    """``python -m core.serve mlflow`` on ``host``, in a process group of its own (the
    launcher execs ``mlflow server``, which starts uvicorn): started, killed as a crash
    would end it, and started again on the same port and store."""

    def __init__(self, folder: Path, host: str = "127.0.0.1", allowed_hosts: str = "") -> None:
        self.folder = folder
        self.host = host
        self.port = free_port(host)
        self.store = folder / "mlflow.db"
        self.log = folder / "server.log"
        self.allowed_hosts = allowed_hosts
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> MlflowServer:
        """Start the launcher and return at once (importing MLflow takes seconds, which a
        caller can overlap with other set-up); :meth:`wait_until_ready` waits for it."""
        while not self._port_free():  # a killed server's socket is gone at once; be sure
            time.sleep(0.1)
        command = [
            sys.executable, "-m", "core.serve", "mlflow", "--host", self.host,
            "--port", str(self.port), "--backend-store-uri", f"sqlite:///{self.store}",
            "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1",
        ]  # fmt: skip
        if self.allowed_hosts:
            command += ["--allowed-hosts", self.allowed_hosts]
        environment = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        environment["MLFLOW_DISABLE_TELEMETRY"] = "true"
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env=environment,
            )  # fmt: skip
        return self

    def wait_until_ready(self, timeout_s: float = START_TIMEOUT_S) -> str:
        """The URL once ``/health`` answers; an AssertionError with the log's tail if the
        server exits or stays silent."""
        deadline = time.monotonic() + timeout_s
        while not answers(f"{self.url}/health"):
            assert self.process is not None, "launch() the server first"
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)
        return self.url

    def start(self) -> MlflowServer:
        self.launch().wait_until_ready()
        return self

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or an OOM kill would end it, and return once
        every process of it is gone (uvicorn's worker outlives the launcher by a moment,
        holding the port)."""
        if self.process is None:
            return
        group = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)  # raises once no process of the group is left
            except ProcessLookupError:
                return
            time.sleep(0.05)
        raise AssertionError(f"processes of the server's group {group} survived SIGKILL")

    def hold_until_called(self, timeout_s: float = 120.0) -> bool:
        """While the server is down, listen on its port until a client tries to reach it,
        then let go (the client's call fails as against a dead server). True when a call
        came: an outage that lasts until it has been felt, however slow the machine."""
        with socket.socket() as holder:
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            holder.bind((self.host, self.port))
            holder.listen(8)
            holder.settimeout(timeout_s)
            try:
                caller, _ = holder.accept()
            except TimeoutError:
                return False
            # Linger 0: close with a reset, as the port of a server that died gives.
            caller.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            caller.close()
        return True

    def logged_losses(self) -> int:
        """Loss points in the store, read from the database file (no HTTP, no retries)."""
        with contextlib.closing(sqlite3.connect(self.store, timeout=30)) as db:
            return int(db.execute("select count(*) from metrics where key = 'loss'").fetchone()[0])

    def _port_free(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex((self.host, self.port)) != 0
