"""The same loop in a real ``TorchTrainer`` worker group (2 gloo workers on a local Ray)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from core.train import CallbackContext, build_torch_trainer, run_loop
from tests.test_train import KeepCheckpoints, runs_of, small_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray whose workers see the fault-injection hook (armed per test by a file)."""
    ray = pytest.importorskip("ray")
    marker_dir = tmp_path_factory.mktemp("faults")
    marker = marker_dir / "kill-once"
    previous = os.environ.get("CLARLAB_INJECT_FAULT")
    # Rank 1 SIGKILLs itself at epoch 1, step 1 -- only while the marker file exists.
    os.environ["CLARLAB_INJECT_FAULT"] = f"kill:1:1:1:{marker}"
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    if previous is None:
        os.environ.pop("CLARLAB_INJECT_FAULT")
    else:
        os.environ["CLARLAB_INJECT_FAULT"] = previous
    yield marker
    ray.shutdown()


def two_worker_config(
    fsdd_root: Path, cache_dir: Path, store: Path, experiment: str, **sections: dict
):
    train = {"num_workers": 2, **sections.pop("train", {})}
    return small_config(fsdd_root, cache_dir, store, experiment, train=train, **sections)


def test_two_workers_finish_and_log_one_run(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    cfg, who = two_worker_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name, tracking={"trial_id": "ddp"}
    )
    result = build_torch_trainer(
        cfg, identity=who, run_name="ddp", storage_path=str(tmp_path / "ray")
    ).fit()
    assert result.error is None
    assert result.metrics["epoch"] == 1
    assert result.metrics["test_top1"] > 0.2  # chance is 0.1

    (run,) = runs_of(who)
    client = MlflowClient(who.tracking_uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    assert sorted(p.step for p in client.get_metric_history(run.info.run_id, "loss")) == [0, 1]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "config.yaml" in artifacts
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert any(path.endswith(".png") for path in evaluation)
    assert any(path.endswith(".csv") for path in evaluation)


def test_killed_worker_resumes_from_checkpoint(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    ray_cluster.touch()  # arm: rank 1 dies once, mid-epoch 1
    cfg, who = two_worker_config(
        fsdd_root, cache_dir, mlflow_store, tmp_path.name, tracking={"trial_id": "killed"}
    )
    trainer = build_torch_trainer(
        cfg, identity=who, run_name="killed", storage_path=str(tmp_path / "ray"), max_failures=1
    )
    result = trainer.fit()
    assert not ray_cluster.exists(), "the fault never fired"
    assert result.error is None
    assert result.metrics["epoch"] == 1
    (run,) = runs_of(who)  # one MLflow run, continued after the restart
    assert run.info.status == "FINISHED"
    steps = [
        p.step for p in MlflowClient(who.tracking_uri).get_metric_history(run.info.run_id, "loss")
    ]
    assert sorted(set(steps)) == [0, 1]


def test_gathered_nt_xent_matches_one_worker_with_the_global_batch(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    # No augmentation (not even the random view base that identical views would get,
    # whose draws differ per rank) and one step: both hosts see the same 32 clips, split
    # 2 x 16 across workers. With negatives gathered across workers and synchronised batch
    # norm, the first-step loss must match the single-process run with the whole batch.
    common = {
        "augment": {"pipeline": [], "view_base": []},
        "train": {"epochs": 1, "max_steps_per_epoch": 1, "eval_every": 5},
    }
    one, one_who = small_config(fsdd_root, cache_dir, mlflow_store, f"{tmp_path.name}-1", **common)
    reports = KeepCheckpoints(tmp_path / "ckpt")
    run_loop(one, CallbackContext(reports), one_who)

    two, two_who = two_worker_config(
        fsdd_root, cache_dir, mlflow_store, f"{tmp_path.name}-2", **common
    )
    result = build_torch_trainer(
        two, identity=two_who, run_name="gathered", storage_path=str(tmp_path / "r")
    ).fit()
    assert result.error is None
    assert result.metrics["nt_xent"] == pytest.approx(reports.metrics[0]["nt_xent"], rel=1e-4)
