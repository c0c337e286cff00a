"""MLflow tracking against a real SQLite store, read back with ``MlflowClient``.

One store serves the whole module (creating a SQLite store runs MLflow's migrations,
several seconds); tests keep apart through their own trial ids, parents and experiments.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from core import tracking
from core.config import AugmentConfig, DataConfig, ExperimentConfig
from core.evaluate import EvaluationResult, confusion_matrix, scores_from_confusion
from core.tracking import (
    TAG_ERROR,
    TAG_PARENT,
    TAG_TRIAL_ID,
    RunIdentity,
    TrialRun,
    config_params,
    default_artifact_root,
    ensure_experiment,
    find_trial_runs,
    resolve_tracking_uri,
    start_parent_run,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunIdentity:
    """An identity pointing at one fresh SQLite store (migrated once)."""
    results = tmp_path_factory.mktemp("mlflow-results")
    cfg = RunIdentity(
        tracking_uri=f"sqlite:///{results / 'mlflow.db'}",
        results_dir=results,
        experiment="tracking-tests",
        ablation="aug_matrix",
    )
    ensure_experiment(cfg.tracking_uri, cfg.experiment, default_artifact_root(cfg.tracking_uri))
    return cfg


@pytest.fixture(scope="module")
def client(store: RunIdentity) -> MlflowClient:
    return MlflowClient(store.tracking_uri)


def make_config() -> ExperimentConfig:
    return ExperimentConfig(
        data=DataConfig(label_fraction=0.1, fold=3),
        augment=AugmentConfig(snr_db=(5.0, 15.0)),
    )


def who(store: RunIdentity, **identity_fields: object) -> RunIdentity:
    """The store's identity with some fields (parent run, trial id) set."""
    return dataclasses.replace(store, **identity_fields)


def new_parent(store: RunIdentity) -> str:
    return start_parent_run(store, {"clarlab.sweep": "test"}, run_name="sweep")


def evaluation_result() -> EvaluationResult:
    """Scores of a classifier that is right 80 % of the time on 10 digit classes."""
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 10, size=500)
    wrong = rng.random(500) < 0.2
    predictions = np.where(wrong, rng.integers(0, 10, size=500), targets)
    confusion = confusion_matrix(targets, predictions, 10)
    return scores_from_confusion(confusion, [f"digit_{i}" for i in range(10)], split="test")


def history_steps(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


# --- where the store is -------------------------------------------------------------------


def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    results = tmp_path / "deep" / "results"
    default = resolve_tracking_uri(RunIdentity(results_dir=results))
    assert default == f"sqlite:///{results}/mlflow.db"
    assert results.is_dir(), "the results folder must be created for the SQLite file"
    assert default_artifact_root(default) == str(results / "mlartifacts")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow-head:5000")
    assert resolve_tracking_uri(RunIdentity(results_dir=results)) == "http://mlflow-head:5000"
    explicit = RunIdentity(tracking_uri="sqlite:////data/x.db", results_dir=results)
    assert resolve_tracking_uri(explicit) == "sqlite:////data/x.db"
    assert default_artifact_root("sqlite:////data/x.db") == "/data/mlartifacts"
    assert default_artifact_root("http://mlflow-head:5000") is None
    assert default_artifact_root("sqlite:///:memory:") is None


def test_relative_results_dir_becomes_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray moves trials to other working directories: the folder is fixed at validation."""
    monkeypatch.chdir(tmp_path)
    assert RunIdentity().results_dir == tmp_path / "results"
    assert RunIdentity(results_dir="out").results_dir == tmp_path / "out"
    assert "tracking" not in ExperimentConfig.model_fields, "identity lives beside the config"


def test_ensure_experiment_is_safe_under_concurrent_creates(
    store: RunIdentity, client: MlflowClient
) -> None:
    name = f"race-{uuid.uuid4().hex[:8]}"
    root = default_artifact_root(store.tracking_uri)
    ids: list[str] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            ids.append(ensure_experiment(store.tracking_uri, name, root))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(ids)) == 1
    experiment = client.get_experiment(ids[0])
    assert experiment.artifact_location == (Path(root) / name).as_uri()

    client.delete_experiment(ids[0])
    with pytest.raises(MlflowException, match=rf"{name}.*deleted.*restore"):
        ensure_experiment(store.tracking_uri, name, root)


# A trial process: import everything, say so, wait for the start signal, then open the
# store, so that the openings really happen at the same moment.
TRIAL_PROCESS = """
import sys, time
from pathlib import Path
from core.config import ExperimentConfig
from core.tracking import RunIdentity, TrialRun
results, trial_id = Path(sys.argv[1]), sys.argv[2]
tracking = RunIdentity(results_dir=results, trial_id=trial_id, experiment="fresh")
(results / f"ready_{trial_id}").touch()
while not (results / "go").exists():
    time.sleep(0.01)
run = TrialRun.open(ExperimentConfig(), tracking)
run.log_metrics({"loss": 1.0}, step=0)
run.finish("FINISHED")
"""


def test_trials_in_separate_processes_can_open_a_fresh_store_at_once(tmp_path: Path) -> None:
    """Unguarded, concurrent first openings of a new SQLite file break MLflow's migrations
    (``duplicate column name``, alembic version errors); the file lock serialises them."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    trial_ids = ["proc_0", "proc_1"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", TRIAL_PROCESS, str(tmp_path), trial_id],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for trial_id in trial_ids
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready_{t}").exists() for t in trial_ids):
        assert all(process.poll() is None for process in processes), "a process died early"
        assert time.monotonic() < deadline, "trial processes did not start"
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [process.communicate(timeout=120)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], "\n".join(outputs)
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("fresh")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.data.tags[TAG_TRIAL_ID] for run in runs) == trial_ids
    assert {run.info.status for run in runs} == {"FINISHED"}


def test_git_commit_of_checkout_and_outside_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from core.tracking import store as tracking_store

    commit = tracking.git_commit()
    if (tracking_store._PROJECT_ROOT / ".git").exists():
        assert commit is not None and len(commit) == 40 and int(commit, 16) >= 0
    tracking.git_commit.cache_clear()
    tracking.git_dirty.cache_clear()
    monkeypatch.setattr(tracking_store, "_PROJECT_ROOT", tmp_path)
    try:
        assert tracking.git_commit() is None
        assert tracking.git_dirty() is None
    finally:
        tracking.git_commit.cache_clear()
        tracking.git_dirty.cache_clear()


# --- a trial run end to end -----------------------------------------------------------------


def test_trial_run_logs_params_tags_metrics_and_artifacts(
    store: RunIdentity, client: MlflowClient, tmp_path: Path
) -> None:
    parent_id = new_parent(store)
    cfg, identity = make_config(), who(store, parent_run_id=parent_id, trial_id="trial_00001")
    run = TrialRun.open(cfg, identity, extra_tags={"clarlab.cache_hash": "abc123"})
    assert not run.resumed
    for epoch in range(3):
        run.log_metrics({"loss": 2.0 - epoch, "lr": 0.1 * (epoch + 1), "epoch": epoch}, epoch)
    run.log_metrics({"test_top1": 0.8, "test_macro_f1": 0.79}, step=2)
    result = evaluation_result()
    run.log_evaluation(result)
    run.log_config(cfg)
    notes = tmp_path / "notes.txt"
    notes.write_text("extra file")
    run.log_artifact_file(notes, artifact_path="extras")
    run.finish("FINISHED")

    logged = client.get_run(run.run_id)
    assert logged.info.status == "FINISHED"
    assert logged.info.experiment_id == client.get_run(parent_id).info.experiment_id
    assert logged.info.run_name == "simclr-resnet18w64-stft3-noaug-labels0.1-fold3-trial_00001"

    params = logged.data.params
    assert params == config_params(cfg)
    assert params["data.label_fraction"] == "0.1"
    assert params["data.fold"] == "3"
    assert params["method.name"] == "simclr"
    assert json.loads(params["augment.snr_db"]) == [5.0, 15.0]
    assert json.loads(params["augment.pipeline"]) == []
    assert "tracking.tracking_uri" not in params, "a URI may hold credentials"

    tags = logged.data.tags
    assert tags[TAG_PARENT] == parent_id
    assert tags[TAG_TRIAL_ID] == "trial_00001"
    assert tags["clarlab.ablation"] == "aug_matrix"
    assert tags["clarlab.dataset"] == "fsdd"
    assert tags["clarlab.cache_hash"] == "abc123"
    if tracking.git_commit():
        assert tags["clarlab.git_commit"] == tags["mlflow.source.git.commit"]

    assert history_steps(client, run.run_id, "loss") == [(0, 2.0), (1, 1.0), (2, 0.0)]
    assert [step for step, _ in history_steps(client, run.run_id, "lr")] == [0, 1, 2]
    assert history_steps(client, run.run_id, "test_top1") == [(2, 0.8)]

    top = {info.path for info in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "evaluation", "extras"} <= top
    evaluation_files = {info.path for info in client.list_artifacts(run.run_id, "evaluation")}
    assert evaluation_files == {
        "evaluation/test_confusion.png",
        "evaluation/test_confusion.csv",
        "evaluation/test_per_class.txt",
        "evaluation/test_scores.json",
    }
    # Artifacts live beside the SQLite file, not in the working directory.
    assert logged.info.artifact_uri.startswith((store.results_dir / "mlartifacts").as_uri())

    download = Path(client.download_artifacts(run.run_id, "", dst_path=str(tmp_path / "dl")))
    png = (download / "evaluation/test_confusion.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5_000
    rows = list(csv.reader(io.StringIO((download / "evaluation/test_confusion.csv").read_text())))
    assert rows[0] == ["true\\predicted", *result.class_names]
    assert [row[0] for row in rows[1:]] == result.class_names
    assert np.array_equal(np.array([row[1:] for row in rows[1:]], dtype=int), result.confusion)
    assert (download / "evaluation/test_per_class.txt").read_text() == result.per_class_report()
    scores = json.loads((download / "evaluation/test_scores.json").read_text())
    assert scores["top1"] == pytest.approx(result.top1)
    assert scores["per_class_f1"]["digit_3"] == pytest.approx(result.per_class_f1[3])
    assert yaml.safe_load((download / "config.yaml").read_text()) == cfg.model_dump(mode="json")
    assert (download / "extras/notes.txt").read_text() == "extra file"

    children = find_trial_runs(store.tracking_uri, parent_id)
    assert [child.info.run_id for child in children] == [run.run_id]


def test_final_figures_per_trial_and_gathered_per_fold_on_the_parent(
    store: RunIdentity, client: MlflowClient, tmp_path: Path
) -> None:
    """A trial's final evaluation logs its ROC curves (and AUCs) and, for a 2-D encoder,
    its Grad-CAM panels; the parent gathers every finished trial's Grad-CAM image into
    its fold's folder beside the fold's ROC overlay, passing over a trial that has none
    (a 1-D encoder) and one that failed."""
    from core.cells import FAILED, FINISHED, TrialRecord
    from core.fold_report import FIGURES_FOLDER, write_fold_roc
    from core.gradcam import GradCamMaps
    from core.roc import macro_roc_json, parse_macro_roc
    from core.sweep.fold_figures import attach_fold_figures
    from tests.images import assert_png_not_blank

    parent_id = new_parent(store)
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 10, size=500)
    logits = rng.normal(size=(500, 10)) + 2.0 * (targets[:, None] == np.arange(10))
    confusion = confusion_matrix(targets, logits.argmax(1), 10)
    result = scores_from_confusion(confusion, [f"digit_{i}" for i in range(10)])
    result.targets = targets
    result.probabilities = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype("f4")
    maps = GradCamMaps(rng.normal(size=(2, 16, 12)), rng.random((2, 16, 12)), ["a", "b"],
                       ["a", "a"], np.arange(2), "trunk.layer4")  # fmt: skip
    records = []
    for trial_id, gradcam, status in (
        ("resnet18-fold3", maps, FINISHED),  # a 2-D encoder
        ("resnet18_1d-fold3", None, FINISHED),  # raw audio: no Grad-CAM
        ("vgg16-fold3", maps, FAILED),
    ):
        run = TrialRun.open(make_config(), who(store, parent_run_id=parent_id, trial_id=trial_id))
        run.log_final_figures(result, gradcam)
        run.finish("FINISHED")
        curve = parse_macro_roc(macro_roc_json(result.roc))
        record = TrialRecord(trial_id, status, "all", fold=3, metrics=result.metrics())
        record.macro_roc = curve
        records.append(record)
    first = find_trial_runs(store.tracking_uri, parent_id)[0].info.run_id
    download = Path(client.download_artifacts(first, "evaluation", str(tmp_path / "trial")))
    assert sorted(path.name for path in download.iterdir()) == [
        "test_auc.json", "test_gradcam.png", "test_roc.png"
    ]  # fmt: skip
    aucs = json.loads((download / "test_auc.json").read_text())
    assert aucs["macro"] == pytest.approx(result.roc.macro_auc) and aucs["without_roc"] == []
    assert_png_not_blank(download / "test_roc.png")
    assert_png_not_blank(download / "test_gradcam.png")

    folder = tmp_path / "sweep" / FIGURES_FOLDER
    written = write_fold_roc(records, folder)
    parent = tracking.ParentRun(store.tracking_uri, parent_id, store.experiment)
    attach_fold_figures(parent, records, folder, written)
    logged = {info.path for info in client.list_artifacts(parent_id, "figures/fold_3")}
    assert logged == {
        "figures/fold_3/roc_auc.csv",
        "figures/fold_3/roc_macro.png",
        "figures/fold_3/gradcam_resnet18-fold3.png",
    }
    gathered = client.download_artifacts(
        parent_id, "figures/fold_3/gradcam_resnet18-fold3.png", str(tmp_path / "parent")
    )
    assert_png_not_blank(Path(gathered))


def test_non_finite_metrics_are_logged_and_bad_values_named(
    store: RunIdentity, client: MlflowClient
) -> None:
    run = TrialRun.open(make_config(), who(store, trial_id=f"nan-{uuid.uuid4().hex[:6]}"))
    run.log_metrics({"loss": float("nan"), "grad": float("inf"), "ok": np.float32(1.5)}, step=4)
    with pytest.raises(TypeError, match="'note'.*must be numbers"):
        run.log_metrics({"note": "diverged"}, step=5)
    run.finish("FINISHED")
    metrics = client.get_run(run.run_id).data.metrics
    assert np.isnan(metrics["loss"])
    assert metrics["grad"] > 1e300  # MLflow stores +inf clamped to the largest double
    assert history_steps(client, run.run_id, "ok") == [(4, 1.5)]


def test_many_metrics_and_params_are_batched(store: RunIdentity, client: MlflowClient) -> None:
    """More than MLflow's 1000 metrics per batch in one call."""
    run = TrialRun.open(make_config(), who(store, trial_id=f"wide-{uuid.uuid4().hex[:6]}"))
    run.log_metrics({f"per_class_f1/{i}": i / 1500 for i in range(1500)}, step=0)
    run.finish("FINISHED")
    logged = client.get_run(run.run_id).data
    assert len([k for k in logged.metrics if k.startswith("per_class_f1/")]) == 1500
    assert len(logged.params) == len(config_params(make_config())) > 70


# --- restarts -----------------------------------------------------------------------------


def test_restarted_trial_continues_its_run_without_duplicate(
    store: RunIdentity, client: MlflowClient
) -> None:
    parent_id = new_parent(store)
    cfg, identity = make_config(), who(store, parent_run_id=parent_id, trial_id="trial_00007")
    first = TrialRun.open(cfg, identity)
    first.log_metrics({"loss": 3.0}, step=0)
    first.finish("FAILED", error="RuntimeError: worker died")
    assert client.get_run(first.run_id).data.tags[TAG_ERROR] == "RuntimeError: worker died"

    second = TrialRun.open(cfg, identity)
    assert second.resumed and second.run_id == first.run_id
    reopened = client.get_run(second.run_id)
    assert reopened.info.status == "RUNNING"
    assert TAG_ERROR not in reopened.data.tags
    assert reopened.data.tags["clarlab.previous_error"] == "RuntimeError: worker died"
    assert reopened.data.tags["clarlab.resume_count"] == "1"
    second.log_metrics({"loss": 2.0}, step=1)
    second.finish("FINISHED")

    children = find_trial_runs(store.tracking_uri, parent_id)
    assert [child.info.run_id for child in children] == [first.run_id]
    assert children[0].info.status == "FINISHED"
    assert history_steps(client, first.run_id, "loss") == [(0, 3.0), (1, 2.0)]

    # Same trial id under another parent (another sweep) is another run.
    other_parent = new_parent(store)
    other = TrialRun.open(
        make_config(), who(store, parent_run_id=other_parent, trial_id="trial_00007")
    )
    other.finish("FINISHED")
    assert other.run_id != first.run_id and not other.resumed


def test_continue_by_run_id_and_changed_params(store: RunIdentity, client: MlflowClient) -> None:
    cfg, identity = (
        make_config(),
        who(store),
    )  # no trial id: only the run id (from a checkpoint) finds it
    first = TrialRun.open(cfg, identity)
    first.finish("KILLED")
    changed = cfg.model_copy(update={"data": cfg.data.model_copy(update={"fold": 4})})
    with pytest.warns(UserWarning, match="data.fold"):
        again = TrialRun.open(changed, identity, run_id=first.run_id)
    assert again.run_id == first.run_id and again.resumed
    again.finish("FINISHED")
    logged = client.get_run(first.run_id)
    assert logged.data.params["data.fold"] == "3", "MLflow params are immutable"
    assert json.loads(logged.data.tags["clarlab.params_changed"]) == {"data.fold": "4"}

    with pytest.raises(MlflowException, match="cannot continue MLflow run 'no-such-run'"):
        TrialRun.open(cfg, identity, run_id="no-such-run")
    with pytest.raises(MlflowException, match="parent_run_id='missing'.*start_parent_run"):
        TrialRun.open(make_config(), who(store, parent_run_id="missing"))


# --- failure and isolation ----------------------------------------------------------------


def test_failed_run_records_truncated_error(store: RunIdentity, client: MlflowClient) -> None:
    run = TrialRun.open(make_config(), who(store))
    long_error = "Traceback:\n" + "  frame\n" * 2_000 + "FloatingPointError: loss is nan at step 7"
    run.finish("FAILED", error=long_error)
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    tag = logged.data.tags[TAG_ERROR]
    assert len(tag) < len(long_error) and tag.endswith("loss is nan at step 7")
    assert "characters omitted" in tag
    assert {info.path for info in client.list_artifacts(run.run_id)} == {"error.txt"}


def test_context_manager_marks_exceptions_failed(store: RunIdentity, client: MlflowClient) -> None:
    with pytest.raises(ValueError), TrialRun.open(make_config(), who(store)) as run:
        raise ValueError("bad batch shape (3, 1)")
    logged = client.get_run(run.run_id)
    assert logged.info.status == "FAILED"
    assert logged.data.tags[TAG_ERROR] == "ValueError: bad batch shape (3, 1)"
    with pytest.raises(ValueError, match="status must be"):
        run.finish("DONE")  # type: ignore[arg-type]


def test_two_trial_runs_in_one_process_do_not_interfere(
    store: RunIdentity, client: MlflowClient
) -> None:
    """Tune runs function trials as threads of one process: no shared active run."""
    parent_id = new_parent(store)
    run_ids: dict[str, str] = {}
    errors: list[BaseException] = []

    def trial(name: str, offset: float, status: str) -> None:
        try:
            cfg, identity = make_config(), who(store, parent_run_id=parent_id, trial_id=name)
            run = TrialRun.open(cfg, identity)
            run_ids[name] = run.run_id
            for epoch in range(8):
                run.log_metrics({"loss": offset + epoch}, step=epoch)
            run.finish(status, error=f"{name} failed" if status == "FAILED" else None)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [
        threading.Thread(target=trial, args=("trial_a", 100.0, "FINISHED")),
        threading.Thread(target=trial, args=("trial_b", 200.0, "FAILED")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert mlflow.active_run() is None
    a, b = client.get_run(run_ids["trial_a"]), client.get_run(run_ids["trial_b"])
    assert history_steps(client, a.info.run_id, "loss") == [(e, 100.0 + e) for e in range(8)]
    assert history_steps(client, b.info.run_id, "loss") == [(e, 200.0 + e) for e in range(8)]
    assert (a.info.status, b.info.status) == ("FINISHED", "FAILED")
    assert TAG_ERROR not in a.data.tags and b.data.tags[TAG_ERROR] == "trial_b failed"
    assert {
        run.data.tags[TAG_TRIAL_ID] for run in find_trial_runs(store.tracking_uri, parent_id)
    } == {
        "trial_a",
        "trial_b",
    }
