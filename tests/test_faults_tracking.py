"""A sweep against a real MLflow server on loopback that goes away: before the sweep, for
good in the middle of it, and for a while in the middle of it.

One server (the session's helper, ``tests/servers.py``, started through clarlab's own
launcher) serves the module with an SQLite store in a temporary folder; tests kill it with
SIGKILL and start it again on the same port and store, as a crashed server comes back. It
accepts the Host headers of loopback names, so ``http://127.1:<port>`` (the same address,
by a name it was not given) gets MLflow's 403, the refusal a server gives a name missing
from ``--allowed-hosts``. Trials are tiny cells on real FSDD audio. Sweeps whose terminal
output or exit code matters run as commands (``ablations/run_aug_matrix.py --address``,
drivers of their own on the session's Ray cluster); the short outage runs in this process,
with MLflow's HTTP retries as clarlab sets them (:data:`core.tracking.HTTP_RETRY_ENV`: a
call is tried for about two minutes). What a failed trial prints in the terminal is
tested with Ctrl-C in ``test_faults_process.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.exceptions import MlflowException

from ablations.run_aug_matrix import (
    EXIT_BAD_INPUT,
    EXIT_INCOMPLETE,
    EXIT_OK,
)
from core.config import ExperimentConfig
from core.sweep import SweepRequest, run_sweep
from core.tracking import (
    RunIdentity,
    TrackingServerError,
    TrialRun,
    find_trial_runs,
    is_unreachable_error,
    tracking_client,
)
from tests.servers import MlflowServer
from tests.servers import free_port as _free_port
from tests.test_sweep_e2e import _tiny

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server(mlflow_server: MlflowServer) -> MlflowServer:
    """The module's server, once it answers: these tests kill it and start it again."""
    mlflow_server.wait_until_ready()
    return mlflow_server


def _when_first_loss(
    server: MlflowServer, action: Callable[[], None], timeout_s: float = 300
) -> threading.Thread:
    """Run ``action`` in a thread as soon as a new ``loss`` point reaches the store: the
    sweep is then under way, with trials training and more waiting."""
    baseline = server.logged_losses()

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if server.logged_losses() > baseline:
                action()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def _tiny_flags(fsdd_root: Path, cache_dir: Path, **changes: object) -> list[str]:
    flags = []
    for key, value in {**_tiny(fsdd_root, cache_dir), **changes}.items():
        flags += ["--set", f"{key}={value}"]
    return flags


def _steps(uri: str, run_id: str, key: str) -> list[int]:
    return [point.step for point in tracking_client(uri).get_metric_history(run_id, key)]


# --- before the sweep -------------------------------------------------------------------


def test_an_unreachable_or_refusing_server_stops_the_sweep_before_ray(
    server: MlflowServer, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """One line on stderr naming the server, the cause and the fix; exit 2; Ray never
    started; no sweep folder claimed. Run as a user runs it, in a process of its own."""
    script = textwrap.dedent(
        """
        import sys, ray
        from ablations.run_aug_matrix import main
        code = main(sys.argv[1:])
        print("ray started:", ray.is_initialized())
        sys.exit(code)
        """
    )
    dead = f"http://127.0.0.1:{_free_port()}"
    refusing = f"http://127.1:{server.port}"  # a Host header the server was not given
    for uri, said, fix in (
        (dead, "cannot be reached (connection refused)", "start it (`make mlflow-server`)"),
        (refusing, "refused the request (HTTP 403: Invalid Host header", "--allowed-hosts"),
    ):
        results = tmp_path / uri.rsplit(":", 1)[1]
        shown = subprocess.run(
            [sys.executable, "-c", script, "--preset", "quick", "--augs", "FD",
             "--frontends", "stft3", "--no-controls", "--results", str(results),
             "--tracking-uri", uri, *_tiny_flags(fsdd_root, cache_dir)],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        )  # fmt: skip
        assert shown.returncode == EXIT_BAD_INPUT, shown.stdout + shown.stderr
        lines = [line for line in shown.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, shown.stderr
        assert lines[0].startswith(f"error: MLflow tracking server {uri} {said}"), lines[0]
        assert fix in lines[0]
        assert "ray started: False" in shown.stdout
        assert not results.exists() or not any(results.iterdir())


def test_a_trial_names_the_server_not_a_missing_parent(
    server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A parent run that cannot be read because the server is away is not a parent run
    that does not exist; both errors say which it is."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # this process only
    dead = RunIdentity(
        tracking_uri=f"http://127.0.0.1:{_free_port()}", parent_run_id="abc", trial_id="t1"
    )
    with pytest.raises(TrackingServerError) as away:
        TrialRun.open(ExperimentConfig(), dead)
    assert "cannot be reached (connection refused) while opening the run of trial t1" in str(
        away.value
    )
    assert "is not a run" not in str(away.value) and is_unreachable_error(
        f"core.tracking.server.TrackingServerError: {away.value}"
    )
    missing = RunIdentity(tracking_uri=server.url, parent_run_id="no-such-run", trial_id="t1")
    with pytest.raises(MlflowException, match="parent_run_id='no-such-run' is not a run"):
        TrialRun.open(ExperimentConfig(), missing)


# --- during the sweep -------------------------------------------------------------------


def _sweep_command(address: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python ablations/run_aug_matrix.py ARGS --address ADDRESS`` as a user runs it on a
    running cluster: a driver of its own, its own terminal output, its exit code."""
    return subprocess.run(
        [sys.executable, "ablations/run_aug_matrix.py", *args, "--address", address],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **env},
    )


def test_a_server_gone_for_good_ends_the_sweep_and_resume_finishes_it(
    ray_cluster, server: MlflowServer, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The server dies once the first trial logged its first epoch, with a second trial
    waiting. Both trials then fail naming the true cause, the driver writes the local
    report, says how to finish, and exits 130 (incomplete) without a traceback; once the
    server is back on its store, ``--resume`` runs the failed trials again: every child
    FINISHED, one run per trial, each history one attempt (steps 0, 1).

    The driver runs in a process of its own, with MLflow's retries cut to one (a user's
    exported values win over clarlab's minute of retries), so that the dead server
    fails each call at once rather than after a minute."""
    results = tmp_path / "results"
    quick_retries = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    address = ray_cluster.cluster.address
    watcher = _when_first_loss(server, server.kill)
    try:
        first = _sweep_command(
            address,
            "--preset", "quick", "--augs", "FD", "--frontends", "stft3", "raw1d",
            "--no-controls", "--max-concurrent", "1", "--results", str(results),
            "--run-name", "gone",
            "--tracking-uri", server.url,
            *_tiny_flags(fsdd_root, cache_dir, **{"train.epochs": 2}),
            **quick_retries,
        )  # fmt: skip
        watcher.join(timeout=5)
        report_only = _sweep_command(address, "--report-only", "gone", "--results", str(results))
    finally:
        watcher.join(timeout=5)
        if server.process is None:
            server.start()  # back, on the same store and port
    shown = first.stdout + first.stderr
    assert first.returncode == EXIT_INCOMPLETE, shown
    assert "Traceback" not in shown and 'File "' not in shown, shown
    assert "errored after" not in shown
    report = results / "gone" / "report"
    assert {"trials.csv", "trials.md", "aug_matrix_raw1d.csv"} <= {p.name for p in report.iterdir()}
    assert "FAILED" in (report / "trials.csv").read_text()
    assert f"MLflow at {server.url} could not be reached (connection refused)" in first.stdout
    assert "the report is local only" in first.stdout
    assert "continue it with --resume gone" in first.stdout
    failures = [line for line in first.stdout.splitlines() if line.startswith("  FAILED   ")]
    assert len(failures) == 2, first.stdout  # the running trial and the waiting one
    for line in failures:
        assert "cannot be reached (connection refused)" in line and "is not a run" not in line
    parent_id = json.loads((results / "gone" / "sweep.json").read_text())["identity"][
        "parent_run_id"
    ]
    # The report alone, while the server is still away: rebuilt locally, said in a line.
    assert report_only.returncode == EXIT_INCOMPLETE, report_only.stdout + report_only.stderr
    assert "could not be reached (connection refused)" in report_only.stdout
    assert "Traceback" not in report_only.stdout + report_only.stderr

    again = _sweep_command(address, "--resume", "gone", "--results", str(results), **quick_retries)
    assert again.returncode == EXIT_OK, again.stdout + again.stderr
    assert "failed because MLflow could not be reached; rerunning the failed trials" in again.stdout
    children = find_trial_runs(server.url, parent_id)
    ids = sorted(run.data.tags["clarlab.trial_id"] for run in children)
    assert ids == ["raw1d-FD-FD", "stft3-FD-FD"]
    assert {run.info.status for run in children} == {"FINISHED"}
    for run in children:
        assert _steps(server.url, run.info.run_id, "loss") == [0, 1], run.data.tags
        assert "test_top1" in run.data.metrics
    client = tracking_client(server.url)
    assert client.get_run(parent_id).info.status == "FINISHED"
    attached = {item.path for item in client.list_artifacts(parent_id, "report")}
    assert "report/trials.csv" in attached


# --- a short outage (this process, the session's Ray cluster) --------------------------


def test_a_server_down_for_a_while_loses_no_metric(
    ray_cluster, server: MlflowServer, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Killed once the first trial logged an epoch, and started again on the same store
    once a trial's call has found it gone: the calls made meanwhile are retried, the sweep
    finishes, and every epoch of every trial is in MLflow."""
    outage: dict[str, float] = {}

    def outage_until_felt() -> None:
        outage["down_ms"] = time.time() * 1000
        server.kill()
        outage["felt"] = server.hold_until_called()
        server.start()
        outage["back_ms"] = time.time() * 1000

    watcher = _when_first_loss(server, outage_until_felt)
    outcome = run_sweep(
        SweepRequest(
            preset="quick",
            overrides={**_tiny(fsdd_root, cache_dir), "train.epochs": 3},
            axis_values={"augment.pipeline": ["FD"], "frontend.name": ["stft3", "raw1d"]},
            controls=False,
            max_concurrent=2,
            results_dir=tmp_path / "results",
            tracking_uri=server.url,
            command_line="pytest outage",
        )
    )
    watcher.join(timeout=120)
    assert "back_ms" in outage, "the outage did not happen during the sweep"
    assert outage["felt"], "no call reached the server while it was away"
    assert outcome.complete and not outcome.failed, outcome.summary
    children = find_trial_runs(server.url, outcome.parent_run_id)
    assert len(children) == 2 and {run.info.status for run in children} == {"FINISHED"}
    client = tracking_client(server.url)
    last_logged = 0.0
    for run in children:
        for key in ("loss", "epoch"):
            history = client.get_metric_history(run.info.run_id, key)
            assert [point.step for point in history] == [0, 1, 2], (key, run.data.tags)
            last_logged = max(last_logged, *(point.timestamp for point in history))
        assert {"test_top1", "test_macro_f1"} <= set(run.data.metrics)
    assert last_logged >= outage["down_ms"], "no trial logged after the server went away"
    assert client.get_run(outcome.parent_run_id).info.status == "FINISHED"
