"""End to end on the session's Ray cluster, a real SQLite MLflow store and real FSDD
audio: a 2x2 sub-matrix x 2 front ends, and seeds with controls and intervals. (An
interrupted sweep with a failing cell, resumed, runs as a command in
``tests/test_faults_process.py``.)"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

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
        "train.final_figures": False,  # drawn and checked in test_ablation_scripts.py
    }


@pytest.fixture(scope="module")
def finished_sweep(
    ray_cluster, fsdd_root: Path, cache_dir: Path, tmp_path_factory: pytest.TempPathFactory
):
    results = tmp_path_factory.mktemp("sweep-results")
    # The shipped matrix with one named departure from its preset's batch, which the tiny
    # override takes: the report and the parent run must say so.
    space = results / "aug_matrix_deviating.yaml"
    space.write_text(
        (ROOT / "search_spaces" / "aug_matrix.yaml").read_text()
        + "\ndeviations:\n  - {preset: quick, field: train.batch_size, paper: 32,"
        + " why: 'a tiny test batch'}\n"
    )
    request = SweepRequest(
        space=str(space),
        preset="quick",
        overrides=_tiny(fsdd_root, cache_dir),
        axis_values={"augment.pipeline": ["PS", "FD"]},
        controls=False,
        max_concurrent=1,  # one reused trial actor: its start costs more than these trials
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
    # The departure from the paper is in the summary, the report folder and a parent tag.
    departure = "train.batch_size=8 (the paper: 32): a tiny test batch"
    assert "DEVIATES FROM THE PAPER" in outcome.summary and departure in outcome.summary
    assert departure in (local / "deviations.txt").read_text()
    assert tags["clarlab.deviations"] == departure

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


def test_trial_processes_get_the_trial_environment(ray_cluster) -> None:
    """Every Ray worker of the job (trial actors, and through Ray Train's propagation its
    controller) sees the capped malloc arenas and the short Ray Train health-check period."""
    import ray

    @ray.remote(num_cpus=0)
    def environment() -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in TRIAL_ENV}

    assert ray.get(environment.remote()) == TRIAL_ENV
    assert float(TRIAL_ENV["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"]) < 2.0  # Ray's default


def test_seeds_controls_and_intervals_reach_the_parent_report(
    ray_cluster, fsdd_root: Path, cache_dir: Path, mlflow_store: Path, tmp_path: Path
) -> None:
    """A 2x2 sub-matrix at 2 seeds with its controls, under ASHA (2 epochs, compared after
    the first): the controls run their whole budget and some cells stop at the rung; every
    cell's mean and interval in the parent's CSV equal what its children logged (a stopped
    cell: its last evaluation), and the heatmap marks agree."""
    from core.stats import t_interval

    request = SweepRequest(
        preset="quick",
        overrides={**_tiny(fsdd_root, cache_dir), "train.epochs": 2, "train.eval_every": 1},
        axis_values={"augment.pipeline": ["FD", "TM"], "frontend.name": ["stft3"]},
        seeds=2,
        scheduler="asha",
        max_concurrent=1,  # one reused trial actor: its start costs more than these trials
        results_dir=tmp_path / "results",
        tracking_uri=f"sqlite:///{mlflow_store / 'mlflow.db'}",  # the session's: no new schema
        command_line="pytest e2e seeds",
        progress_every_s=600,
    )
    outcome = run_sweep(request)
    assert outcome.complete and not outcome.failed
    epochs = {record.trial_id: record.epochs for record in outcome.records}
    for seed in (0, 1):
        assert epochs[f"stft3-supervised-seed{seed}"] == 2  # controls: never compared
        assert epochs[f"stft3-untrained-seed{seed}"] == 1  # the control trains one epoch
    cells = [record for record in outcome.records if record.role == "cell"]
    assert all(record.epochs in (1, 2) for record in cells)
    assert max(record.epochs for record in cells) == 2  # the first at the rung goes on
    assert all(record.stopped_early == (record.epochs == 1) for record in cells)
    roles = [trial.role for trial in outcome.trials]
    assert roles.count("cell") == 8 and roles.count("untrained") == 2
    assert roles.count("supervised") == 2

    children = find_trial_runs(outcome.tracking_uri, outcome.parent_run_id)
    assert len(children) == 12 and {run.info.status for run in children} == {"FINISHED"}
    stopped = {run.data.tags["clarlab.trial_id"] for run in children
               if run.data.tags.get("clarlab.stopped_early") == "true"}  # fmt: skip
    assert stopped == {record.trial_id for record in cells if record.stopped_early}
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
        expected = t_interval([by_seed[0], by_seed[1]])  # a stopped seed's value stays in
        row = rows[cell_id]
        assert row["seeds"] == "2"
        assert float(row["mean"]) == pytest.approx(expected.mean, abs=1e-5)
        assert float(row["ci_low"]) == pytest.approx(expected.low, abs=1e-5)
        assert float(row["ci_high"]) == pytest.approx(expected.high, abs=1e-5)
        stopped_seeds = sum(f"{cell_id}-seed{seed}" in stopped for seed in by_seed)
        assert row["seeds_stopped_early"] == str(stopped_seeds)
        if stopped_seeds:  # its value mixes budgets: never compared with the best
            assert row["within_noise_of_best"] == "False"
    assert rows["stft3-untrained"]["role"] == "untrained"
    assert rows["stft3-supervised"]["role"] == "supervised"

    matrix = outcome.report.matrices["stft3"]
    for i, first in enumerate(matrix.codes):
        for j, second in enumerate(matrix.codes):
            row = rows[f"stft3-{first}-{second}"]
            assert matrix.within_best[i, j] == (row["within_noise_of_best"] == "True")
            assert matrix.worse_than_control[i, j] == (row["vs_untrained_control"] == "below")
            assert matrix.values[i, j] == pytest.approx(float(row["mean"]), abs=1e-5)
            assert matrix.stopped_early[i, j] == (row["seeds_stopped_early"] != "0")
    assert {p.name for p in folder.iterdir()} >= {"aug_matrix_stft3.png", "curves_stft3.png"}
    summary = outcome.summary
    assert "stft3: untrained-encoder control test_top1" in summary
    # Only cells whose every seed ran to the end are compared with the best.
    kept = [
        cell for cell, row in rows.items()
        if row["role"] == "cell" and row["seeds_stopped_early"] == "0"
    ]  # fmt: skip
    if kept:
        assert f"of {len(kept)} cells within noise of it (2 seeds, paired t test, 95 %)" in summary
        assert "against the untrained control" in summary
    else:
        assert "stft3: no cell ran every seed to the end; none is called the best" in summary
    cut = sum(int(row["seeds_stopped_early"]) for row in rows.values())
    assert f"the trial scheduler stopped {cut} seed(s) of {4 - len(kept)} cell(s) early" in summary
    assert "quick preset: a pipeline check, not results" in summary
