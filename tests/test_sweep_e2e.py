"""End to end on a real local Ray cluster, a real SQLite MLflow store and real FSDD audio:
a 2x2 sub-matrix x 2 front ends; then an interrupted sweep (SIGINT to the driver) with one
failing cell, resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from core.report import read_matrix_csv
from core.sweep import TRIAL_ENV, SweepRequest, run_sweep
from core.tracking import find_trial_runs, tracking_client

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _tiny(fsdd_root: Path, cache_dir: Path) -> dict[str, Any]:
    """A trial that exercises every stage (cache, augment, front end, train step, frozen-
    encoder evaluation, MLflow, checkpoint) in a second or two."""
    return {
        "data.root": str(fsdd_root),
        "data.cache_dir": str(cache_dir),
        "data.max_clips": 120,
        "data.sample_rate": 8000,
        "data.clip_seconds": 0.5,
        "model.width": 4,
        "model.proj_hidden_dim": 16,
        "model.proj_dim": 16,
        "model.eval_hidden_dim": 16,
        "train.epochs": 1,
        "train.batch_size": 8,
        "train.max_steps_per_epoch": 1,
        "train.eval_epochs": 1,
    }


@pytest.fixture(scope="module")
def finished_sweep(
    ray_cluster, fsdd_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    results = tmp_path_factory.mktemp("sweep-results")
    request = SweepRequest(
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir),
        axis_values={"augment.pipeline": ["PS", "FD"]},
        controls=False,
        results_dir=results,
        command_line="pytest e2e",
    )
    return run_sweep(request)


def test_sub_matrix_runs_and_reports_to_mlflow(finished_sweep, tmp_path: Path) -> None:
    outcome = finished_sweep
    assert outcome.complete and not outcome.failed
    assert [r.status for r in outcome.records] == ["FINISHED"] * 8

    client = tracking_client(outcome.tracking_uri)
    parent = client.get_run(outcome.parent_run_id)
    tags = parent.data.tags
    assert parent.info.status == "FINISHED"
    assert tags["clarlab.ablation"] == "aug_matrix" and tags["clarlab.preset"] == "quick"
    assert tags["clarlab.dataset"] == "fsdd" and tags["clarlab.command_line"] == "pytest e2e"
    assert len(tags["clarlab.git_commit"]) == 40

    children = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert len(children) == 8
    assert {run.info.status for run in children} == {"FINISHED"}
    by_trial = {run.data.tags["clarlab.trial_id"]: run for run in children}
    assert set(by_trial) == {
        f"{fe}-{a}-{b}" for fe in ("raw1d", "stft3") for a in ["PS", "FD"] for b in ["PS", "FD"]
    }
    for run in children:
        assert {"loss", "test_top1", "test_macro_f1", "samples_per_s"} <= set(run.data.metrics)
        assert 0.0 <= run.data.metrics["test_top1"] <= 1.0

    listed = {item.path for item in client.list_artifacts(outcome.parent_run_id, "report")}
    for name in (
        "aug_matrix_raw1d.png",
        "aug_matrix_stft3.png",
        "aug_matrix_raw1d.csv",
        "aug_matrix_stft3.csv",
        "trials.md",
        "trials.csv",
    ):
        assert f"report/{name}" in listed
    local = Path(client.download_artifacts(outcome.parent_run_id, "report", str(tmp_path)))
    for panel in ("raw1d", "stft3"):
        codes, values = read_matrix_csv(local / f"aug_matrix_{panel}.csv")
        assert codes == ["PS", "FD"]
        cell = np.array(
            [[by_trial[f"{panel}-{a}-{b}"].data.metrics["test_top1"] for b in codes] for a in codes]
        )
        np.testing.assert_allclose(values[:2, :2], cell, atol=1e-4)
        np.testing.assert_allclose(values[:2, 2], cell.mean(axis=1), atol=1e-4)  # row = first
        np.testing.assert_allclose(values[2, :2], cell.mean(axis=0), atol=1e-4)  # col = second
        assert values[2, 2] == pytest.approx(cell.mean(), abs=1e-4)
        assert parent.data.metrics[f"test_top1_mean_{panel}"] == pytest.approx(cell.mean())
    with (local / "trials.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 8

    # The report can be rebuilt later without Ray.
    again = run_sweep(
        SweepRequest(report_only=outcome.run_name, results_dir=outcome.run_dir.parent)
    )
    assert [r.metrics for r in again.records] == [r.metrics for r in outcome.records]


def test_cli_runs_as_a_file_and_as_a_module() -> None:
    for command in (
        [sys.executable, "ablations/run_aug_matrix.py", "--help"],
        [sys.executable, "-m", "ablations.run_aug_matrix", "--help"],
    ):
        shown = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        for flag in ("--preset", "--augs", "--frontends", "--resume", "--dry-run", "--address"):
            assert flag in shown.stdout


def _interrupt_after(results: Path, finished: int, timeout_s: float = 240) -> threading.Thread:
    """SIGINT this process (the sweep's driver) once ``finished`` child runs are FINISHED;
    Tune then saves its state and returns, as on Ctrl-C."""

    def watch() -> None:
        deadline = time.monotonic() + timeout_s
        state_file = results / "r1" / "sweep.json"
        while time.monotonic() < deadline:
            if state_file.is_file():
                identity = json.loads(state_file.read_text())["identity"]
                runs = find_trial_runs(identity["tracking_uri"], identity["parent_run_id"])
                if sum(run.info.status == "FINISHED" for run in runs) >= finished:
                    os.kill(os.getpid(), signal.SIGINT)
                    return
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    return watcher


def test_interrupt_resume_and_failed_cell(
    ray_cluster,
    fsdd_root: Path,
    cache_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = tmp_path / "results"
    # A cell whose config validates and whose data is fine, but which cannot run: weights
    # that do not fit its encoder (found only when the encoder is built, in the trial).
    misfit = tmp_path / "misfit.pt"
    torch.save({"not_a_resnet.weight": torch.zeros(3)}, misfit)
    request = SweepRequest(
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir),
        axis_values={"augment.pipeline": ["PS", "FD"], "frontend.name": ["stft3"]},
        trial_overrides={"stft3-FD-PS": {"model.pretrained": str(misfit)}},
        controls=False,
        max_concurrent=1,
        results_dir=results,
        run_name="r1",
    )
    watcher = _interrupt_after(results, finished=2)
    interrupted = run_sweep(request)
    watcher.join(timeout=5)
    assert not interrupted.complete
    assert "continue it with --resume r1" in capsys.readouterr().out
    uri, parent_id = interrupted.tracking_uri, interrupted.parent_run_id
    before = {
        run.data.tags["clarlab.trial_id"]: run
        for run in find_trial_runs(uri, parent_id)
        if run.info.status == "FINISHED"
    }
    assert set(before) == {"stft3-PS-PS", "stft3-PS-FD"}  # row-major order, one at a time
    assert tracking_client(uri).get_run(parent_id).info.status == "KILLED"

    resumed = run_sweep(SweepRequest(resume="r1", results_dir=results))
    assert resumed.complete and resumed.failed == ["stft3-FD-PS"]
    assert "4 trials: 1 failed, 3 finished" in capsys.readouterr().out

    runs = find_trial_runs(uri, parent_id)
    ids = [run.data.tags["clarlab.trial_id"] for run in runs]
    assert len(ids) == len(set(ids)) == 4  # no duplicate MLflow runs
    status = {run.data.tags["clarlab.trial_id"]: run.info.status for run in runs}
    assert status == {
        "stft3-PS-PS": "FINISHED",
        "stft3-PS-FD": "FINISHED",
        "stft3-FD-PS": "FAILED",
        "stft3-FD-FD": "FINISHED",
    }
    failed_run = next(run for run in runs if run.info.status == "FAILED")
    assert "does not fit encoder 'resnet18'" in failed_run.data.tags["clarlab.error"]
    for trial_id, run in before.items():  # finished trials were not run again
        after = next(r for r in runs if r.info.run_id == run.info.run_id)
        assert after.info.end_time == run.info.end_time, trial_id
        result_lines = (results / "r1" / "tune" / trial_id / "result.json").read_text().splitlines()
        assert len(result_lines) == 1, trial_id  # its one epoch, reported once
    assert tracking_client(uri).get_run(parent_id).info.status == "FINISHED"
    matrix_csv = (results / "r1" / "report" / "aug_matrix_stft3.csv").read_text().splitlines()
    assert matrix_csv[2].split(",")[1] == "failed"  # row FD (first), column PS (second)
    record = next(r for r in resumed.records if r.trial_id == "stft3-FD-PS")
    assert "does not fit encoder" in record.error


def test_trial_processes_get_the_trial_environment(ray_cluster) -> None:
    """Every Ray worker of the job (trial actors, and through Ray Train's propagation its
    controller) sees the capped malloc arenas and the short Ray Train health-check period."""
    import ray

    @ray.remote(num_cpus=0)
    def environment() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in TRIAL_ENV}

    assert ray.get(environment.remote()) == TRIAL_ENV
    assert float(TRIAL_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) < 2.0  # Ray's default


def test_a_two_worker_trial_runs_through_a_torch_trainer(
    ray_cluster, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A cell with two workers goes through Ray Train (gloo on CPU) inside its Tune trial;
    rank 0 logs the child run, and Tune records the reports relayed by the callback."""
    request = SweepRequest(
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir),
        axis_values={"augment.pipeline": ["FD"], "frontend.name": ["stft3"]},
        workers_per_trial=2,
        controls=False,
        results_dir=tmp_path / "results",
        command_line="pytest e2e torch trainer",
    )
    outcome = run_sweep(request)
    assert outcome.resources.use_torch_trainer
    assert [r.status for r in outcome.records] == ["FINISHED"]
    assert 0.0 <= outcome.records[0].metrics["test_top1"] <= 1.0
    (child,) = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert child.info.status == "FINISHED"
    assert child.data.params["train.num_workers"] == "2"
    assert {"loss", "test_top1", "test_macro_f1"} <= set(child.data.metrics)


def test_seeds_controls_and_intervals_reach_the_parent_report(
    ray_cluster, fsdd_root: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A 2x2 sub-matrix at 2 seeds with its controls: every cell's mean and interval in
    the parent's CSV equal what its children logged, and the heatmap marks agree."""
    from core.stats import t_interval

    request = SweepRequest(
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir),
        axis_values={"augment.pipeline": ["FD", "TM"], "frontend.name": ["stft3"]},
        seeds=2,
        results_dir=tmp_path / "results",
        command_line="pytest e2e seeds",
    )
    outcome = run_sweep(request)
    assert outcome.complete and not outcome.failed
    roles = [trial.role for trial in outcome.trials]
    assert roles.count("cell") == 8 and roles.count("untrained") == 2
    assert roles.count("supervised") == 2

    children = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert len(children) == 12 and {run.info.status for run in children} == {"FINISHED"}
    client = tracking_client(outcome.tracking_uri)
    logged: dict[str, dict[int, float]] = {}
    for run in children:
        trial_id = run.data.tags["clarlab.trial_id"]
        cell_id, _, seed = trial_id.rpartition("-seed")
        logged.setdefault(cell_id, {})[int(seed)] = run.data.metrics["test_top1"]
    # The test split is FSDD's whole official one: 300 clips, never subsampled.
    sample = children[0].info.run_id
    predictions = Path(client.download_artifacts(sample, "evaluation", str(tmp_path / "p")))
    assert len((predictions / "test_predictions.csv").read_text().splitlines()) == 301

    folder = Path(client.download_artifacts(outcome.parent_run_id, "report", str(tmp_path)))
    with (folder / "aug_matrix_cells.csv").open() as handle:
        rows = {row["cell"]: row for row in csv.DictReader(handle)}
    assert set(rows) == set(logged) == {
        "stft3-FD-FD", "stft3-FD-TM", "stft3-TM-FD", "stft3-TM-TM",
        "stft3-untrained", "stft3-supervised",
    }  # fmt: skip
    for cell_id, by_seed in logged.items():
        expected = t_interval([by_seed[0], by_seed[1]])
        row = rows[cell_id]
        assert row["seeds"] == "2"
        assert float(row["mean"]) == pytest.approx(expected.mean, abs=1e-5)
        assert float(row["ci_low"]) == pytest.approx(expected.low, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx(expected.high, abs=1e-5)
    assert rows["stft3-untrained"]["role"] == "untrained"
    assert rows["stft3-supervised"]["role"] == "supervised"

    matrix = outcome.report.matrices["stft3"]
    for i, first in enumerate(matrix.codes):
        for j, second in enumerate(matrix.codes):
            row = rows[f"stft3-{first}-{second}"]
            assert matrix.within_best[i, j] == (row["within_noise_of_best"] == "True")
            assert matrix.worse_than_control[i, j] == (row["vs_untrained_control"] == "below")
            assert matrix.values[i, j] == pytest.approx(float(row["mean"]), abs=1e-5)
    assert {p.name for p in folder.iterdir()} >= {"aug_matrix_stft3.png", "curves_stft3.png"}
    summary = outcome.summary
    assert "stft3: untrained-encoder control test_top1" in summary
    assert "cells within noise of it (2 seeds, paired t test, 95 %)" in summary
    assert "against the untrained control" in summary
    assert "quick preset: a pipeline check, not results" in summary
