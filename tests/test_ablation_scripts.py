"""Every ablation script of both papers: its dry run lists the right trials (quick and
paper presets), and a tiny real run (real Ray, real FSDD audio, a real MLflow store)
writes the paper-shaped table whose numbers equal the child runs' metrics."""

from __future__ import annotations

import csv
import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.sweep.state import SweepState
from core.tracking import GRADCAM_ARTIFACT, ROC_ARTIFACT, find_trial_runs, tracking_client
from tests.images import assert_png_not_blank


def approx(expected: float) -> Any:
    """The tables keep six decimals: equal to a child's metric to 1e-6."""
    return pytest.approx(expected, abs=1e-6)


SCRIPTS = {
    "run_features": "features",
    "run_label_fraction": "label_fraction",
    "run_projection_dim": "projection_dim",
    "run_moco_queue": "moco_queue",
    "run_ssl_methods": "ssl_methods",
    "run_backbones": "backbones",
    "run_augmentations": "augmentations",
}


@pytest.fixture(autouse=True)
def imagenet_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """torchvision's cache as a machine with network leaves it, for the dry runs of
    run_backbones.py's default recipe (QUACLRS Table 2 is ImageNet-pretrained): ImageNet
    weights cannot be downloaded here, and a dry run only checks that the files exist
    (empty stand-ins; the real runs below train the from-scratch recipe)."""
    from core.imagenet import IMAGENET_CHECKPOINTS

    home = tmp_path_factory.getbasetemp() / "torch-home"
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    for name in IMAGENET_CHECKPOINTS.values():
        (checkpoints / name).touch()
    monkeypatch.setenv("TORCH_HOME", str(home))
    return checkpoints


def _main(script: str):
    return importlib.import_module(f"ablations.{script}").main


def _dry_run(script: str, capsys: pytest.CaptureFixture[str], *argv: str) -> list[str]:
    """Run ``--dry-run`` in this process; the trial ids it lists, in order."""
    return _dry_run_output(script, capsys, *argv)[0]


def _dry_run_output(
    script: str, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[list[str], str]:
    code = _main(script)(["--dry-run", *argv])
    out = capsys.readouterr()
    assert code == 0, out.err
    ids = []
    for line in out.out.splitlines():
        parts = line.split()
        if len(parts) > 10 and parts[0].isdigit():
            ids.append(parts[1])
    return ids, out.out


# --- dry runs -------------------------------------------------------------------------
def test_dry_runs_list_each_papers_trials(fsdd_root: Path, capsys) -> None:
    features = _dry_run("run_features", capsys)
    assert features[:6] == [
        "raw1d-FD-fsdd", "raw1d-FD+TST-fsdd", "raw1d-FD+TST+PS-fsdd",
        "stft3-FD-fsdd", "stft3-FD+TM-fsdd", "stft3-FD+TM+TS-fsdd",
    ]  # fmt: skip
    assert "raw1d-fsdd-untrained" in features and "stft3-fsdd-supervised" in features
    chosen = _dry_run("run_features", capsys, "--sets", "stft3:FD+TM", "--no-controls")
    assert chosen == ["stft3-FD+TM-fsdd"]

    fractions = _dry_run("run_label_fraction", capsys)
    assert fractions == [
        f"{m}-{f}" for m in ("supervised", "simclr", "clar") for f in ("1", "0.2", "0.1", "0.01")
    ] + ["untrained"]

    dims = _dry_run("run_projection_dim", capsys, "--no-controls")
    assert dims == [f"{d}-fold{k}" for d in (64, 128, 256) for k in range(1, 7)]

    queues = _dry_run("run_moco_queue", capsys, "--no-controls")
    assert queues == ["b8-q4096", "b16-q4096", "b32-q4096", "b32-q8192"]
    grid = _dry_run("run_moco_queue", capsys, "--no-controls", "--full-grid")
    assert grid == ["b8-q4096", "b8-q8192", "b16-q4096", "b16-q8192", "b32-q4096", "b32-q8192"]

    methods = _dry_run("run_ssl_methods", capsys, "--no-controls")
    assert methods == [
        f"{m}-fold1" for m in ("simclr", "moco", "mocov2", "byol", "barlow_twins", "dino", "swav")
    ]
    backbones = _dry_run("run_backbones", capsys, "--folds", "2", "--no-controls")
    assert backbones == [
        f"{e}-fold2"
        for e in ("alexnet", "vgg16", "resnet18", "mobilenet_v2", "inception_v3",
                  "efficientnet_b0", "convnext_tiny")
    ]  # fmt: skip
    augmentations = _dry_run("run_augmentations", capsys, "--folds", "1", "--no-controls")
    assert len(augmentations) == 14 * 2
    assert augmentations[:2] == ["original-simclr-fold1", "original-moco-fold1"]


def _augment_column(out: str) -> dict[str, str]:
    """trial id -> what the dry-run table says each of its views gets."""
    rows = (line.split() for line in out.splitlines())
    return {parts[1]: parts[2] for parts in rows if len(parts) > 10 and parts[0].isdigit()}


def test_the_dry_run_says_which_moco_queues_it_caps(fsdd_root: Path, capsys) -> None:
    """The quick preset's MoCo trials keep MoCo's published 65,536-key queue, longer than
    FSDD's few hundred training clips: the dry run says each is capped, and to what."""
    _, out = _dry_run_output("run_ssl_methods", capsys, "--no-controls")
    capped = [line for line in out.splitlines() if "method.queue_size=65536" in line]
    assert capped and all(line.startswith("note: mocov") or line.startswith("note: moco")
                          for line in capped)  # fmt: skip
    assert all("capped to" in line for line in capped)


def test_the_dry_run_shows_what_each_view_gets(fsdd_root: Path, capsys) -> None:
    """The random view base a trial's views get is shown, not hidden behind "(none)";
    supervised training (one view, no base) shows none."""
    _, out = _dry_run_output("run_augmentations", capsys, "--folds", "1", "--no-controls")
    shown = _augment_column(out)
    assert shown["original-simclr-fold1"] == "(TS>FD)"  # an empty pipeline: the base alone
    assert "view base (in parentheses)" in out
    _, out = _dry_run_output("run_backbones", capsys, "--folds", "1", "--no-controls")
    assert set(_augment_column(out).values()) == {"(none)"}


# QUACLRS's scripts: their paper preset is on its 13-class set, UrbanSound8K without siren
# plus sireNNet's four classes (QUACLRS 4.1).
# Paper presets whose every archive has a known SHA-256 (Speech Commands); the others are
# refused unless the run allows unverified downloads (no digest was published for them).
VERIFIED_PAPER_SCRIPTS = ("run_aug_matrix", "run_label_fraction")
UNVERIFIED = ["--set", "data.allow_unverified=true"]

QUACLRS_SCRIPTS = ("run_augmentations", "run_backbones", "run_moco_queue", "run_projection_dim",
                   "run_ssl_methods")  # fmt: skip


def _sirennet_folder(folder: Path) -> Path:
    """A sireNNet folder in its published layout: one folder of .wav files per class."""
    import numpy as np
    import soundfile

    for name in ("ambulance", "firetruck", "police", "traffic"):
        (folder / name).mkdir(parents=True)
        soundfile.write(folder / name / f"{name}-1.wav", np.zeros(4800, dtype=np.float32), 48_000)
    return folder


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_paper_preset_dry_runs(script: str, capsys, tmp_path: Path) -> None:
    """The paper's datasets are not on this machine: the paper preset fetches what can be
    downloaded, and its dry run says so instead of failing; QUACLRS's run on its 13-class
    set, whose sireNNet part is given (it cannot be downloaded). An archive whose SHA-256
    the project does not know is refused before anything runs, unless the run says it
    may be used unverified (Speech Commands, CLAR's default, has one)."""
    argv = ["--preset", "paper", "--no-controls"]
    if script in QUACLRS_SCRIPTS:
        argv += ["--set", f"data.extra_root={_sirennet_folder(tmp_path / 'sirennet')}"]
    if script not in VERIFIED_PAPER_SCRIPTS:
        assert _main(script)(["--dry-run", *argv]) == 2
        assert "no SHA-256 is recorded" in capsys.readouterr().err
        argv += UNVERIFIED
    ids, out = _dry_run_output(script, capsys, *argv)
    assert ids and "(download)" in out
    assert "4 worker(s)/trial" in out
    if script in QUACLRS_SCRIPTS:
        assert "urbansound8k_sirennet" in out and " urbansound8k " not in out


@pytest.mark.parametrize(
    "script", ["run_augmentations", "run_moco_queue", "run_projection_dim", "run_ssl_methods"]
)
def test_quaclrs_ssl_tables_train_in_fp16_with_a_grad_scaler(
    script: str, capsys, tmp_path: Path
) -> None:
    """QUACLRS 4.6 trains with FP16 and PyTorch's GradScaler: every trial of its paper
    preset says amp: fp16 (not auto, which picks bf16 on a GPU that has it)."""
    sirennet = _sirennet_folder(tmp_path / "sirennet")
    argv = ["--preset", "paper", "--no-controls", "--show-config"]
    ids, out = _dry_run_output(
        script, capsys, *argv, "--set", f"data.extra_root={sirennet}", *UNVERIFIED
    )
    assert ids and out.count("amp: fp16") == len(ids)


# QUACLRS 4.5's augmentations (its settings), the random view base in parentheses, and
# the empty pipeline; CLAR's TST and PS (stretch 0.5-1.5, +-15 semitones) are not among them.
QUACLRS_CODES = {"TST0.8", "TST1.2", "TSTQ", "PS+2", "PS-2", "PSQ", "WN5", "WN15", "WNQ",
                 "MIX", "SA", "SA0", "SA1", "SA2", "PA", "PA0", "PA1", "PA2"}  # fmt: skip


@pytest.mark.parametrize("preset", ["quick", "paper"])
@pytest.mark.parametrize("script", QUACLRS_SCRIPTS)
def test_every_quaclrs_grid_trains_on_quaclrs_augmentation_codes(
    script: str, preset: str, capsys, tmp_path: Path
) -> None:
    """Each view of every QUACLRS trial gets QUACLRS's codes (after its random base, shown
    in parentheses); the backbone tables get no augmentation at all."""
    argv = ["--preset", preset, "--no-controls"]
    if preset == "paper":
        argv += ["--set", f"data.extra_root={_sirennet_folder(tmp_path / 'sirennet')}", *UNVERIFIED]
    _, out = _dry_run_output(script, capsys, *argv)
    shown = _augment_column(out)
    assert shown
    for trial_id, augment in shown.items():
        if script == "run_backbones":
            assert augment == "(none)", trial_id
            continue
        ablated = re.sub(r"^\([^)]*\)>?", "", augment)  # the base, in parentheses
        codes = [c for part in ablated.split("|") for c in part.split(">") if c]
        assert set(codes) <= QUACLRS_CODES, f"{trial_id}: {augment}"


@pytest.mark.parametrize("script", QUACLRS_SCRIPTS)
def test_a_quaclrs_paper_dry_run_without_sirennet_says_where_to_put_it(
    script: str, capsys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sireNNet cannot be downloaded: without it the paper preset's dry run lists its
    trials (on 13 classes) and exits 2 before anything else runs, naming the folder it looked in, where to get it, and the 10-class
    fallback that is not the paper's class set."""
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path))
    (tmp_path / "sirennet").mkdir()
    (tmp_path / "sirennet" / "Ambulance").mkdir()  # found, but not the published layout
    code = _main(script)(["--dry-run", "--preset", "paper", "--no-controls"])
    out, err = capsys.readouterr()
    assert code == 2, err
    # What would run is listed first: the 13-class dataset, its classes, each view's codes.
    rows = [line.split() for line in out.splitlines()]
    rows = [row for row in rows if len(row) > 10 and row[0].isdigit()]
    assert rows and all(row[7:9] == ["urbansound8k_sirennet", "13"] for row in rows)
    assert str(tmp_path / "sirennet") in err and "found folders: ['Ambulance']" in err
    assert "--set data.dataset=urbansound8k" in err and "not the paper's" in err


# run_backbones.py's recipes: one per QUACLRS backbone table, Table 2 by default.
RECIPE_SETTINGS = {
    "table2": {"weights": "imagenet", "amp": "'off'", "method": "supervised"},
    "table5": {"weights": "imagenet", "amp": "'off'", "method": "linear_probe"},
    "table9": {"weights": "random", "amp": "'off'", "method": "supervised"},
    "table11": {"weights": "imagenet", "amp": "fp16", "method": "supervised"},
}


@pytest.mark.parametrize("recipe", [None, *RECIPE_SETTINGS])
def test_each_backbone_recipe_is_its_tables_protocol(
    recipe: str | None, capsys, tmp_path: Path
) -> None:
    """Pretrained or not, fine-tuned or linear probe, FP32 or FP16: what each QUACLRS table
    did, in every trial's config; the default is Table 2. A recipe is the paper's protocol,
    so the paper preset names no deviation for it."""
    argv = ["--preset", "paper", "--no-controls", "--show-config", "--folds", "1"]
    argv += ["--set", f"data.extra_root={_sirennet_folder(tmp_path / 'sirennet')}", *UNVERIFIED]
    ids, out = _dry_run_output(
        "run_backbones", capsys, *argv, *(["--recipe", recipe] if recipe else [])
    )
    expected = RECIPE_SETTINGS[recipe or "table2"]
    configs = [yaml.safe_load(block.split("\n", 1)[1].split("\n\n", 1)[0])
               for block in out.split("# --- trial ")[1:]]  # fmt: skip
    assert len(configs) == len(ids) == 7
    for config in configs:
        assert config["model"]["weights"] == expected["weights"]
        assert config["train"]["amp"] == expected["amp"].strip("'")
        assert config["method"]["name"] == expected["method"]
        assert config["augment"]["pipeline"] == [] and config["augment"]["spec_pipeline"] == []
        assert config["data"]["dataset"] == "urbansound8k_sirennet"
    assert f"recipe {recipe or 'table2'}: QUACLRS" in out
    assert "deviation from the paper" not in out


# --- tiny real runs ---------------------------------------------------------------------


def _tiny(fsdd_root: Path, cache_dir: Path, quaclrs: bool, figures: bool = False) -> list[str]:
    """Settings that run a trial's every stage in seconds (the final figures only where a
    test looks at them)."""
    settings: dict[str, Any] = {
        "train.final_figures": figures,
        "data.root": str(fsdd_root),
        "data.cache_dir": str(cache_dir),
        "data.max_clips": 120,
        "data.clip_seconds": 0.5,
        "model.width": 4,
        "model.proj_hidden_dim": 16,
        "model.eval_hidden_dim": 16,
        "train.epochs": 1,
        "train.max_steps_per_epoch": 1,
        "train.eval_epochs": 1,
    }
    if quaclrs:
        # QUACLRS's 48 kHz mel front end, as a 32x32 image instead of 224x224: these tests
        # check the tables, and the image's size is the front end's business (test_features).
        settings["frontend.image_size"] = 32
    else:
        settings["data.sample_rate"] = 8000
    argv = []
    for key, value in settings.items():
        argv += ["--set", f"{key}={value}"]
    return argv


def _run(
    script: str, tmp_path: Path, mlflow_store: Path, argv: list[str]
) -> tuple[SweepState, Path]:
    run_name = f"tiny-{script}"
    code = _main(script)(
        [
            *argv,
            "--results",
            str(tmp_path),
            "--run-name",
            run_name,
            "--tracking-uri",
            f"sqlite:///{mlflow_store}/mlflow.db",
            "--experiment",
            f"pytest-{script}",
            "--progress-every",
            "600",
            # One trial actor, reused by every trial: a trial here is a second of work and
            # a trial process's start (torch, MLflow, Ray Tune) costs several CPU-seconds.
            "--max-concurrent",
            "1",
        ]
    )
    assert code == 0
    state = SweepState.load(tmp_path / run_name)
    client = tracking_client(state.tracking_uri)
    folder = Path(client.download_artifacts(state.parent_run_id, "report", str(tmp_path / "dl")))
    return state, folder


def _table(folder: Path, name: str) -> dict[tuple[str, str, str], float]:
    with (folder / f"{name}_table.csv").open() as handle:
        return {
            (line["panel"], line["row"], line["column"]): float(line["mean"])
            for line in csv.DictReader(handle)
            if line["mean"]
        }


def _children(state: SweepState) -> dict[str, dict[str, float]]:
    runs = find_trial_runs(state.tracking_uri, state.parent_run_id)
    assert {run.info.status for run in runs} == {"FINISHED"}
    return {run.data.tags["clarlab.trial_id"]: run.data.metrics for run in runs}


def _check_figures(state: SweepState, tmp_path: Path, fold: int) -> None:
    """QUACLRS 4.6's figures: every trial logged its ROC curves and Grad-CAM panels (2-D
    encoders all), real PNGs with something drawn; the parent run holds, for the fold, the
    trials' macro ROC curves overlaid, their AUCs, and each trial's Grad-CAM image."""
    client = tracking_client(state.tracking_uri)
    logged = _children(state)
    for run in find_trial_runs(state.tracking_uri, state.parent_run_id):
        trial_id = run.data.tags["clarlab.trial_id"]
        for artifact in (ROC_ARTIFACT, GRADCAM_ARTIFACT):
            local = client.download_artifacts(run.info.run_id, artifact, str(tmp_path / trial_id))
            assert_png_not_blank(Path(local))
    folder = Path(
        client.download_artifacts(state.parent_run_id, f"figures/fold_{fold}", str(tmp_path))
    )
    assert {path.name for path in folder.iterdir()} == {
        "roc_macro.png",
        "roc_auc.csv",
        *(f"gradcam_{trial_id}.png" for trial_id in logged),
    }
    for path in folder.glob("*.png"):
        assert_png_not_blank(path)
    with (folder / "roc_auc.csv").open() as handle:
        aucs = {line["trial"]: float(line["macro_auc"]) for line in csv.DictReader(handle)}
    assert aucs == {
        trial_id: approx(metrics["test_macro_auc"]) for trial_id, metrics in logged.items()
    }


@pytest.mark.slow
def test_label_fraction_table_and_figure(ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path):
    state, folder = _run(
        "run_label_fraction",
        tmp_path,
        mlflow_store,
        ["--methods", "simclr", "clar", "--fractions", "0.1", *_tiny(fsdd_root, cache_dir, False)],
    )
    logged = _children(state)
    assert set(logged) == {"simclr-0.1", "clar-0.1", "untrained", "0.1-supervised"}
    table = _table(folder, "label_fraction")
    for method in ("simclr", "clar"):
        assert table[("all", method, "0.1")] == approx(logged[f"{method}-0.1"]["test_top1"])
    assert table[("all", "untrained control", "0.1")] == approx(logged["untrained"]["test_top1"])
    assert table[("all", "supervised reference", "0.1")] == approx(
        logged["0.1-supervised"]["test_top1"]
    )
    assert (folder / "label_fraction_curves.png").stat().st_size > 0
    assert (folder / "label_fraction_table.png").stat().st_size > 0
    assert "| clar |" in (folder / "label_fraction_table.md").read_text()


@pytest.mark.slow
def test_folded_tables_equal_their_children(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    """QUACLRS k-fold on FSDD's speaker folds: projection dims x two folds, with the mean
    and std over folds in the table."""
    state, folder = _run(
        "run_projection_dim",
        tmp_path,
        mlflow_store,
        [
            "--dims",
            "16",
            "32",
            "--folds",
            "1",
            "2",
            "--no-controls",
            *_tiny(fsdd_root, cache_dir, True),
        ],  # fmt: skip
    )
    logged = _children(state)
    assert set(logged) == {"16-fold1", "16-fold2", "32-fold1", "32-fold2"}
    table = _table(folder, "projection_dim")
    for dim in ("16", "32"):
        values = [logged[f"{dim}-fold{k}"]["test_top1"] for k in (1, 2)]
        assert table[("all", dim, "fold1")] == approx(values[0])
        assert table[("all", dim, "fold2")] == approx(values[1])
        assert table[("all", dim, "mean")] == approx(sum(values) / 2)
        assert table[("all", dim, "wall (s)")] > 0
    # Speaker folds: each trial tested on one speaker's 500 recordings.
    run = find_trial_runs(state.tracking_uri, state.parent_run_id)[0]
    assert run.data.params["data.split_scheme"] == "quaclrs"
    assert run.data.params["frontend.setting"] == "quaclrs"


@pytest.mark.slow
def test_moco_queue_ssl_methods_and_backbones_tables(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    tiny = _tiny(fsdd_root, cache_dir, True)
    with_figures = _tiny(fsdd_root, cache_dir, True, figures=True)
    state, folder = _run(
        "run_moco_queue",
        tmp_path / "moco",
        mlflow_store,
        ["--full-grid", "--batch-sizes", "8", "--queues", "16", "32", "--no-controls", *tiny],
    )
    logged = _children(state)
    table = _table(folder, "moco_queue")
    assert set(logged) == {"b8-q16", "b8-q32"}
    for trial_id, metrics in logged.items():
        assert table[("all", trial_id, "top-1")] == approx(metrics["test_top1"])
        assert table[("all", trial_id, "macro F1")] == approx(metrics["test_macro_f1"])
        assert "test_macro_auc" in metrics  # a metric with or without the figures
    client = tracking_client(state.tracking_uri)
    for run in find_trial_runs(state.tracking_uri, state.parent_run_id):  # figures off
        drawn = {item.path for item in client.list_artifacts(run.info.run_id, "evaluation")}
        assert ROC_ARTIFACT not in drawn and GRADCAM_ARTIFACT not in drawn

    state, folder = _run(
        "run_ssl_methods",
        tmp_path / "ssl",
        mlflow_store,
        [
            "--methods",
            "byol",
            "swav",
            "--no-controls",
            "--set",
            "train.batch_size=8",
            *with_figures,
        ],
    )
    logged = _children(state)
    table = _table(folder, "ssl_methods")
    for method in ("byol", "swav"):
        metrics = logged[f"{method}-fold1"]
        assert table[("all", method, "top-1")] == approx(metrics["test_top1"])
        assert table[("all", method, "weighted F1")] == approx(metrics["test_weighted_f1"])
    per_class = (folder / "ssl_methods_per_class_f1.csv").read_text().splitlines()
    assert per_class[0] == "class,byol,swav" and len(per_class) == 11  # ten digits
    _check_figures(state, tmp_path / "ssl-figures", fold=1)

    state, folder = _run(
        "run_backbones",
        tmp_path / "backbones",
        mlflow_store,
        [
            "--recipe",
            "table9",
            "--encoders",
            "mobilenet_v2",
            "--folds",
            "3",
            "--set",
            "train.batch_size=8",
            *with_figures,
        ],  # fmt: skip
    )
    logged = _children(state)
    assert set(logged) == {"mobilenet_v2-fold3", "mobilenet_v2-fold3-untrained"}
    table = _table(folder, "backbones")
    assert table[("all", "mobilenet_v2", "fold3")] == approx(
        logged["mobilenet_v2-fold3"]["test_top1"]
    )
    assert table[("all", "untrained control mobilenet_v2", "fold3")] == approx(
        logged["mobilenet_v2-fold3-untrained"]["test_top1"]
    )
    _check_figures(state, tmp_path / "backbones-figures", fold=3)


@pytest.mark.slow
def test_features_and_augmentations_tables(
    ray_cluster, fsdd_root, cache_dir, mlflow_store, tmp_path
):
    state, folder = _run(
        "run_features",
        tmp_path / "features",
        mlflow_store,
        ["--sets", "raw1d:FD", "stft3:FD+TM", "--no-controls", *_tiny(fsdd_root, cache_dir, False)],
    )
    logged = _children(state)
    table = _table(folder, "features")
    assert set(logged) == {"raw1d-FD-fsdd", "stft3-FD+TM-fsdd"}
    assert table[("all", "stft3-FD+TM", "fsdd")] == approx(logged["stft3-FD+TM-fsdd"]["test_top1"])

    state, folder = _run(
        "run_augmentations",
        tmp_path / "augs",
        mlflow_store,
        [
            "--augmentations",
            "original",
            "pitchshift_2",
            "--methods",
            "simclr",
            "--folds",
            "2",
            "--no-controls",
            "--set",
            "train.batch_size=8",
            *_tiny(fsdd_root, cache_dir, True),
        ],  # fmt: skip
    )
    logged = _children(state)
    table = _table(folder, "augmentations")
    assert set(logged) == {"original-simclr-fold2", "pitchshift_2-simclr-fold2"}
    for name in ("original", "pitchshift_2"):
        value = logged[f"{name}-simclr-fold2"]["test_top1"]
        assert table[("simclr", name, "fold2")] == approx(value)
        assert table[("simclr", name, "mean")] == approx(value)


def test_search_dry_runs_under_both_presets(fsdd_root: Path, capsys) -> None:
    """The eighth script: the search lists what it samples, under quick and paper."""
    search = _main("run_search")
    assert search(["--dry-run"]) == 0
    assert "optim.lr" in capsys.readouterr().out
    assert search(["--dry-run", "--preset", "paper"]) == 0
    out = capsys.readouterr().out
    assert "(download)" in out and "not runnable on this machine" in out
