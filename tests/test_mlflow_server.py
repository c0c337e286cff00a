"""``python -m core.serve mlflow`` starts a real tracking server that trials can use.

One real ``mlflow server`` serves the module, started as cluster.yaml starts the head's
(``--background``, on a free loopback port): a run is logged and read back over HTTP,
an artifact goes up through the served artifacts and comes back byte for byte, and a
Host header the server was not told about gets MLflow's 403. A second one is started in
the foreground, as ``make mlflow-server`` does: the printed line is what runs. The
launcher's checks run as dry runs: what a wider bind exposes is printed, a password
never is, and a missing package is an error that names it.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from core.serve import START_TIMEOUT_S, answers, build_parser, prepare
from core.serve_plan import masked_uri, plan_mlflow
from tests.servers import free_port

REPO = Path(__file__).resolve().parents[1]


def launcher(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m core.serve mlflow ARGS`` run to completion (dry runs, refusals,
    ``--background`` starts)."""
    return subprocess.run(
        [sys.executable, "-m", "core.serve", "mlflow", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )


def parse(*args: str) -> argparse.Namespace:
    return build_parser().parse_args(["mlflow", *args])


@dataclass
class Server:
    url: str
    port: int
    artifacts: Path
    log: Path
    pid_file: Path


def stop_group(pgid: int, leader: subprocess.Popen[bytes] | None = None) -> None:
    """Stop a server this test started: its process group (launcher, uvicorn workers).
    ``leader``: the group's first process when it is this test's child, reaped here (a
    zombie still counts as a member of its group)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if leader is not None:
            leader.poll()
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The launcher's server on 127.0.0.1, started the way cluster.yaml starts the head's
    (``--background``: detached, the call returns once it answers), stopped afterwards."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    artifacts = root / "artifacts"
    log = root / "server.log"
    store = f"sqlite:///{root / 'store' / 'mlflow.db'}"
    common = ["--port", str(port), "--backend-store-uri", store]
    common += ["--artifacts-destination", str(artifacts), "--workers", "1"]
    started = launcher(*common, "--background", str(log), timeout=START_TIMEOUT_S)
    pid_file = root / "server.log.pid"
    try:
        assert started.returncode == 0, started.stdout + started.stderr + log.read_text()
        assert f"serving: http://127.0.0.1:{port}/health" in started.stdout
        # A second start finds it answering and leaves it alone (cluster.yaml on `ray up`).
        again = launcher(*common, "--background", str(log))
        assert again.returncode == 0 and "already serving" in again.stdout
        yield Server(f"http://127.0.0.1:{port}", port, artifacts, log, pid_file)
    finally:
        if pid_file.exists():
            stop_group(int(pid_file.read_text()))


def test_the_launcher_prints_the_command_then_becomes_the_server(tmp_path: Path):
    """Foreground (``make mlflow-server``): the printed line is what runs, in this process."""
    port = free_port()
    log = tmp_path / "foreground.log"
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.serve", "mlflow", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not answers(f"http://127.0.0.1:{port}/health"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        first = log.read_text().splitlines()[0]
        assert first.startswith(f"{sys.executable} -m mlflow server --host 127.0.0.1")
        assert f"--port {port}" in first and "--serve-artifacts --artifacts-destination" in first
        assert "--allowed-hosts" in first and "127.0.0.1:*" in first
        # exec: the launcher's process is now mlflow's, not a parent waiting on it
        assert "mlflow" in Path(f"/proc/{process.pid}/cmdline").read_text()
        assert "core.serve" not in Path(f"/proc/{process.pid}/cmdline").read_text()
    finally:
        stop_group(process.pid, leader=process)


def test_a_run_and_its_artifact_round_trip_over_http(server: Server, tmp_path: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=server.url)
    experiment = client.create_experiment("clarlab-serve-test")
    run = client.create_run(experiment, run_name="round-trip")
    run_id = run.info.run_id
    client.log_param(run_id, "augment.pipeline", "FD,TM")
    for epoch, loss in enumerate([2.5, 1.75, 1.25]):
        client.log_metric(run_id, "loss", loss, step=epoch)
    report = tmp_path / "report.csv"
    report.write_bytes(b"cell,top1\nFD-TM,0.93\n\x00\xff binary tail")
    client.log_artifact(run_id, str(report), artifact_path="report")
    client.set_terminated(run_id)

    fetched = client.get_run(run_id)
    assert fetched.data.params == {"augment.pipeline": "FD,TM"}
    assert fetched.info.status == "FINISHED"
    history = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(0, 2.5), (1, 1.75), (2, 1.25)]
    # Served artifacts: the run's artifacts live behind the server, not at a local path
    # the client wrote to, so a trial on another node can upload and anyone can read them.
    assert fetched.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list(server.artifacts.rglob("report.csv"))
    assert len(stored) == 1 and stored[0].read_bytes() == report.read_bytes()
    downloaded = client.download_artifacts(run_id, "report/report.csv", str(tmp_path / "back"))
    assert Path(downloaded).read_bytes() == report.read_bytes()


def test_only_expected_host_headers_are_answered(server: Server):
    search = f"{server.url}/api/2.0/mlflow/experiments/search"
    params = {"max_results": 1}
    assert requests.get(search, params=params, timeout=10).status_code == 200
    # An SSH tunnel (`ray attach -p`, `ssh -L`) may land on any local port.
    tunnelled = requests.get(search, params=params, headers={"Host": "localhost:15999"}, timeout=10)
    assert tunnelled.status_code == 200
    # A name that resolves here by DNS rebinding is refused.
    foreign = requests.get(search, params=params, headers={"Host": "evil.example"}, timeout=10)
    assert foreign.status_code == 403


def test_a_wildcard_bind_is_announced_with_what_it_exposes():
    result = launcher("--host", "0.0.0.0", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "warning: 0.0.0.0:5000" in result.stderr
    for exposed in ("UI and REST API", "delete", "every network", "password"):
        assert exposed in result.stderr
    assert "--host 0.0.0.0" in result.stdout


def test_loopback_is_quiet_and_a_private_address_is_allowed_by_name():
    quiet = launcher("--dry-run")
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "--host 127.0.0.1 --port 5000" in quiet.stdout

    plan = plan_mlflow(parse("--host", "10.1.2.3", "--port", "5001"))
    allowed = plan.argv[plan.argv.index("--allowed-hosts") + 1].split(",")
    # Trials send Host: 10.1.2.3:5001; without it MLflow 3 would answer them 403.
    assert {"10.1.2.3", "10.1.2.3:5001", "localhost:*", "127.0.0.1:*"} <= set(allowed)
    assert any("reachable from every machine that can route to 10.1.2.3" in n for n in plan.notices)


def test_ray_node_ip_binds_the_address_ray_gives_this_node():
    import ray.util

    address = ray.util.get_node_ip_address()
    plan = plan_mlflow(parse("--host", "ray-node-ip"))
    assert plan.argv[plan.argv.index("--host") + 1] == address
    allowed = plan.argv[plan.argv.index("--allowed-hosts") + 1].split(",")
    assert f"{address}:5000" in allowed or address in ("127.0.0.1", "::1")


def test_a_store_password_stays_off_the_command_line():
    uri = "postgresql://clarlab:s3cret-pw@db.internal:5432/mlflow"
    plan = plan_mlflow(parse("--backend-store-uri", uri))
    assert not any("s3cret-pw" in part for part in plan.argv)
    assert plan.env["MLFLOW_BACKEND_STORE_URI"] == uri
    assert "s3cret-pw" not in plan.command_line()
    assert masked_uri(uri) == "postgresql://clarlab:***@db.internal:5432/mlflow"
    assert masked_uri("postgresql://clarlab@db/mlflow") == "postgresql://clarlab@db/mlflow"

    result = launcher("--backend-store-uri", uri, "--dry-run")
    assert "s3cret-pw" not in result.stdout + result.stderr
    if importlib.util.find_spec("psycopg2") is None:
        assert result.returncode == 2
        assert "psycopg2" in result.stderr and "pip install psycopg2-binary" in result.stderr
    else:
        assert result.returncode == 0 and "MLFLOW_BACKEND_STORE_URI=" in result.stdout


def test_refusals_exit_2_and_say_why():
    in_memory = launcher("--backend-store-uri", "sqlite:///:memory:", "--dry-run")
    assert in_memory.returncode == 2 and "in-memory store" in in_memory.stderr
    other = launcher("--backend-store-uri", "mysql://u:pw@db/m", "--dry-run")
    assert other.returncode == 2 and "expected sqlite" in other.stderr and "pw@" not in other.stderr
    assert launcher("--port", "70000", "--dry-run").returncode == 2


def test_a_wildcard_allowed_host_needs_the_users_word():
    """`--allowed-hosts '*'` turns MLflow's DNS-rebinding protection off: refused, naming
    why and the flag that says the user means it."""
    refused = launcher("--allowed-hosts", "*", "--dry-run")
    assert refused.returncode == 2 and "DNS rebinding" in refused.stderr
    assert "--allow-any-host" in refused.stderr
    meant = launcher("--allowed-hosts", "*", "--allow-any-host", "--dry-run")
    assert meant.returncode == 0, meant.stderr


def test_auth_keeps_its_users_beside_the_store_and_no_password_in_files(tmp_path: Path):
    store = tmp_path / "store" / "mlflow.db"
    plan = plan_mlflow(
        parse(
            "--auth",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--artifacts-destination",
            str(tmp_path / "artifacts"),
        )
    )
    assert plan.argv[-2:] == ["--app-name", "basic-auth"]
    assert plan.env["MLFLOW_AUTH_CONFIG_PATH"] == str(store.parent / "basic_auth.ini")
    prepare(plan)
    written = (store.parent / "basic_auth.ini").read_text()
    assert f"database_uri = sqlite:///{store.parent / 'basic_auth.db'}" in written
    assert "password" not in written.lower()


def test_make_mlflow_server_defaults_to_loopback():
    env = {**os.environ, "HOST": "some-login-host", "PORT": "8080"}  # set by shells, PaaS
    dry = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "mlflow-server"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
    )
    assert dry.returncode == 0, dry.stderr
    command = " ".join(dry.stdout.replace("\\\n", " ").split())
    assert "core.serve mlflow --host 127.0.0.1 --port 5000" in command
    assert "--backend-store-uri 'sqlite:///results/mlflow.db'" in command
    chosen = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "mlflow-server", "HOST=10.0.0.7", "PORT=5005"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "--host 10.0.0.7 --port 5005" in chosen.stdout


def test_the_documented_teardown_stops_the_background_server(server: Server) -> None:
    """`ray down` stops Ray, not the MLflow servers the head started with --background:
    the teardown docs/cluster.md gives (`python -m core.serve stop LOG...`) stops them, and
    nothing of the server's process group is left."""
    group = int(server.pid_file.read_text())
    assert answers(f"{server.url}/health")
    stopped = subprocess.run(
        [sys.executable, "-m", "core.serve", "stop", str(server.log)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert f"stopped process group {group}" in stopped.stdout
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not answers(f"{server.url}/health") and not server.pid_file.exists()
    again = subprocess.run(
        [sys.executable, "-m", "core.serve", "stop", str(server.log)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 0 and "no server recorded" in again.stdout
