"""Ray with token authentication, as every clarlab cluster runs: a client without the
session's token is refused; a sweep that starts its own Ray listens on loopback only
(checked with the Ray processes' own sockets) and logs to an MLflow server that asks for
a password, with the credentials from the environment."""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]
REFUSED = "InvalidAuthToken"  # what the GCS answers a call without the right token


def _client(address: str, environment: dict[str, str], log: Path) -> subprocess.Popen:
    """A Ray client process that connects to ``address`` and runs one task."""
    script = f"import ray; ray.init(address={address!r}); print('ran', ray.get(ray.remote(lambda: 1).remote()))"
    with log.open("w") as stream:
        return subprocess.Popen(
            [sys.executable, "-c", script], env=environment, stdout=stream, stderr=subprocess.STDOUT
        )


def _wait_for_text(process: subprocess.Popen, log: Path, text: str, timeout_s: float = 60) -> bool:
    """True once ``text`` is in the log (then the process is stopped), False if the
    process ended or the time ran out first."""
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            if text in log.read_text():
                return True
            if process.poll() is not None:
                return text in log.read_text()
            time.sleep(0.1)
        return False
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_a_client_without_the_token_is_refused(ray_cluster, tmp_path: Path) -> None:
    address = ray_cluster.cluster.address
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    base.pop("RAY_ADDRESS", None)
    attempts = {
        "a wrong token": {
            **base,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": secrets.token_hex(32),
        },
        # What RAY_AUTH_MODE=disabled would have let in: a client that sends no token.
        "no token": {**base, "RAY_AUTH_MODE": "disabled"},
    }
    started = {
        name: _client(address, env, tmp_path / f"{i}.log")
        for i, (name, env) in enumerate(attempts.items())
    }
    for i, (name, process) in enumerate(started.items()):
        log = tmp_path / f"{i}.log"
        assert _wait_for_text(process, log, REFUSED), f"{name}: {log.read_text()[-2000:]}"
        assert "ran 1" not in log.read_text(), f"{name} ran a task on the cluster"


# A laptop sweep, as `python ablations/run_aug_matrix.py` runs one: its own Ray, one tiny
# trial, logging to an MLflow server that asks for a password, the credentials in the
# environment. Then the Ray processes' own listening sockets, while Ray is still up.
LAPTOP_SWEEP = """
import json, os, sys, time, urllib.request
from pathlib import Path
from core.sweep import SweepRequest, run_sweep
given = json.loads(sys.argv[1])
deadline = time.monotonic() + 120  # the server starts while this process imports
while True:
    try:
        urllib.request.urlopen(given["uri"] + "/health", timeout=5).close()
        break
    except OSError:
        assert time.monotonic() < deadline, "the MLflow server never answered"
        time.sleep(0.2)
outcome = run_sweep(SweepRequest(
    preset="quick", overrides=given["overrides"], controls=False, max_concurrent=1,
    axis_values={"augment.pipeline": ["FD"], "frontend.name": ["stft3"]},
    tracking_uri=given["uri"], results_dir=Path(given["results"]),
    command_line="pytest laptop sweep", progress_every_s=600,
))
import psutil  # Ray's own copy, on the path once Ray is imported
me = psutil.Process()
ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
found = [(psutil.Process(c.pid).name(), c.laddr.ip) for c in psutil.net_connections("inet")
         if c.status == psutil.CONN_LISTEN and c.pid in ours]
print(json.dumps({"listening": found, "parent": outcome.parent_run_id,
                  "statuses": [record.status for record in outcome.records],
                  "usage_stats": os.environ.get("RAY_USAGE_STATS_ENABLED"),
                  "auth": os.environ.get("RAY_AUTH_MODE")}))
"""


def _start_auth_server(folder: Path, password: str, port: int) -> Path:
    """clarlab's MLflow server with MLflow's basic-auth app (the `server` extra), started
    detached on loopback as `make mlflow-server AUTH=1` would; returns its log once it
    answers."""
    log = folder / "auth-server.log"
    environment = {
        **os.environ,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
    }
    started = subprocess.run(
        [sys.executable, "-m", "core.serve", "mlflow", "--auth", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'store' / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--background", str(log)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=150,
    )  # fmt: skip
    assert started.returncode == 0, started.stdout + started.stderr + log.read_text()
    return log


def _status(url: str, credentials: tuple[str, str] | None = None) -> int:
    """The HTTP status of a GET, with basic auth when ``credentials`` are given."""
    request = urllib.request.Request(url)
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.slow
def test_a_laptop_sweep_keeps_ray_on_loopback_and_logs_to_a_server_that_asks_for_a_password(
    fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """MLflow's auth from a fresh install: no credentials and a wrong password get 401. A
    sweep that starts its own Ray, with the credentials in MLFLOW_TRACKING_USERNAME/
    PASSWORD (never in the URI), logs its trial there; its Ray listens on loopback only,
    token-authenticated, usage statistics off."""
    from mlflow.tracking import MlflowClient

    from core.tracking import find_trial_runs
    from tests.test_sweep_e2e import _tiny

    password, port = secrets.token_hex(12), free_port()
    url = f"http://127.0.0.1:{port}"
    token = tmp_path / "ray_token"
    token.write_text(secrets.token_hex(32))  # the test's own, never ~/.ray/auth_token
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "MLFLOW_"))}
    environment.update(
        RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(ROOT),
        MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password,
    )  # fmt: skip
    given = {"overrides": _tiny(fsdd_root, cache_dir), "uri": url, "results": str(tmp_path / "r")}
    sweep = subprocess.Popen(
        [sys.executable, "-c", LAPTOP_SWEEP, json.dumps(given)], env=environment,
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    log = tmp_path / "auth-server.log"
    try:
        log = _start_auth_server(tmp_path, password, port)  # while the sweep imports
        search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status(search) == 401
        assert _status(search, ("admin", "not-" + password)) == 401
        assert _status(search, ("admin", password)) == 200

        stdout, stderr = sweep.communicate(timeout=240)
        assert sweep.returncode == 0, stderr[-3000:]
        shown = json.loads(stdout.strip().splitlines()[-1])
        assert shown["statuses"] == ["FINISHED"], stdout[-3000:]
        names = {name for name, _ in shown["listening"]}
        assert {"gcs_server", "raylet"} <= names, shown
        for name, ip in shown["listening"]:
            assert ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"{name} listens on {ip}"
        assert shown["usage_stats"] == "0" and shown["auth"] == "token"

        os.environ["MLFLOW_TRACKING_USERNAME"] = "admin"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
        try:
            (child,) = find_trial_runs(url, shown["parent"])
            assert child.info.status == "FINISHED" and "test_top1" in child.data.metrics
            assert MlflowClient(url).get_run(shown["parent"]).info.status == "FINISHED"
        finally:
            os.environ.pop("MLFLOW_TRACKING_USERNAME")
            os.environ.pop("MLFLOW_TRACKING_PASSWORD")
        assert password not in log.read_text() + stdout + stderr
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.wait()
        subprocess.run([sys.executable, "-m", "core.serve", "stop", str(log)], cwd=ROOT, timeout=60)


def test_auth_disabled_is_refused_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.sections import ConfigError
    from core.sweep.session import secure_ray_environment

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE='disabled'.*token authentication only"):
        secure_ray_environment(local=True)
