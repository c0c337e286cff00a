"""The Optuna search and ASHA: the space and its dry run without Ray; the scheduler's
decisions on Ray's own ASHA; then, on a real local Ray cluster, a real SQLite MLflow
store and real FSDD audio, a search of 3 samples under ASHA resumed with 1 more into the
same study. (A grid under ASHA: tests/test_sweep_e2e.py.)"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler

from ablations import run_search
from core.sweep.errors import SearchError
from core.sweep.halving import describe_halving, halving_rungs, halving_scheduler
from core.sweep.search import load_search, to_config
from core.sweep.state import STUDY_FILE, SweepState
from core.tracking import find_trial_runs, tracking_client

ROOT = Path(__file__).resolve().parents[1]


def _tiny(fsdd_root: Path, cache_dir: Path) -> list[str]:
    """--set flags for a trial that runs every stage in seconds: 2 epochs of 2 steps,
    evaluated after each, so ASHA has a rung (epoch 1) before the last epoch."""
    settings = {
        "data.root": fsdd_root,
        "data.cache_dir": cache_dir,
        "data.max_clips": 120,
        "data.sample_rate": 8000,
        "data.clip_seconds": 0.5,
        "model.width": 4,
        "model.proj_hidden_dim": 16,
        "model.eval_hidden_dim": 16,
        "train.max_steps_per_epoch": 2,
        "train.eval_every": 1,
        "train.eval_epochs": 1,
        "train.final_figures": False,  # drawn and checked in test_ablation_scripts.py
    }
    flags = ["--epochs", "2"]
    for key, value in settings.items():
        flags += ["--set", f"{key}={value}"]
    return flags


# --- no Ray --------------------------------------------------------------------------------
def test_dry_run_prints_the_space_without_starting_ray(
    fsdd_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.sweep import runner

    def never(*args: object) -> None:
        raise AssertionError("a dry run started Ray")

    monkeypatch.setattr(runner, "start_ray", never)
    code = run_search.main(
        ["--dry-run", "--method", "moco", "--samples", "3", "--set", f"data.root={fsdd_root}"]
    )
    shown = capsys.readouterr().out
    assert code == run_search.EXIT_OK, shown
    assert "3 samples of moco by Optuna TPE" in shown
    for line in (
        "optim.lr            log-uniform in [0.0001, 0.01]",
        "method.temperature  uniform in [0.05, 1]",
        "model.proj_dim      one of 32, 64, 128, 256",
        "train.batch_size    one of 16, 32, 64",
        "augment.pipeline    36 choices: PS, PS+FD,",
    ):
        assert line in shown
    assert "train/val/test 300/0/300" in shown  # the preflight scanned the real FSDD
    assert "ASHA on test_top1 (max): at epochs 1, 2 of 4" in shown


def test_bad_requests_fail_before_ray(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A sampled field cannot also be fixed with --set.
    assert run_search.main(["--dry-run", "--set", "optim.lr=0.1"]) == run_search.EXIT_BAD_INPUT
    assert "optim.lr is sampled by the search" in capsys.readouterr().err
    # Grid-only flags do not exist for a search: refused, not ignored.
    with pytest.raises(SystemExit) as exit_info:
        run_search.main(["--dry-run", "--seeds", "2"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --seeds 2" in capsys.readouterr().err
    # A distribution that cannot be sampled names the file and the key.
    bad = tmp_path / "bad.yaml"
    bad.write_text("search:\n  params:\n    optim.lr: {loguniform: [0, 0.1]}\n")
    with pytest.raises(SearchError, match=r"search\.params\.optim\.lr\.loguniform"):
        load_search(bad)
    # A sampled value the config refuses is found before any trial runs.
    worse = tmp_path / "worse.yaml"
    worse.write_text("search:\n  params:\n    method.temperature: {uniform: [-1, 0.5]}\n")
    code = run_search.main(["--dry-run", "--search-space", str(worse)])
    assert code == run_search.EXIT_BAD_INPUT
    assert "search.params.method.temperature: the value -1.0 is invalid" in capsys.readouterr().err


def test_pairs_are_the_ordered_pairs_as_config_values() -> None:
    _, settings = load_search("search")
    pairs = settings.params["augment.pipeline"]
    assert isinstance(pairs, optuna.distributions.CategoricalDistribution)
    assert len(pairs.choices) == 36 and pairs.choices[:2] == ("PS", "PS+FD")
    assert to_config("augment.pipeline", "FD+TM") == ["FD", "TM"]
    assert to_config("augment.pipeline", "FD") == ["FD"]
    lr = settings.params["optim.lr"]
    assert isinstance(lr, optuna.distributions.FloatDistribution) and lr.log


def _trial(name: str) -> Any:
    return SimpleNamespace(trial_id=f"id-{name}", config={"cell": {"trial_id": name}})


def test_halving_compares_cells_at_rungs_and_spares_controls_and_last_epochs() -> None:
    """Ray's ASHA decisions, with the controls exempt, results without the metric (not an
    evaluation epoch) passed over, and no stop on a trial's last epoch."""
    assert halving_rungs(eval_every=5, epochs=20) == [5, 10]
    assert halving_rungs(eval_every=2, epochs=2) == []
    assert "nothing to halve" in describe_halving(2, 2, "test_top1", "max")
    assert halving_scheduler(metric="test_top1", mode="max", eval_every=2, epochs=2) is None

    scheduler = halving_scheduler(
        metric="test_top1", mode="max", eval_every=1, epochs=4, exempt=["stft3-untrained"]
    )
    assert scheduler is not None
    good, bad, late, control = (_trial(n) for n in ("a", "b", "c", "stft3-untrained"))
    for trial in (good, bad, late, control):
        scheduler.on_trial_add(None, trial)

    def result(trial: Any, epoch: int, value: float | None) -> str:
        reported = {"training_iteration": epoch, "loss": 1.0}
        if value is not None:
            reported["test_top1"] = value
        return scheduler.on_trial_result(None, trial, reported)

    assert result(control, 1, 0.0) == TrialScheduler.CONTINUE  # never compared...
    assert result(good, 1, 0.6) == TrialScheduler.CONTINUE  # the first at its rung
    assert result(bad, 1, None) == TrialScheduler.CONTINUE  # no evaluation: no decision
    assert result(bad, 1, 0.2) == TrialScheduler.STOP  # below the median at epoch 1
    assert result(control, 2, 0.0) == TrialScheduler.CONTINUE  # ...nor stopped
    assert result(late, 4, 0.1) == TrialScheduler.CONTINUE  # its last epoch: it ends itself
    scheduler.on_trial_complete(None, control, {"training_iteration": 4, "test_top1": 0.0})
    scheduler.on_trial_remove(None, control)


# --- on Ray --------------------------------------------------------------------------------
def _study(run_dir: Path) -> optuna.Study:
    return optuna.load_study(study_name=run_dir.name, storage=f"sqlite:///{run_dir / STUDY_FILE}")


@pytest.mark.slow
def test_search_with_asha_then_resume_into_the_same_study(
    ray_cluster,
    fsdd_root: Path,
    cache_dir: Path,
    mlflow_store: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = tmp_path / "results"
    uri = f"sqlite:///{mlflow_store / 'mlflow.db'}"
    shared = ["--results", str(results), "--tracking-uri", uri, "--progress-every", "600"]
    code = run_search.main(
        # One reused trial actor: its start costs more than these samples' training.
        ["--samples", "3", "--run-name", "s1", "--experiment", "pytest-search"]
        + ["--max-concurrent", "1"]
        + shared
        + _tiny(fsdd_root, cache_dir)
    )
    shown = capsys.readouterr().out
    assert code == run_search.EXIT_OK, shown
    assert "ASHA on test_top1 (max): at epochs 1 of 2" in shown
    run_dir = results / "s1"
    study = _study(run_dir)
    assert len(study.trials) == 3
    states = [trial.state for trial in study.trials]
    assert set(states) <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}
    # The first sample to reach epoch 1 has nothing to be compared with: one always finishes.
    assert optuna.trial.TrialState.COMPLETE in states
    for trial in study.trials:  # a pruned trial is one ASHA stopped after its first epoch
        stopped = trial.state == optuna.trial.TrialState.PRUNED
        assert trial.last_step == (1 if stopped else 2)
        assert set(trial.params) == {
            "optim.lr",
            "method.temperature",
            "optim.weight_decay",
            "model.proj_dim",
            "train.batch_size",
            "augment.pipeline",
        }
    state = SweepState.load(run_dir)
    parent_id = state.parent_run_id
    children = find_trial_runs(uri, parent_id)
    by_id = {run.data.tags["clarlab.trial_id"]: run for run in children}
    assert set(by_id) == {f"sample-00{n}" for n in range(3)}
    for trial in study.trials:  # each child trained the config its study trial sampled
        params = by_id[f"sample-{trial.number:03d}"].data.params
        assert float(params["optim.lr"]) == pytest.approx(trial.params["optim.lr"])
        pipeline = trial.params["augment.pipeline"].split("+")
        assert json.loads(params["augment.pipeline"]) == pipeline

    # --resume samples 1 more into the same study and parent run (here without ASHA, so it
    # runs its whole budget and the importances have two completed trials to compare).
    code = run_search.main(["--resume", "s1", "--samples", "1", "--scheduler", "fifo"] + shared)
    shown = capsys.readouterr().out
    assert code == run_search.EXIT_OK, shown
    study = _study(run_dir)
    assert [trial.number for trial in study.trials] == list(range(4))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials[3:])
    assert SweepState.load(run_dir).parent_run_id == parent_id
    assert (run_dir / "tune-2").is_dir()
    children = find_trial_runs(uri, parent_id)
    assert sorted(run.data.tags["clarlab.trial_id"] for run in children) == [
        f"sample-00{n}" for n in range(4)
    ]

    client = tracking_client(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    listed = {item.path for item in client.list_artifacts(parent_id, "search")}
    assert {
        "search/optimization_history.png",
        "search/param_importances.png",
        "search/trials.csv",
        "search/best_config.yaml",
    } <= listed
    best = study.best_trial
    assert parent.data.tags["best.trial"] == f"sample-{best.number:03d}"
    assert parent.data.tags["best.augment.pipeline"] == best.params["augment.pipeline"]
    assert parent.data.metrics["best_test_top1"] == pytest.approx(best.value)
    local = Path(client.download_artifacts(parent_id, "search", str(tmp_path / "dl")))
    with (local / "trials.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == [f"sample-00{n}" for n in range(4)]
    assert f"best test_top1: {best.value:.4f} (sample-{best.number:03d}" in shown


def test_halving_on_a_loss_stops_the_highest() -> None:
    """``mode: min`` reaches ASHA too: at a rung the trial with the higher loss stops."""
    scheduler = halving_scheduler(metric="loss", mode="min", eval_every=1, epochs=4)
    assert scheduler is not None
    low, high = _trial("low"), _trial("high")
    for trial in (low, high):
        scheduler.on_trial_add(None, trial)
    epoch1 = {"training_iteration": 1}
    assert scheduler.on_trial_result(None, low, {**epoch1, "loss": 0.2}) == TrialScheduler.CONTINUE
    assert scheduler.on_trial_result(None, high, {**epoch1, "loss": 0.9}) == TrialScheduler.STOP
    assert "a trial higher than the median" in describe_halving(1, 4, "loss", "min")
