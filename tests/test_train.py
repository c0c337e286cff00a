"""The training loop on both hosts, on real FSDD audio, logging to a real MLflow store."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from core.config import ExperimentConfig, preset
from core.metrics import reported_metrics
from core.tracking import RunIdentity
from core.train import CallbackContext, NonFiniteLossError, run_loop


def small_config(
    fsdd_root: Path, cache_dir: Path, store: Path, experiment: str, **sections: dict
) -> tuple[ExperimentConfig, RunIdentity]:
    """A CPU-sized trial: width-8 ResNet18 on stft3 over 600 real FSDD clips, 4 steps of 32
    clips per epoch, and its identity: logged to experiment ``experiment`` of the MLflow
    store in ``store`` (``tracking={...}`` sets more identity fields, e.g. the trial id)."""
    overrides = {
        "data": {"root": str(fsdd_root), "cache_dir": str(cache_dir), "max_clips": 600},
        "augment": {"pipeline": ["TS", "FD"]},
        "frontend": {"name": "stft3"},
        "model": {"encoder": "resnet18", "width": 8, "proj_hidden_dim": 64, "proj_dim": 32},
        "optim": {"name": "adam", "lr": 1e-3, "warmup_epochs": 0, "weight_decay": 0.0},
        "train": {
            "epochs": 2,
            "batch_size": 32,
            "max_steps_per_epoch": 4,
            "eval_every": 2,
            "eval_epochs": 15,
            "seed": 7,
        },
    }
    identity = RunIdentity(
        tracking_uri=f"sqlite:///{store}/mlflow.db",
        results_dir=store,
        experiment=experiment,
        **sections.pop("tracking", {}),
    )
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return preset("quick", overrides), identity


class KeepCheckpoints:
    """A ``report_fn`` that keeps every checkpoint and every metrics dict."""

    def __init__(self, folder: Path, fail_after_epoch: int | None = None) -> None:
        self.folder = folder
        self.metrics: list[dict[str, float]] = []
        self.fail_after_epoch = fail_after_epoch

    def __call__(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        epoch = int(metrics["epoch"])
        self.metrics.append(dict(metrics))
        if checkpoint_dir is not None:
            shutil.copytree(checkpoint_dir, self.folder / f"epoch{epoch}", dirs_exist_ok=True)
        if self.fail_after_epoch == epoch:
            raise KeyboardInterrupt("simulated preemption after the checkpoint")


def runs_of(identity: RunIdentity) -> list:
    client = MlflowClient(identity.tracking_uri)
    experiment = client.get_experiment_by_name(identity.experiment)
    assert experiment is not None
    return client.search_runs([experiment.experiment_id])


def test_supervised_training_sees_one_view_per_clip(
    fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch
):
    """Cross-entropy alone trains on one view of each clip (its config's augmentation, no
    second copy of the batch); a contrastive method gets its pair."""
    from core.methods.simclr import SimCLR
    from core.methods.supervised import Supervised

    seen: list[tuple[str, int, bool]] = []
    for method_class in (Supervised, SimCLR):
        real_forward = method_class.forward

        def recording(self, view1, view2, labels, _real=real_forward, _name=method_class.__name__):
            seen.append((_name, view1.shape[0], view2 is None))
            return _real(self, view1, view2, labels)

        monkeypatch.setattr(method_class, "forward", recording)
    for method in ("supervised", "simclr"):
        cfg, who = small_config(
            fsdd_root, cache_dir, mlflow_store, f"{tmp_path.name}-{method}",
            method={"name": method}, augment={"pipeline": []},
            train={"epochs": 1, "max_steps_per_epoch": 1, "eval_epochs": 1},
        )  # fmt: skip
        run_loop(cfg, CallbackContext(), who)
    batch = cfg.train.batch_size
    assert ("Supervised", batch, True) in seen and ("SimCLR", batch, False) in seen
    assert {view2_missing for name, _, view2_missing in seen if name == "Supervised"} == {True}


def test_a_moco_queue_longer_than_the_training_split_is_capped(
    fsdd_root, cache_dir, mlflow_store, tmp_path
):
    """MoCo's published queue (65,536 keys) on a few hundred training clips would still
    hold random initial keys after an epoch: the trial caps it at the largest multiple of
    the global batch that fits the split, and logs the size it ran with."""
    from core.methods.configs import MoCoConfig
    from core.train import load_trial_data

    assert MoCoConfig(queue_size=4096).fitted_to(10_000, 32)[1] is None
    fitted, note = MoCoConfig(queue_size=4096).fitted_to(1000, 32)
    assert fitted.queue_size == 992 and "capped to 992" in note
    cfg, who = small_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name,
        method={"name": "moco"}, train={"epochs": 1, "max_steps_per_epoch": 1, "eval_epochs": 1},
    )  # fmt: skip
    assert cfg.method.queue_size == 65_536
    train_clips = len(load_trial_data(cfg, progress=False).split.train)
    run_loop(cfg, CallbackContext(), who)
    (run,) = runs_of(who)
    assert int(run.data.params["method.queue_size"]) == train_clips // 32 * 32


@pytest.mark.slow
def test_in_process_trial_trains_evaluates_and_logs(fsdd_root, cache_dir, mlflow_store, tmp_path):
    cfg, who = small_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name, tracking={"trial_id": "inproc"}
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    final = run_loop(cfg, CallbackContext(reports), who)

    assert [int(m["epoch"]) for m in reports.metrics] == [0, 1]
    for key in ("loss", "lr", "samples_per_s", "epoch_seconds"):
        assert all(math.isfinite(m[key]) for m in reports.metrics), key
    # An evaluation epoch reports exactly the metrics a dry run checks a space file's
    # metric against (core.metrics; FSDD's official split has no validation clips).
    numbers = {key for key, value in reports.metrics[-1].items() if isinstance(value, float)}
    assert numbers == set(reported_metrics(cfg, has_validation=False))
    # Ten spoken digits: chance is 10 %; frozen features + the evaluation head beat it.
    assert final["test_top1"] > 0.2
    assert 0.0 < final["test_macro_f1"] <= 1.0

    (run,) = runs_of(who)
    client = MlflowClient(who.tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["augment.pipeline"] == '["TS", "FD"]'
    assert run.data.params["frontend.name"] == "stft3"
    history = client.get_metric_history(run.info.run_id, "loss")
    assert sorted(point.step for point in history) == [0, 1]
    assert [p.step for p in client.get_metric_history(run.info.run_id, "test_top1")] == [1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts


@pytest.mark.slow
def test_restart_from_checkpoint_matches_uninterrupted_run(
    fsdd_root, cache_dir, mlflow_store, tmp_path
):
    straight, straight_who = small_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        f"{tmp_path.name}-a",
        train={"eval_every": 10, "epochs": 2},
    )
    uninterrupted = KeepCheckpoints(tmp_path / "a-ckpt")
    run_loop(straight, CallbackContext(uninterrupted), straight_who)

    resumed_cfg, resumed_cfg_who = small_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        f"{tmp_path.name}-b",
        train={"eval_every": 10, "epochs": 2},
    )
    first = KeepCheckpoints(tmp_path / "b-ckpt", fail_after_epoch=0)
    with pytest.raises(KeyboardInterrupt):
        run_loop(resumed_cfg, CallbackContext(first), resumed_cfg_who)
    second = KeepCheckpoints(tmp_path / "b-ckpt")
    run_loop(
        resumed_cfg,
        CallbackContext(second, restore_dir=tmp_path / "b-ckpt" / "epoch0"),
        resumed_cfg_who,
    )

    assert [int(m["epoch"]) for m in second.metrics] == [1]
    expected, got = uninterrupted.metrics[1], second.metrics[0]
    for key in ("loss", "lr", "test_top1"):
        assert got[key] == pytest.approx(expected[key], rel=1e-4, abs=1e-6), key
    # The restarted trial continued its own MLflow run: one run, FINISHED.
    (run,) = runs_of(resumed_cfg_who)
    assert run.info.status == "FINISHED"
    steps = [
        p.step
        for p in MlflowClient(resumed_cfg_who.tracking_uri).get_metric_history(
            run.info.run_id, "loss"
        )
    ]
    assert sorted(steps) == [0, 1]

    # Restarting from the last epoch's checkpoint (a host interrupted after the trial ended)
    # trains nothing, reports nothing and leaves the finished MLflow run as it was.
    again = KeepCheckpoints(tmp_path / "c-ckpt")
    final = run_loop(
        resumed_cfg,
        CallbackContext(again, restore_dir=tmp_path / "b-ckpt" / "epoch1"),
        resumed_cfg_who,
    )
    assert again.metrics == [] and final["loss"] == second.metrics[0]["loss"]
    (unchanged,) = runs_of(resumed_cfg_who)
    assert (unchanged.info.status, unchanged.info.end_time) == ("FINISHED", run.info.end_time)


@pytest.mark.slow
def test_clar_with_ten_percent_labels_logs_both_components(
    fsdd_root, cache_dir, mlflow_store, tmp_path
):
    cfg, who = small_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        tmp_path.name,
        method={"name": "clar"},
        data={"label_fraction": 0.1},
        train={"epochs": 1, "eval_every": 5},
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    run_loop(cfg, CallbackContext(reports), who)
    (metrics,) = reports.metrics
    assert metrics["nt_xent"] > 0
    assert metrics["ce"] > 0  # 32-clip batches at 10 % labels: labelled clips are present
    assert metrics["loss"] == pytest.approx(metrics["nt_xent"] + metrics["ce"], rel=1e-4)
    (run,) = runs_of(who)
    names = set(run.data.metrics)
    assert {"nt_xent", "ce", "loss"} <= names


@pytest.mark.slow
def test_forced_nan_fails_the_trial_with_a_readable_reason(
    fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch
):
    marker = tmp_path / "nan-once"
    marker.touch()
    monkeypatch.setenv("CLARLAB_INJECT_FAULT", f"nan:0:1:0:{marker}")
    cfg, who = small_config(fsdd_root, cache_dir, mlflow_store, tmp_path.name, train={"epochs": 1})
    with pytest.raises(NonFiniteLossError, match="epoch 0, step 1"):
        run_loop(cfg, CallbackContext(), who)
    (run,) = runs_of(who)
    assert run.info.status == "FAILED"
    assert "non-finite loss at epoch 0, step 1" in run.data.tags["clarlab.error"]


def test_bad_batch_size_fails_before_training(fsdd_root, cache_dir, mlflow_store, tmp_path):
    cfg, who = small_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name, train={"batch_size": 4096}
    )
    with pytest.raises(ValueError, match=r"train.batch_size=4096 .* \(600 clips"):
        run_loop(cfg, CallbackContext(), who)


def test_epoch_batches_shard_the_global_batch():
    from core.train import epoch_batches

    train = np.arange(100, 200)
    single = list(epoch_batches(train, 8, epoch=3, seed=1, rank=0, world_size=1))
    shards = [list(epoch_batches(train, 4, epoch=3, seed=1, rank=r, world_size=2)) for r in (0, 1)]
    assert len(single) == 12 and len(shards[0]) == 12
    for step, (rows, positions) in enumerate(single):
        union = np.sort(np.concatenate([shards[0][step][0], shards[1][step][0]]))
        np.testing.assert_array_equal(union, rows)
        np.testing.assert_array_equal(train[positions], rows)
    assert not np.array_equal(
        single[0][0], next(epoch_batches(train, 8, epoch=4, seed=1, rank=0, world_size=1))[0]
    )


def test_early_stopping_counts_epochs_without_improvement():
    from core.train import EarlyStopping

    stopper = EarlyStopping(patience=4)
    assert not stopper.update(0.5, epochs_elapsed=2)
    assert not stopper.update(0.6, epochs_elapsed=2)
    assert not stopper.update(0.6, epochs_elapsed=2)  # equal is no improvement: 2 epochs
    assert stopper.update(0.55, epochs_elapsed=2)  # 4 epochs without a new best
    restored = EarlyStopping(patience=4)
    restored.load_state_dict(stopper.state_dict())
    assert (restored.best, restored.epochs_since_best) == (0.6, 4)
    assert not EarlyStopping(patience=None).update(0.1, epochs_elapsed=1)


@pytest.mark.slow
def test_early_stopping_ends_the_trial_in_the_loop(fsdd_root, cache_dir, mlflow_store, tmp_path):
    # The watched value must fall deterministically for the test: the learning rate under
    # cosine decay does, so watching it makes the loop stop after `patience` epochs.
    cfg, who = small_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        tmp_path.name,
        optim={"schedule": "warmup_cosine", "warmup_epochs": 0},
        train={
            "epochs": 6,
            "eval_every": 1,
            "eval_epochs": 1,
            "max_steps_per_epoch": 1,
            "early_stopping_patience": 1,
            "early_stopping_metric": "lr",
        },
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    run_loop(cfg, CallbackContext(reports), who)
    assert [m["early_stopped"] for m in reports.metrics] == [0.0, 1.0]
    (run,) = runs_of(who)
    assert run.info.status == "FINISHED"


def test_labelled_per_batch_puts_labelled_clips_in_every_batch():
    from core.train import epoch_batches

    train = np.arange(1000, 1300)
    labelled = np.zeros(300, dtype=bool)
    labelled[[5, 50, 100]] = True  # 1 % of 300 clips
    random = list(
        epoch_batches(train, 64, epoch=0, seed=3, rank=0, world_size=1, labelled=labelled)
    )
    stratified = list(
        epoch_batches(
            train,
            64,
            epoch=0,
            seed=3,
            rank=0,
            world_size=1,
            labelled=labelled,
            labelled_per_batch=2,
        )
    )
    assert len(stratified) == len(random) == 4  # the epoch keeps its steps
    assert [int(labelled[positions].sum()) for _, positions in stratified] == [2, 2, 2, 2]
    assert sum(int(labelled[positions].sum()) == 0 for _, positions in random) >= 1
    for rows, positions in stratified:
        assert len(set(positions)) == 64 and np.array_equal(train[positions], rows)
    # Split over two workers, the global batch still holds the labelled clips.
    shards = [
        list(epoch_batches(train, 32, 0, 3, r, 2, labelled=labelled, labelled_per_batch=2))
        for r in (0, 1)
    ]
    for step in range(4):
        both = np.concatenate([shards[0][step][1], shards[1][step][1]])
        assert int(labelled[both].sum()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("calibrate", [False, True])
def test_untrained_control_keeps_its_weights(
    calibrate, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    import torch

    from core.features import build_frontend
    from core.methods import build_method
    from core.models import build_encoder

    cfg, who = small_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        tmp_path.name,
        method={"name": "untrained", "calibrate_batch_norm": calibrate},
        augment={"pipeline": []},
        train={"epochs": 5, "eval_every": 5},
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    final = run_loop(cfg, CallbackContext(reports), who)
    assert [int(m["epoch"]) for m in reports.metrics] == [0], "one epoch, whatever train.epochs"
    assert reports.metrics[0]["steps"] == 4.0 and "loss" not in reports.metrics[0]
    assert 0.0 <= final["test_top1"] <= 1.0
    state = torch.load(tmp_path / "ckpt" / "epoch0" / "state.pt", weights_only=True)["model"]
    torch.manual_seed(cfg.train.seed)  # the same initialisation, built again
    encoder = build_encoder(cfg.model, in_channels=build_frontend(cfg.frontend, 8000).out_channels)
    fresh = build_method(cfg, encoder, 10).state_dict()
    weights = [k for k in fresh if k.endswith(("weight", "bias"))]
    assert weights and all(torch.equal(state[k], fresh[k]) for k in weights), "never trained"
    running = [k for k in fresh if k.endswith("running_var")]
    measured = not all(torch.equal(state[k], fresh[k]) for k in running)
    assert measured == calibrate, "batch-norm statistics move only when calibrated"
    (run,) = runs_of(who)
    assert run.info.status == "FINISHED" and run.data.params["method.name"] == "untrained"


def quaclrs_fsdd_config(
    fsdd_root: Path, cache_dir: Path, store: Path, experiment: str, **sections: dict
) -> tuple[ExperimentConfig, RunIdentity]:
    """A 5-epoch trial on FSDD's speaker folds (test speaker 1, validation speaker 6) at
    8 kHz, 200 training/validation clips, one step per epoch and tests every 10 epochs:
    only per-epoch validation lets early stopping or the plateau schedule act in it."""
    base: dict[str, dict] = {
        "data": {"sample_rate": 8000, "max_clips": 200, "split_scheme": "quaclrs", "fold": 1},
        "method": {"name": "supervised"},
        "augment": {"pipeline": []},
        "train": {"epochs": 5, "eval_every": 10, "max_steps_per_epoch": 1, "eval_epochs": 2},
    }
    for name, values in sections.items():
        base[name] = {**base.get(name, {}), **values}
    return small_config(fsdd_root, cache_dir, store, experiment, **base)


def script_validation(
    monkeypatch: pytest.MonkeyPatch, val_top1: list[float]
) -> list[tuple[tuple[str, ...], float]]:
    """Run the real evaluation every epoch but replace its val_top1 by ``val_top1`` in
    turn, so that early stopping and the plateau schedule act on known epochs (a 38-clip
    validation speaker at one training step per epoch moves by chance). Returns, per
    evaluation, the splits scored and the sum of the encoder's weights it scored."""
    import core.train.loop

    script = iter(val_top1)
    scored: list[tuple[tuple[str, ...], float]] = []
    real_evaluate = core.train.loop.evaluate_method

    def scripted(method, *args, **kwargs):
        weights = sum(float(p.detach().double().sum()) for p in method.encoder.parameters())
        results = real_evaluate(method, *args, **kwargs)
        scored.append((tuple(results), weights))
        if "val" in results:
            results["val"].top1 = next(script)
        return results

    monkeypatch.setattr(core.train.loop, "evaluate_method", scripted)
    return scored


@pytest.mark.slow
@pytest.mark.parametrize("scored", ["own", "evaluation_head"])
def test_early_stopping_and_plateau_act_every_epoch_between_test_evaluations(
    scored, fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch
):
    from core.train import train

    evaluations = script_validation(monkeypatch, [0.5, 0.6, 0.6, 0.55, 0.9])
    cfg, who = quaclrs_fsdd_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        tmp_path.name,
        optim={"schedule": "plateau", "plateau_patience": 0, "plateau_factor": 0.5},
        train={
            "scored_classifier": scored,
            "early_stopping_patience": 2,
            "early_stopping_metric": "val_top1",
        },
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    train(cfg, reports, who)

    # Epochs 2 and 3 bring no new best: early stopping (patience 2, counted in epochs)
    # ends the 5-epoch run after epoch 3, long before the first test at epoch 10.
    assert [m["early_stopped"] for m in reports.metrics] == [0.0, 0.0, 0.0, 1.0]
    assert [m["val_top1"] for m in reports.metrics] == [0.5, 0.6, 0.6, 0.55]
    assert all("val_weighted_f1" in m for m in reports.metrics)
    # Validation alone each epoch; the epoch that ended the trial was also tested.
    assert [splits for splits, _ in evaluations] == [("val",)] * 4 + [("test",)]
    assert ["test_top1" in m for m in reports.metrics] == [False, False, False, True]
    assert 0.0 <= reports.metrics[-1]["test_top1"] <= 1.0
    # The plateau schedule (patience 0) cut the rate after epoch 2's stall, in the run.
    rates = [m["lr"] for m in reports.metrics]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-3, 5e-4])


def test_early_stopping_scores_the_weights_of_the_best_validation_epoch(
    fsdd_root, cache_dir, mlflow_store, tmp_path, monkeypatch
):
    """QUACLRS 4.6 keeps "the best model based on validation accuracy": a run whose
    validation peaks at epoch 1 and stops after epoch 3 is scored on the test split with
    epoch 1's weights, not the last ones; ``scored_epoch`` says so, and each epoch's own
    validation score stays in the history."""
    from core.train import train

    scored = script_validation(monkeypatch, [0.5, 0.9, 0.6, 0.55])
    cfg, who = quaclrs_fsdd_config(
        fsdd_root,
        cache_dir,
        mlflow_store,
        tmp_path.name,
        train={"early_stopping_patience": 2, "early_stopping_metric": "val_top1"},
    )
    reports = KeepCheckpoints(tmp_path / "ckpt")
    train(cfg, reports, who)

    assert [m["early_stopped"] for m in reports.metrics] == [0.0, 0.0, 0.0, 1.0]
    assert [m["val_top1"] for m in reports.metrics] == [0.5, 0.9, 0.6, 0.55]
    assert [m["scored_epoch"] for m in reports.metrics] == [0.0, 1.0, 2.0, 1.0]
    assert [splits for splits, _ in scored] == [("val",)] * 4 + [("test",)]
    weights = [value for _, value in scored]
    assert len(set(weights[:4])) == 4, "each epoch trained the encoder"
    assert weights[4] == weights[1]  # the test split scored epoch 1's encoder
    assert 0.0 <= reports.metrics[-1]["test_top1"] <= 1.0


def test_a_watched_val_metric_without_a_validation_split_is_explained(
    fsdd_root, cache_dir, mlflow_store, tmp_path
):
    from core.train import load_trial_data

    cfg, _ = small_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name, train={"early_stopping_patience": 3}
    )
    with pytest.raises(ValueError, match=r"use data.split_scheme='quaclrs' .* early stopping"):
        load_trial_data(cfg, progress=False)
