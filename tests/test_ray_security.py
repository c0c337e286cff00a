"""Ray with token authentication, as every clarlab cluster runs: a client without the
session's token is refused, and a sweep that starts its own Ray listens on loopback only
(checked with the Ray processes' own sockets)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


LISTENING = """
import json, os
from core.sweep.session import init_ray
init_ray(num_cpus=1)
import psutil, ray  # psutil: Ray's own copy, on the path once Ray is imported
assert ray.get(ray.remote(lambda: 1).remote()) == 1
me = psutil.Process()
ours = {p.pid for p in me.children(recursive=True)} | {me.pid}
found = [(psutil.Process(c.pid).name(), c.laddr.ip) for c in psutil.net_connections("inet")
         if c.status == psutil.CONN_LISTEN and c.pid in ours]
print(json.dumps({"listening": found, "usage_stats": os.environ.get("RAY_USAGE_STATS_ENABLED"),
                  "auth": os.environ.get("RAY_AUTH_MODE")}))
ray.shutdown()
"""


def test_a_sweep_that_starts_its_own_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))  # the test's own, never ~/.ray/auth_token
    environment = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    environment.update(RAY_AUTH_TOKEN_PATH=str(token), PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", LISTENING], env=environment, cwd=tmp_path,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    names = {name for name, _ in shown["listening"]}
    assert {"gcs_server", "raylet"} <= names, shown
    for name, ip in shown["listening"]:
        assert ip in ("127.0.0.1", "::ffff:127.0.0.1", "::1"), f"{name} listens on {ip}"
    assert shown["usage_stats"] == "0" and shown["auth"] == "token"


def test_auth_disabled_is_refused_before_ray_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    from core.sections import ConfigError
    from core.sweep.session import secure_ray_environment

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE='disabled'.*token authentication only"):
        secure_ray_environment(local=True)
