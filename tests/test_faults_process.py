"""Failures with real processes: a Train worker SIGKILLed mid-trial (in-process and in a
2-worker ``TorchTrainer``), the sweep driver SIGKILLed mid-sweep and resumed (single- and
multi-worker trials), Ctrl-C and a resume with a failing cell, a results folder on a
nearly full disk, and a checkpoint writer killed mid-write.

Faults come from the ``CLARLAB_INJECT_FAULT`` hook of :mod:`core.train.faults`: each spec
fires once, when its marker file exists. In-process sweeps run on the session's Ray
cluster, whose trials read their specs from a file (``ray_cluster.arm`` adds one and its
marker); a driver run as a command gets its spec in its environment. Every trial here is
tiny (real FSDD audio, a width-4 ResNet18, one step an epoch), and every MLflow run is
read back from the real SQLite store.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.entities import ViewType

from core.sweep import SweepRequest, run_sweep
from core.sweep.trust import UntrustedResultsError
from core.tracking import TAG_RESUME_COUNT, TAG_TRIAL_ID, find_trial_runs, tracking_client
from core.tracking.lifecycle import TAG_SUPERSEDED_BY, TAG_SUPERSEDES
from core.train import CHECKPOINT_FILE, FAULT_ENV
from tests.test_sweep_e2e import _tiny as tiny_trial

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _tiny(fsdd_root: Path, cache_dir: Path, epochs: int) -> dict[str, Any]:
    """The end-to-end tests' tiny trial with ``epochs`` one-step epochs."""
    return {**tiny_trial(fsdd_root, cache_dir), "train.epochs": epochs}


def _steps(client: Any, run_id: str, key: str = "loss") -> list[int]:
    """The steps of a metric's MLflow history, in the order they were logged."""
    history = client.get_metric_history(run_id, key)
    return [point.step for point in sorted(history, key=lambda p: (p.timestamp, p.step))]


def _wait_for(condition: Callable[[], Any], what: str, timeout_s: float = 240) -> Any:
    """Poll ``condition`` until it returns something truthy (and return that)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"gave up waiting for {what}")


# --- checkpoints and disk: no Ray -------------------------------------------------------

_STALLED_WRITER = """
import sys, time
from pathlib import Path
import torch
import core.train as train

folder, flag = Path(sys.argv[1]), Path(sys.argv[2])
real_save = torch.save

class Stalling:
    '''Passes writes through; after the first 4 MB it says so and stalls (to be killed).'''
    def __init__(self, stream):
        self.stream, self.written = stream, 0
    def write(self, data):
        count = self.stream.write(data)
        self.written += len(data)
        if self.written > 4 * 2**20 and not flag.exists():
            self.stream.flush()
            flag.touch()
            time.sleep(120)
        return count
    def __getattr__(self, name):
        return getattr(self.stream, name)

def stalling_save(state, target, *args, **kwargs):
    if hasattr(target, "write"):
        target = Stalling(target)
    else:  # a path: open it ourselves so that the stall happens mid-file too
        target = Stalling(open(target, "wb"))
    return real_save(state, target, *args, **kwargs)

torch.save = stalling_save
train.save_checkpoint(folder, {"epoch": 1, "weights": torch.ones(4 * 2**20)})
"""


@pytest.mark.parametrize("had_checkpoint", [True, False])
def test_a_checkpoint_writer_killed_mid_write_leaves_no_torn_state(
    tmp_path: Path, had_checkpoint: bool
) -> None:
    """SIGKILL a process halfway through writing ``state.pt`` (16 MB of weights, killed
    after 4 MB): the folder holds the previous complete checkpoint, or none, and never a
    file that ``torch.load(weights_only=True)`` fails on."""
    from core.train import load_checkpoint, save_checkpoint

    folder, flag = tmp_path / "ckpt", tmp_path / "half-written"
    if had_checkpoint:
        save_checkpoint(folder, {"epoch": 0, "weights": torch.zeros(8)})
    writer = subprocess.Popen(
        [sys.executable, "-c", _STALLED_WRITER, str(folder), str(flag)],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: flag.exists() or writer.poll() is not None, "the writer to stall")
        assert writer.poll() is None, writer.stderr.read() if writer.stderr else ""
        writer.send_signal(signal.SIGKILL)
    finally:
        writer.kill()
        writer.wait()
    assert writer.returncode == -signal.SIGKILL
    if had_checkpoint:
        state = load_checkpoint(folder)  # torch.load(..., weights_only=True)
        assert state["epoch"] == 0 and torch.equal(state["weights"], torch.zeros(8))
    else:
        assert not (folder / CHECKPOINT_FILE).exists()
    # The killed write's bytes sit in a temporary file beside it, never under the real name.
    leftovers = [p for p in folder.iterdir() if p.name != CHECKPOINT_FILE]
    assert leftovers and all(p.name.endswith(".tmp") for p in leftovers)
    assert max(p.stat().st_size for p in leftovers) > 4 * 2**20


def test_a_checkpoint_write_that_fails_keeps_the_old_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that raises half-way (a disk that fills up) leaves the previous checkpoint
    loadable and no temporary file behind."""
    from core import train

    folder = tmp_path / "ckpt"
    train.save_checkpoint(folder, {"epoch": 0, "weights": torch.zeros(8)})
    real_save = torch.save

    def disk_full(state: Any, stream: Any, *args: Any, **kwargs: Any) -> None:
        real_save(state, stream, *args, **kwargs)  # the bytes reach the file...
        raise OSError(28, "No space left on device")  # ...and then the disk is full

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train.save_checkpoint(folder, {"epoch": 1, "weights": torch.ones(1024)})
    assert train.load_checkpoint(folder)["epoch"] == 0
    assert [p.name for p in folder.iterdir()] == [CHECKPOINT_FILE]


def test_a_results_folder_on_a_nearly_full_disk_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Below the free-space threshold the check names the folder, its free space and the
    fixes; a folder not created yet is measured on the disk that would hold it; cloud
    storage is not measured (a local or file:// one is); a bad threshold is refused."""
    from core.config import ConfigError
    from core.sweep.disk import MIN_FREE_ENV, DiskSpaceError, check_sweep_disk, free_mb

    results = tmp_path / "not-yet" / "results"
    free = free_mb(results)
    assert free > 0 and not results.exists()
    monkeypatch.setenv(MIN_FREE_ENV, str(int(free) + 10**9))
    with pytest.raises(DiskSpaceError) as refused:
        check_sweep_disk(results, storage_path="s3://bucket/clarlab")
    message = str(refused.value)
    assert str(results) in message and "results folder" in message
    assert re.search(r"only [\d,]+ MB free under", message)
    assert "--results" in message and MIN_FREE_ENV in message
    assert isinstance(refused.value, ConfigError)  # the CLI turns it into exit code 2
    monkeypatch.setenv(MIN_FREE_ENV, "1")
    check_sweep_disk(results, storage_path="s3://bucket/clarlab")  # enough room: silent
    check_sweep_disk(results, storage_path=f"file://{tmp_path}/storage")
    monkeypatch.setenv(MIN_FREE_ENV, "lots")
    with pytest.raises(ConfigError, match=MIN_FREE_ENV):
        check_sweep_disk(results)


@pytest.mark.parametrize(
    "script",
    [
        ["ablations.run_aug_matrix", "--augs", "FD", "--frontends", "stft3", "--no-controls"],
        ["ablations.run_search", "--samples", "1", "--scheduler", "fifo"],
    ],
    ids=["grid", "search"],
)
def test_the_cli_refuses_a_nearly_full_results_disk_before_ray_starts(
    script: list[str], fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The whole command, a grid's or a search's: exit 2 with one line naming the folder
    and the fix, and nothing written (no sweep folder, no MLflow store) -- it fails before
    Ray starts."""
    from core.sweep.disk import MIN_FREE_ENV, free_mb

    results = tmp_path / "results"
    environment = {**os.environ, MIN_FREE_ENV: str(int(free_mb(tmp_path)) + 10**9)}
    settings = _cli_settings(fsdd_root, cache_dir, epochs=1)
    if script[0].endswith("run_search"):  # fields a search samples cannot be --set
        settings = [
            flag for flag in settings if "batch_size" not in flag and "proj_dim" not in flag
        ]
    command = [
        sys.executable, "-m", *script, "--num-cpus", "1", "--results", str(results), *settings,
    ]  # fmt: skip
    done = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert f"under {results} (the results folder)" in done.stderr
    assert MIN_FREE_ENV in done.stderr
    assert not results.exists() or not any(results.iterdir())


# --- the driver SIGKILLed: a command joined to the session's Ray, as `ray submit` runs one ---


def _cli_settings(fsdd_root: Path, cache_dir: Path, epochs: int) -> list[str]:
    return [f"--set={key}={value}" for key, value in _tiny(fsdd_root, cache_dir, epochs).items()]


def _session_processes(session: int) -> list[int]:
    """Live processes of a session (a driver started with ``start_new_session`` and
    whatever it started itself), zombies left out."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(entry.name))
    return found


def _kill_session(session: int) -> None:
    """SIGKILL what is left of a driver's session (some processes sit in process groups
    of their own, so a process-group kill would miss them). Only this session: the
    cluster the driver joined lives on, and Ray ends the dead driver's trials there."""
    for _ in range(50):
        left = _session_processes(session)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):  # ended meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"processes of session {session} survived SIGKILL: {left}")


@dataclass
class Driver:
    """A sweep driver in a session of its own."""

    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()


def _start_driver(
    arguments: list[str], log: Path, address: str, fault: str | None = None
) -> Driver:
    """``run_aug_matrix.py ARGS --address ADDRESS`` in a session of its own: a driver on
    a running cluster (the session's), its trials there, with ``fault`` armed for them."""
    environment = {key: value for key, value in os.environ.items() if key != FAULT_ENV}
    environment.pop("RAY_ADDRESS", None)  # the session's token comes with os.environ
    if fault:
        environment[FAULT_ENV] = fault
    command = [sys.executable, "-m", "ablations.run_aug_matrix", *arguments, "--address", address]
    with log.open("w") as stream:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=environment,
            stdout=stream,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
    return Driver(process, log)


def _sigkill_driver(driver: Driver) -> None:
    """SIGKILL the driver alone (what `kill -9` or the OOM killer does), then clean up the
    Ray processes it leaves behind."""
    driver.process.send_signal(signal.SIGKILL)
    driver.process.wait()
    _kill_session(driver.process.pid)


def _run_driver(arguments: list[str], log: Path, address: str, timeout_s: float = 240) -> int:
    driver = _start_driver(arguments, log, address)
    try:
        return driver.process.wait(timeout=timeout_s)
    finally:
        if driver.process.poll() is None:
            driver.process.kill()
            driver.process.wait()
        _kill_session(driver.process.pid)


def _sweep_identity(run_dir: Path) -> tuple[str, str] | None:
    """(tracking URI, parent run id) once the driver wrote ``sweep.json``."""
    state_file = run_dir / "sweep.json"
    if not state_file.is_file():
        return None
    identity = json.loads(state_file.read_text())["identity"]
    return identity["tracking_uri"], identity["parent_run_id"]


def _tune_has_checkpoint(experiment_path: Path, trial_id: str) -> bool:
    """Whether Tune's saved experiment state holds a checkpoint of ``trial_id`` (what a
    resume restores the trial from)."""
    from ray import tune

    if not tune.Tuner.can_restore(str(experiment_path)):
        return False
    try:
        analysis = tune.ExperimentAnalysis(str(experiment_path))
    except (OSError, ValueError):  # caught while the driver rewrites it: look again
        return False
    return any(
        trial.config["cell"]["trial_id"] == trial_id and trial.checkpoint is not None
        for trial in analysis.trials
    )


def _train_checkpoint_epoch(trainer_dir: Path) -> int | None:
    """The epoch of the latest checkpoint in Ray Train's record of a ``TorchTrainer`` run
    (what a trainer of the same name restores from); None while it names none."""
    try:
        snapshot = json.loads((trainer_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):  # not written yet, or caught mid-write: look again
        return None
    latest = snapshot.get("latest_checkpoint_result") or {}
    if not latest.get("checkpoint_dir_name"):
        return None
    return int((latest.get("metrics") or {}).get("epoch", -1))


def _assert_clean_sweep(run_dir: Path, trial_ids: set[str], epochs: int) -> dict[str, Any]:
    """Every trial TERMINATED once in Tune's state; one active MLflow run per trial id,
    FINISHED, with loss steps 0..epochs-1 logged once each; no run of the experiment left
    RUNNING (the parent included, superseded runs included). Returns the runs by trial id."""
    from ray import tune

    identity = _sweep_identity(run_dir)
    assert identity is not None, f"no sweep.json in {run_dir}"
    uri, parent_id = identity
    analysis = tune.ExperimentAnalysis(str(run_dir / "tune"))
    names = sorted(trial.config["cell"]["trial_id"] for trial in analysis.trials)
    assert names == sorted(trial_ids)
    assert {trial.status for trial in analysis.trials} == {"TERMINATED"}

    client = tracking_client(uri)
    runs = find_trial_runs(uri, parent_id)
    by_trial = {run.data.tags[TAG_TRIAL_ID]: run for run in runs}
    assert len(runs) == len(by_trial) and set(by_trial) == trial_ids  # no duplicate runs
    for trial_id, run in by_trial.items():
        assert run.info.status == "FINISHED", trial_id
        assert _steps(client, run.info.run_id) == list(range(epochs)), trial_id
        assert _steps(client, run.info.run_id, "epoch") == list(range(epochs)), trial_id
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    everything = client.search_runs([parent.info.experiment_id], run_view_type=ViewType.ALL)
    assert [run.info.run_id for run in everything if run.info.status == "RUNNING"] == []
    return by_trial


def test_a_sigkilled_driver_resumes_without_lost_or_duplicated_trials(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """A 4-trial sweep, one trial at a time: once the first trial finished, the second is
    held right after it logged its last epoch to MLflow and before that epoch's checkpoint
    is reported, and the driver is SIGKILLed there. ``--resume`` in a new process finishes
    the sweep: nothing lost, nothing run or logged twice, nothing left RUNNING."""
    results, marker = tmp_path / "results", tmp_path / "pause-marker"
    run_dir = results / "r"
    common = ["--results", str(results), "--progress-every", "600"]
    common += [
        "--tracking-uri",
        f"sqlite:///{mlflow_store / 'mlflow.db'}",
        "--experiment",
        "pytest-sigkill",
    ]
    address = ray_cluster.cluster.address
    first_run = [
        "--augs", "PS", "FD", "--frontends", "stft3", "--no-controls", "--max-concurrent", "1",
        "--run-name", "r", *common, *_cli_settings(fsdd_root, cache_dir, epochs=2),
    ]  # fmt: skip
    driver = _start_driver(
        first_run, tmp_path / "first.log", address, fault=f"pause_before_report:1:0:0:{marker}"
    )
    try:
        uri, parent_id = _wait_for(lambda: _sweep_identity(run_dir), "sweep.json")

        def finished_runs() -> list[Any]:
            runs = find_trial_runs(uri, parent_id)
            return [run for run in runs if run.info.status == "FINISHED"]

        (done_before,) = _wait_for(finished_runs, "the first trial to finish")
        marker.touch()  # arm: the next trial to end its epoch 1 is held there
        _wait_for(lambda: not marker.exists(), "the second trial to reach the fault")
        (held,) = [run for run in find_trial_runs(uri, parent_id) if run.info.status == "RUNNING"]
        held_id = held.data.tags[TAG_TRIAL_ID]
        _wait_for(
            lambda: _tune_has_checkpoint(run_dir / "tune", held_id),
            "Tune to save the held trial's epoch-0 checkpoint",
        )
        assert driver.process.poll() is None, driver.output()
        client = tracking_client(uri)
        assert _steps(client, held.info.run_id) == [0, 1]  # epoch 1 logged, not checkpointed
    finally:
        _sigkill_driver(driver)
    assert driver.process.returncode == -signal.SIGKILL

    # A killed driver never recorded what Tune saved: the resume needs the user's word
    # (refused before Ray or Tune is touched, so checked in this process).
    with pytest.raises(UntrustedResultsError, match="no digests"):
        run_sweep(SweepRequest(resume="r", results_dir=results))
    code = _run_driver(
        ["--resume", "r", "--trust-results", *common], tmp_path / "resume.log", address
    )
    assert code == 0, (tmp_path / "resume.log").read_text()

    trial_ids = {f"stft3-{a}-{b}" for a in ("PS", "FD") for b in ("PS", "FD")}
    by_trial = _assert_clean_sweep(run_dir, trial_ids, epochs=2)
    # The held trial continued its own run from its checkpoint: same run, resumed once,
    # epoch 1 trained again but logged once.
    resumed = by_trial[held_id]
    assert resumed.info.run_id == held.info.run_id
    assert resumed.data.tags[TAG_RESUME_COUNT] == "1"
    # The trial finished before the kill was not run again.
    first_id = done_before.data.tags[TAG_TRIAL_ID]
    assert by_trial[first_id].info.end_time == done_before.info.end_time
    result_lines = (run_dir / "tune" / first_id / "result.json").read_text().splitlines()
    assert len(result_lines) == 2  # its two epochs, reported once each


def _two_worker_run(
    fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path, experiment: str
) -> tuple[list[str], list[str]]:
    """(first run's arguments, the arguments both runs share) of a one-cell grid whose
    trial is a 2-worker ``TorchTrainer`` (gloo) of two epochs, allowed one group restart."""
    common = ["--results", str(tmp_path / "results"), "--progress-every", "600"]
    common += [
        "--tracking-uri",
        f"sqlite:///{mlflow_store / 'mlflow.db'}",
        "--experiment",
        experiment,
    ]
    first_run = [
        "--augs", "FD", "--frontends", "stft3", "--no-controls", "--workers-per-trial", "2",
        "--max-failures", "1", "--run-name", "r", *common,
        *_cli_settings(fsdd_root, cache_dir, epochs=2),
    ]  # fmt: skip
    return first_run, common


def _assert_two_worker_run(run_dir: Path, resumes: int) -> Any:
    """The one cell FINISHED in one MLflow run, each epoch logged once, continued
    ``resumes`` times, with the evaluation's figures and tables beside it."""
    run = _assert_clean_sweep(run_dir, {TWO_WORKER_CELL}, epochs=2)[TWO_WORKER_CELL]
    assert run.data.params["train.num_workers"] == "2"
    assert run.data.tags[TAG_RESUME_COUNT] == str(resumes)
    client = tracking_client(_sweep_identity(run_dir)[0])
    assert {"loss", "test_top1", "test_macro_f1"} <= set(run.data.metrics)
    assert "config.yaml" in {item.path for item in client.list_artifacts(run.info.run_id)}
    evaluation = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
    assert any(path.endswith(".png") for path in evaluation)
    assert any(path.endswith(".csv") for path in evaluation)
    return run


TWO_WORKER_CELL = "stft3-FD-FD"
# The two-worker tests share a lane under xdist: two worker groups at once (four training
# processes and two controllers) starve each other on a 2-core machine.
TWO_WORKER_LANE = pytest.mark.xdist_group("two-worker-trials")


@TWO_WORKER_LANE
def test_a_two_worker_trial_restarts_its_worker_group_after_a_dead_worker(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """Rank 0 of a 2-worker trial dies after epoch 1 reached MLflow and before its
    checkpoint was reported: Ray Train restarts the worker group from epoch 0's checkpoint
    (``--max-failures 1``) and the trial finishes in the run it started, epoch 1 logged
    once, with the callback's reports in Tune."""
    first_run, _ = _two_worker_run(
        fsdd_root, cache_dir, mlflow_store, tmp_path, "pytest-dead-worker"
    )
    killed = tmp_path / "kill"
    killed.touch()
    log = tmp_path / "first.log"
    driver = _start_driver(
        first_run, log, ray_cluster.cluster.address, fault=f"kill_before_report:1:0:0:{killed}"
    )
    try:
        code = driver.process.wait(timeout=240)
    finally:
        _sigkill_driver(driver)
    assert code == 0, log.read_text()
    assert not killed.exists(), "the worker was never killed"
    _assert_two_worker_run(tmp_path / "results" / "r", resumes=1)
    result_lines = (
        tmp_path / "results" / "r" / "tune" / TWO_WORKER_CELL / "result.json"
    ).read_text()
    assert len(result_lines.splitlines()) >= 2  # the epochs the callback relayed to Tune


@TWO_WORKER_LANE
def test_a_two_worker_trial_resumes_its_trainers_checkpoint_after_a_dead_driver(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """The driver of a 2-worker trial is SIGKILLed after epoch 1 reached MLflow and before
    its checkpoint was reported: ``--resume`` restores the trainer's epoch-0 checkpoint
    (its run name is stable per trial) and continues the run the checkpoint names."""
    first_run, common = _two_worker_run(
        fsdd_root, cache_dir, mlflow_store, tmp_path, "pytest-dead-driver"
    )
    run_dir = tmp_path / "results" / "r"
    paused = tmp_path / "pause"
    paused.touch()
    address = ray_cluster.cluster.address
    fault = f"pause_before_report:1:0:0:{paused}"
    driver = _start_driver(first_run, tmp_path / "first.log", address, fault=fault)
    trainer_dir = run_dir / "train" / f"r-{TWO_WORKER_CELL}"
    try:
        uri, parent_id = _wait_for(lambda: _sweep_identity(run_dir), "sweep.json")
        _wait_for(lambda: not paused.exists(), "rank 0 to reach the pause", timeout_s=200)
        _wait_for(
            lambda: _train_checkpoint_epoch(trainer_dir) == 0,
            "Ray Train to record the epoch-0 checkpoint",
        )
        assert driver.process.poll() is None, driver.output()
        (held,) = find_trial_runs(uri, parent_id)
        assert held.info.status == "RUNNING"
        assert _steps(tracking_client(uri), held.info.run_id) == [0, 1]
    finally:
        _sigkill_driver(driver)

    resume = ["--resume", "r", "--trust-results", *common]  # killed: nothing recorded
    code = _run_driver(resume, tmp_path / "resume.log", address, timeout_s=240)
    assert code == 0, (tmp_path / "resume.log").read_text()
    run = _assert_two_worker_run(run_dir, resumes=1)
    assert run.info.run_id == held.info.run_id  # the checkpoint's run, continued


def test_ctrl_c_then_resume_prints_one_line_per_failed_cell(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """Ctrl-C (SIGINT) to a driver once two of its four cells finished: Tune saves its
    state, the driver writes the partial report, says how to continue and exits 130,
    without a traceback. The resume (``--retry-failed``) runs what is left, and the last
    cell cannot run (weights that do not fit its encoder, found only in the trial): its
    failure is one line with the cause and where its traceback is kept, not Tune's
    traceback nor its blocks; the progress line's best so far still counts the cells
    finished before the interrupt; exit 3. Nothing ran or was logged twice."""
    results = tmp_path / "results"
    run_dir = results / "r1"
    misfit = tmp_path / "misfit.pt"
    torch.save({"not_a_resnet.weight": torch.zeros(3)}, misfit)
    address = ray_cluster.cluster.address
    common = ["--results", str(results), "--progress-every", "600"]
    common += [
        "--tracking-uri",
        f"sqlite:///{mlflow_store / 'mlflow.db'}",
        "--experiment",
        "pytest-ctrl-c",
    ]
    first_run = [
        "--augs", "PS", "FD", "--frontends", "stft3", "--no-controls", "--max-concurrent", "1",
        "--run-name", "r1", "--cell-set", f"stft3-FD-FD:model.pretrained={misfit}", *common,
        *_cli_settings(fsdd_root, cache_dir, epochs=1),
    ]  # fmt: skip
    driver = _start_driver(first_run, tmp_path / "first.log", address)
    try:
        uri, parent_id = _wait_for(lambda: _sweep_identity(run_dir), "sweep.json")

        def two_finished() -> bool:
            runs = find_trial_runs(uri, parent_id)
            return sum(run.info.status == "FINISHED" for run in runs) >= 2

        _wait_for(two_finished, "two cells to finish")
        driver.process.send_signal(signal.SIGINT)  # what Ctrl-C sends
        code = driver.process.wait(timeout=120)
    finally:
        if driver.process.poll() is None:
            driver.process.kill()
            driver.process.wait()
        _kill_session(driver.process.pid)
    shown = driver.output()
    assert code == 130, shown
    assert "continue it with --resume r1" in shown, shown
    assert "Traceback" not in shown and 'File "' not in shown, shown
    # The two cells seen finished before Ctrl-C. (The one running then is stopped at its
    # next report; where Tune had not recorded its end, the resume runs it again.)
    before = {
        run.data.tags[TAG_TRIAL_ID]: run
        for run in find_trial_runs(uri, parent_id)
        if run.data.tags[TAG_TRIAL_ID] in ("stft3-PS-PS", "stft3-PS-FD")
    }
    assert {run.info.status for run in before.values()} == {"FINISHED"}
    best_before = max(float(run.data.metrics["test_top1"]) for run in before.values())

    code = _run_driver(
        ["--resume", "r1", "--retry-failed", *common], tmp_path / "resume.log", address
    )
    shown = (tmp_path / "resume.log").read_text()
    assert code == 3, shown  # some cells failed
    assert "Traceback" not in shown and 'File "' not in shown, shown
    assert "errored after" not in shown and "Configuration for experiment" not in shown
    error_file = run_dir / "tune" / "stft3-FD-FD" / "error.txt"
    (failed_line,) = [line for line in shown.splitlines() if "FAILED   stft3-FD-FD" in line]
    assert "does not fit encoder" in failed_line and f"(traceback: {error_file})" in failed_line
    kept = error_file.read_text()  # Ray's form of a traceback: the frames, then the error
    assert 'File "' in kept and "in run_trial" in kept and "does not fit encoder" in kept
    best = [float(value) for value in re.findall(r"best test_top1 ([0-9.]+) \(", shown)]
    assert best and all(value >= best_before - 1e-4 for value in best), shown  # 4 digits shown

    runs = find_trial_runs(uri, parent_id)
    ids = [run.data.tags[TAG_TRIAL_ID] for run in runs]
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 4  # one run per cell
    failed = next(run for run in runs if run.data.tags[TAG_TRIAL_ID] == "stft3-FD-FD")
    assert failed.info.status == "FAILED"
    assert "does not fit encoder" in failed.data.tags["clarlab.error"]
    for trial_id, run in before.items():  # cells finished before the interrupt: not rerun
        after = next(r for r in runs if r.info.run_id == run.info.run_id)
        assert after.info.end_time == run.info.end_time, trial_id
        lines = (run_dir / "tune" / trial_id / "result.json").read_text().splitlines()
        assert len(lines) == 1, trial_id  # its one epoch, reported once
    matrix = (run_dir / "report" / "aug_matrix_stft3.csv").read_text().splitlines()
    assert matrix[2].split(",")[2] == "failed"  # row FD (first), column FD (second)


# --- a Train worker SIGKILLed: in-process sweeps on the session's Ray, which carries the hook


def _one_cell(
    fsdd_root: Path, cache_dir: Path, store: Path, results: Path, **fields: Any
) -> SweepRequest:
    """One tiny cell on the session's Ray, logged to the session's MLflow store."""
    epochs = fields.pop("epochs")
    return SweepRequest(
        tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir, epochs),
        axis_values={"augment.pipeline": ["FD"], "frontend.name": ["stft3"]},
        controls=False,
        results_dir=results,
        progress_every_s=600,
        **{"max_failures": 1, **fields},
    )


def test_a_killed_in_process_trial_resumes_without_logging_an_epoch_twice(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """The trial's process dies after epoch 1 reached MLflow, before its checkpoint was
    reported; Tune restarts it from epoch 0's checkpoint (max_failures=1). It finishes in
    its one MLflow run, whose loss steps are 0, 1, 2 -- epoch 1 trained twice, logged
    once, and what MLflow holds for it is what the finished attempt reported."""
    fault = ray_cluster.arm("kill_before_report", 1, 0, 0)
    outcome = run_sweep(
        _one_cell(fsdd_root, cache_dir, mlflow_store, tmp_path / "results", epochs=3)
    )
    (record,) = outcome.records
    assert record.status == "FINISHED", record.error
    assert not fault.exists(), "the fault never fired"

    client = tracking_client(outcome.tracking_uri)
    (run,) = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_RESUME_COUNT] == "1"  # continued, not started over
    assert _steps(client, run.info.run_id) == [0, 1, 2]
    logged = {p.step: p.value for p in client.get_metric_history(run.info.run_id, "loss")}
    reported = dict(record.history["loss"])  # epochs trained -> loss Tune got last
    for epoch in range(3):
        assert logged[epoch] == pytest.approx(reported[epoch + 1], rel=1e-4), epoch


def test_a_trial_killed_before_its_first_checkpoint_starts_a_new_run(
    ray_cluster: Any, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """Killed after epoch 0 reached MLflow and before any checkpoint, the trial starts over
    from scratch: that attempt gets a new run (loss steps 0, 1), the old one (step 0 of the
    killed attempt) ends KILLED, points to its successor and leaves the active runs, so the
    sweep still shows one run per trial."""
    fault = ray_cluster.arm("kill_before_report", 0, 0, 0)
    outcome = run_sweep(
        _one_cell(fsdd_root, cache_dir, mlflow_store, tmp_path / "results", epochs=2)
    )
    (record,) = outcome.records
    assert record.status == "FINISHED", record.error
    assert not fault.exists(), "the fault never fired"

    client = tracking_client(outcome.tracking_uri)
    (run,) = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id) == [0, 1]
    assert TAG_RESUME_COUNT not in run.data.tags
    old = client.get_run(run.data.tags[TAG_SUPERSEDES])
    assert old.data.tags[TAG_SUPERSEDED_BY] == run.info.run_id
    assert old.data.tags[TAG_TRIAL_ID] == run.data.tags[TAG_TRIAL_ID]
    assert (old.info.status, old.info.lifecycle_stage) == ("KILLED", "deleted")
    assert _steps(client, old.info.run_id) == [0]
    assert run.data.params == old.data.params
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
