"""A sweep against a real ``mlflow server`` on loopback that goes away: before the sweep,
for good in the middle of it, and for 20 s in the middle of it; and what a failed trial
prints in the terminal.

One server process serves the module (an SQLite store in a temporary folder); tests kill
it with SIGKILL and start it again on the same port and store, as a crashed server comes
back. It accepts the Host header ``127.0.0.1:<port>`` only, so ``http://localhost:<port>``
gets MLflow's 403, the refusal a server started without ``--allowed-hosts`` gives. Trials
are tiny cells on real FSDD audio. Sweeps whose terminal output or exit code matters run
as commands (``ablations/run_aug_matrix.py``, each with its own local Ray); the 20 s
outage runs in this process on the module's Ray cluster (started last, so that two
clusters never share the two cores), with MLflow's HTTP retries as clarlab sets them
(:data:`core.tracking.HTTP_RETRY_ENV`: a call is tried for about two minutes).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from mlflow.exceptions import MlflowException

from ablations.run_aug_matrix import (
    EXIT_BAD_INPUT,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_TRIALS_FAILED,
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
from tests.servers import answers as _answers
from tests.servers import free_port as _free_port
from tests.test_sweep_e2e import _tiny

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180.0


class MlflowServer:
    """``mlflow server`` in its own process group (the launcher, uvicorn, the job runner),
    startable again on the same port and store after a kill."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = _free_port()
        self.store = folder / "mlflow.db"
        self.log = folder / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and return once it answers; fail with its log if it does not."""
        while not self._port_free():  # a killed server's socket is gone at once; be sure
            time.sleep(0.2)
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server",
                 "--host", "127.0.0.1", "--port", str(self.port),
                 "--backend-store-uri", f"sqlite:///{self.store}",
                 "--serve-artifacts", "--artifacts-destination", str(self.folder / "artifacts"),
                 "--workers", "1",
                 "--allowed-hosts", f"127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(f"{self.url}/health"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"mlflow server did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the whole group, as a crash or an OOM kill would end it."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def _port_free(self) -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", self.port)) != 0

    def logged_losses(self) -> int:
        """Loss points in the store, read from the database file (no HTTP, no retries)."""
        with contextlib.closing(sqlite3.connect(self.store, timeout=30)) as db:
            return int(db.execute("select count(*) from metrics where key = 'loss'").fetchone()[0])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    running = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    running.start()
    try:
        yield running
    finally:
        running.kill()


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
    refusing = f"http://localhost:{server.port}"  # a Host header the server was not given
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


def _sweep_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python ablations/run_aug_matrix.py ARGS`` as a user runs it: its own local Ray on
    two CPUs, its own terminal output, its exit code."""
    return subprocess.run(
        [sys.executable, "ablations/run_aug_matrix.py", "--num-cpus", "2", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
        env={**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **env},
    )


def test_a_server_gone_for_good_ends_the_sweep_and_resume_finishes_it(
    server: MlflowServer, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The server dies once the first trial logged its first epoch, with a second trial
    waiting. Both trials then fail naming the true cause, the driver writes the local
    report, says how to finish, and exits 130 (incomplete) without a traceback; once the
    server is back on its store, ``--resume`` runs the failed trials again: every child
    FINISHED, one run per trial, each history one attempt (steps 0, 1, 2).

    The driver runs in a process of its own, with MLflow's retries cut to one (a user's
    exported values win over clarlab's minute of retries), so that the dead server
    fails each call at once rather than after a minute."""
    results = tmp_path / "results"
    quick_retries = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    }
    watcher = _when_first_loss(server, server.kill)
    try:
        first = _sweep_command(
            "--preset", "quick", "--augs", "FD", "--frontends", "stft3", "raw1d",
            "--no-controls", "--max-concurrent", "1", "--results", str(results),
            "--run-name", "gone",
            "--tracking-uri", server.url,
            *_tiny_flags(fsdd_root, cache_dir, **{"train.epochs": 3}),
            **quick_retries,
        )  # fmt: skip
        watcher.join(timeout=5)
        report_only = _sweep_command("--report-only", "gone", "--results", str(results))
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

    again = _sweep_command("--resume", "gone", "--results", str(results), **quick_retries)
    assert again.returncode == EXIT_OK, again.stdout + again.stderr
    assert "failed because MLflow could not be reached; rerunning the failed trials" in again.stdout
    children = find_trial_runs(server.url, parent_id)
    ids = sorted(run.data.tags["clarlab.trial_id"] for run in children)
    assert ids == ["raw1d-FD-FD", "stft3-FD-FD"]
    assert {run.info.status for run in children} == {"FINISHED"}
    for run in children:
        assert _steps(server.url, run.info.run_id, "loss") == [0, 1, 2], run.data.tags
        assert "test_top1" in run.data.metrics
    client = tracking_client(server.url)
    assert client.get_run(parent_id).info.status == "FINISHED"
    attached = {item.path for item in client.list_artifacts(parent_id, "report")}
    assert "report/trials.csv" in attached


# --- what the terminal shows ------------------------------------------------------------


def test_a_failed_trial_is_one_line_and_resume_keeps_the_best_so_far(
    fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A cell that cannot run prints one line with its cause, not Tune's traceback (which
    stays in the trial's error file) nor Tune's own blocks. After a resume, the progress
    line's best so far still counts the trial that finished before it.

    The driver runs as a command: Tune's log records reach a terminal there, while
    pytest's own logging capture would hide them in this process."""
    results = tmp_path / "results"
    misfit = tmp_path / "misfit.pt"  # weights that do not fit the encoder: found in the trial
    torch.save({"not_a_resnet.weight": torch.zeros(3)}, misfit)
    first = _sweep_command(
        "--preset", "quick", "--augs", "FD", "--frontends", "stft3", "raw1d", "--no-controls",
        "--max-concurrent", "1", "--results", str(results), "--run-name", "r1",
        "--cell-set", f"raw1d-FD-FD:model.pretrained={misfit}",
        *_tiny_flags(fsdd_root, cache_dir),
    )  # fmt: skip
    terminal = first.stdout + first.stderr
    assert first.returncode == EXIT_TRIALS_FAILED, terminal
    assert "Traceback" not in terminal and 'File "' not in terminal, terminal
    assert "errored after" not in terminal and "Configuration for experiment" not in terminal
    error_file = results / "r1" / "tune" / "raw1d-FD-FD" / "error.txt"
    (failed,) = [line for line in first.stdout.splitlines() if "FAILED   raw1d-FD-FD" in line]
    assert "does not fit encoder" in failed and f"(traceback: {error_file})" in failed
    kept = error_file.read_text()  # Ray's form of a traceback: the frames, then the error
    assert 'File "' in kept and "in run_trial" in kept and "does not fit encoder" in kept
    parent_id = json.loads((results / "r1" / "sweep.json").read_text())["identity"]["parent_run_id"]
    runs = find_trial_runs(f"sqlite:///{results / 'mlflow.db'}", parent_id)
    (failed_run,) = [run for run in runs if run.info.status == "FAILED"]
    assert "does not fit encoder" in failed_run.data.tags["clarlab.error"]
    best = re.findall(r"best test_top1 [0-9.]+ \(stft3-FD-FD\)", first.stdout)[-1]

    again = _sweep_command("--resume", "r1", "--retry-failed", "--results", str(results))
    terminal = again.stdout + again.stderr
    assert again.returncode == EXIT_TRIALS_FAILED, terminal
    assert "Traceback" not in terminal and 'File "' not in terminal, terminal
    status_lines = [line for line in again.stdout.splitlines() if " done (" in line]
    assert status_lines and all(best in line for line in status_lines), again.stdout


# --- a short outage (this process, the module's Ray cluster) ----------------------------


def test_a_server_down_for_20_s_loses_no_metric(
    ray_cluster, server: MlflowServer, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Killed once the first trial logged an epoch, started again 20 s later on the same
    store: the calls made meanwhile are retried, the sweep finishes, and every epoch of
    every trial is in MLflow."""
    outage: dict[str, float] = {}

    def outage_of_20_s() -> None:
        outage["down_ms"] = time.time() * 1000
        server.kill()
        time.sleep(20)
        server.start()
        outage["back_ms"] = time.time() * 1000

    watcher = _when_first_loss(server, outage_of_20_s)
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
