"""Grid files without Ray: loading, validation errors, expansion, presets, resources, and
the CLI's dry run of the full Figure 4 matrix."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from ablations.run_aug_matrix import EXIT_BAD_INPUT, EXIT_OK, main
from core.config import PRESETS, ExperimentConfig
from core.sweep import (
    ResourceError,
    SweepError,
    SweepRequest,
    expand_trials,
    load_grid,
    plan_resources,
    prepare_grid,
    restrict_axes,
    run_sweep,
)

PAPER_CODES = ["PS", "FD", "WN", "TM", "TS", "TST"]


def _write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


SMALL_SPACE = """
ablation: small
base:
  method: {name: simclr}
  train: {epochs: 7}
presets:
  quick:
    train.batch_size: 16
axes:
  frontend.name:
    values: [raw1d, stft3]
    with:
      raw1d: {model.encoder: resnet18_1d}
      stft3: {model.encoder: resnet18}
  augment.pipeline: {matrix: [PS, FD]}
"""


def test_full_matrix_dry_run_lists_72_trials(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dry-run", "--preset", "quick"]) == EXIT_OK
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line[:3].strip().isdigit()]
    rows = [row for row in rows if len(row) == 15]  # the table, not the summary lines
    assert len(rows) == 76
    # After the 72 cells, per front end the untrained-encoder control and the supervised
    # reference, with the same encoder and budget.
    controls, rows = rows[72:], rows[:72]
    assert [(row[1], row[4], row[5]) for row in controls] == [
        ("raw1d-untrained", "resnet18_1d", "untrained"),
        ("raw1d-supervised", "resnet18_1d", "supervised"),
        ("stft3-untrained", "resnet18", "untrained"),
        ("stft3-supervised", "resnet18", "supervised"),
    ]
    ids = [row[1] for row in rows]
    assert len(set(ids)) == 72
    # Row-major per front end: raw1d first (as declared), first augmentation = row.
    assert ids[:3] == ["raw1d-PS-PS", "raw1d-PS-FD", "raw1d-PS-WN"]
    assert ids[36] == "stft3-PS-PS" and ids[-1] == "stft3-TST-TST"
    by_id = {row[1]: row for row in rows}
    assert by_id["raw1d-PS-PS"][2] == "PS"  # diagonal: the single augmentation, once
    assert by_id["stft3-TM-FD"][2] == "TM>FD"
    assert {row[4] for row in rows if row[3] == "raw1d"} == {"resnet18_1d"}
    assert {row[4] for row in rows if row[3] == "stft3"} == {"resnet18"}
    assert {row[5] for row in rows} == {"simclr"}
    assert {row[6] for row in rows} == {"0.5"}  # SimCLR's published temperature
    # FSDD's official split, scanned from the folder: 300 training clips (max_clips), and
    # the whole official test split, which max_clips never subsamples.
    assert {row[10] for row in rows} == {"300/0/300"}
    assert {row[8] for row in rows} == {"10"}  # ten digits, from the scanned listing
    assert "76 trials" in out and "in-process loop" in out
    # --no-controls leaves the 72 cells; --seeds 2 doubles everything.
    assert main(["--dry-run", "--no-controls"]) == EXIT_OK
    assert "72 trials" in capsys.readouterr().out
    assert main(["--dry-run", "--seeds", "2"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "152 trials" in out and "stft3-FD-TM-seed1" in out


def test_expansion_pairs_and_configs() -> None:
    space = load_grid("aug_matrix")
    assert [axis.field for axis in space.axes] == ["frontend.name", "augment.pipeline"]
    trials = expand_trials(space, preset="quick")
    assert len(trials) == 72
    for trial in trials:
        first, second = trial.first, trial.second
        assert trial.pipeline == ([first] if first == second else [first, second])
        assert trial.trial_id == f"{trial.panel}-{first}-{second}"
        assert trial.config.frontend.name == trial.panel
    # The config is the experiment only: the same cell expanded again (another sweep,
    # another parent run) is an equal config; the run's identity travels beside it.
    assert [t.config for t in expand_trials(space, preset="quick")] == [t.config for t in trials]
    assert "tracking" not in trials[0].config.model_dump()
    pairs = {(t.first, t.second) for t in trials if t.panel == "stft3"}
    assert pairs == {(a, b) for a in PAPER_CODES for b in PAPER_CODES}


def test_merge_order_defaults_preset_base_space_preset_cell_set(tmp_path: Path) -> None:
    space = load_grid(_write(tmp_path, SMALL_SPACE))
    # base alone: epochs from the YAML base.
    plain = expand_trials(space, preset=None)
    assert plain[0].config.train.epochs == 7
    # The YAML's base wins over the code preset; its presets.quick wins over both.
    quick = expand_trials(space, preset="quick")
    assert PRESETS["quick"]["train"]["epochs"] != 7
    assert quick[0].config.train.epochs == 7
    assert quick[0].config.train.batch_size == 16
    assert quick[0].config.model.width == PRESETS["quick"]["model"]["width"]  # preset < base
    # --set wins over all of them; --cell-set over --set, for its cell only.
    forced = expand_trials(
        space,
        preset="quick",
        overrides={"train.epochs": 3, "train.batch_size": 8},
        trial_overrides={"stft3-FD-PS": {"train.seed": 5}},
    )
    assert {t.config.train.epochs for t in forced} == {3}
    assert {t.config.train.batch_size for t in forced} == {8}
    seeds = {t.trial_id: t.config.train.seed for t in forced}
    assert seeds["stft3-FD-PS"] == 5 and sum(seeds.values()) == 5
    # --set on a field an axis sweeps would make every cell the same: refused.
    for swept in ("augment.pipeline", "model.encoder"):
        with pytest.raises(SweepError, match=f"{swept} is swept by an axis"):
            expand_trials(space, preset="quick", overrides={swept: "x"})


QUACLRS_SPACE = """
ablation: quaclrs_like
base:
  data: {dataset: urbansound8k, split_scheme: quaclrs, fold: 1}
  optim: {name: adam, lr: 0.0001}
axes:
  method.name: [simclr, moco]
"""


def test_a_preset_never_overrides_the_grid_files_base(tmp_path: Path) -> None:
    space = load_grid(_write(tmp_path, QUACLRS_SPACE))
    for preset_name in ("quick", "paper"):
        for trial in expand_trials(space, preset=preset_name):
            cfg = trial.config
            assert (cfg.data.dataset, cfg.optim.name, cfg.optim.lr) == (
                "urbansound8k",
                "adam",
                0.0001,
            ), preset_name
    # The paper preset's scale still applies where the base is silent.
    paper = expand_trials(space, preset="paper")[0].config
    assert (paper.train.epochs, paper.train.batch_size) == (1000, 1024)


def test_dataset_specific_preset_values_stay_with_their_dataset() -> None:
    space = load_grid("aug_matrix")  # quick: FSDD at 8 kHz, 300 clips
    fsdd = expand_trials(space, preset="quick")[0].config.data
    assert (fsdd.dataset, fsdd.sample_rate, fsdd.max_clips) == ("fsdd", 8000, 300)
    for dataset in ("esc10", "speech_commands_10"):
        other = expand_trials(space, preset="quick", overrides={"data.dataset": dataset})
        data = other[0].config.data
        assert (data.dataset, data.sample_rate, data.max_clips) == (dataset, 16_000, None)


def test_a_method_axis_gives_each_method_its_published_defaults(tmp_path: Path) -> None:
    text = SMALL_SPACE.replace("method: {name: simclr}", "method: {name: simclr, temperature: 0.5}")
    text = text.replace("  augment.pipeline: {matrix: [PS, FD]}", "  method.name: [simclr, moco]")
    space = load_grid(_write(tmp_path, text))
    trials = expand_trials(space, preset="quick", overrides={"method.queue_size": 4096})
    temperatures = {t.trial_id: t.config.method.temperature for t in trials}
    assert temperatures == {
        "raw1d-simclr": 0.5,
        "raw1d-moco": 0.07,
        "stft3-simclr": 0.5,
        "stft3-moco": 0.07,
    }
    assert {t.config.method.queue_size for t in trials if t.config.method.name == "moco"} == {4096}


def test_restricting_axes_from_the_command_line(tmp_path: Path) -> None:
    space = load_grid("aug_matrix")
    small = restrict_axes(space, {"augment.pipeline": ["TM", "PS"], "frontend.name": ["stft3"]})
    ids = [t.trial_id for t in expand_trials(small, preset="quick")]
    assert ids == ["stft3-TM-TM", "stft3-TM-PS", "stft3-PS-TM", "stft3-PS-PS"]
    with pytest.raises(SweepError, match=r"\['mel'\] not declared; valid: raw1d, stft3"):
        restrict_axes(space, {"frontend.name": ["mel"]})
    with pytest.raises(SweepError, match="no axis 'train.seed'"):
        restrict_axes(space, {"train.seed": [1]})


def test_unknown_augmentation_code_names_file_trial_and_choices(tmp_path: Path) -> None:
    path = _write(tmp_path, SMALL_SPACE.replace("[PS, FD]", "[PS, XX]"))
    with pytest.raises(SweepError) as error:
        expand_trials(load_grid(path), preset="quick")
    message = str(error.value)
    assert str(path) in message and "trial raw1d-PS-XX" in message
    assert "augment.pipeline" in message and "'XX'" in message
    assert "valid:" in message and "PS" in message and "TST" in message
    # The CLI turns it into exit status 2 with the message on stderr, before Ray starts.
    bad_codes = ["--dry-run", "--augs", "PS", "QQ"]
    assert main(bad_codes) == EXIT_BAD_INPUT


def test_broken_yaml_and_bad_keys_name_file_and_key(tmp_path: Path) -> None:
    broken = _write(
        tmp_path, "ablation: x\naxes:\n  augment.pipeline: {matrix: [PS, FD\n", "b.yaml"
    )
    with pytest.raises(SweepError, match=rf"{broken}:\d+:\d+: not valid YAML"):
        load_grid(broken)
    cases = {
        "ablation: x\nbsae: {}\n": r"unknown top-level key\(s\) bsae; valid: ablation",
        "base:\n  train: {epohcs: 3}\n": r"base: train.epohcs: unknown field; valid: .*train.epochs",
        "base:\n  trian: {epochs: 3}\n": r"base: trian.epochs: unknown section 'trian'; valid: ",
        "axes:\n  train.seeds: [1, 2]\n": r"axes.train.seeds: train.seeds: unknown field; valid",
        "axes:\n  train.seed: {matrix: [1, 2]}\n": r"'matrix' needs a list-valued field",
        "axes:\n  train.seed: []\n": r"axes.train.seed.values: expected a non-empty list",
        "axes:\n  frontend.name:\n    values: [stft3]\n    with: {mel: {model.width: 8}}\n": (
            r"with.mel: not one of the axis values; valid: stft3"
        ),
        "presets:\n  fast: {}\n": r"presets.fast: unknown preset; valid: laptop, paper, quick",
    }
    for number, (text, pattern) in enumerate(cases.items()):
        path = _write(tmp_path, text, f"case{number}.yaml")
        with pytest.raises(SweepError, match=pattern) as error:
            load_grid(path)
        assert str(path) in str(error.value)
    with pytest.raises(SweepError, match="not one of the shipped ones .*aug_matrix"):
        load_grid("no_such_space")


def test_invalid_value_in_trial_names_field(tmp_path: Path) -> None:
    # raw1d front end with a 2D encoder: only the combination is invalid.
    path = _write(tmp_path, SMALL_SPACE.replace("raw1d: {model.encoder: resnet18_1d}", "raw1d: {}"))
    with pytest.raises(SweepError, match=r"trial raw1d-PS-PS.*model.encoder='resnet18_1d'"):
        expand_trials(load_grid(path), preset="quick")
    good = load_grid(_write(tmp_path, SMALL_SPACE, "good.yaml"))
    with pytest.raises(SweepError, match="unknown trial id.*'raw1d-PS-PS' \\(8 trials\\)"):
        expand_trials(good, preset="quick", trial_overrides={"nope": {}})


def test_resource_requests() -> None:
    plan = plan_resources(workers_per_trial=1, cpus_per_worker=1, available={"CPU": 2.0})
    assert plan.max_concurrent_trials == 2 and not plan.use_torch_trainer
    assert plan.trainable_resources() == {"cpu": 1, "gpu": 0.0}
    group = plan_resources(
        workers_per_trial=2, cpus_per_worker=1, gpus_per_worker=0.5, available={"CPU": 8, "GPU": 2}
    )
    assert group.use_torch_trainer and group.trainable_resources() == {"cpu": 0, "memory": 1}
    assert group.max_concurrent_trials == 2  # GPUs bound it: 2 / (2 x 0.5)
    with pytest.raises(ResourceError, match=r"needs 4 CPU .* cluster has 2; lower --workers-per"):
        plan_resources(workers_per_trial=4, available={"CPU": 2.0, "GPU": 0.0})
    with pytest.raises(ResourceError, match=r"needs 1 GPU .* has 0.*--gpus-per-worker"):
        plan_resources(workers_per_trial=1, gpus_per_worker=1, available={"CPU": 2.0})
    with pytest.raises(ResourceError, match="fraction in"):
        plan_resources(workers_per_trial=1, gpus_per_worker=1.5)
    # An impossible request on a local cluster fails before Ray (or MLflow) starts.
    request = SweepRequest(preset="quick", workers_per_trial=4, num_cpus=2, results_dir=Path("x"))
    with pytest.raises(ResourceError, match="needs 4 CPU"):
        run_sweep(request)
    assert not Path("x").exists()


def test_paper_preset_plans_gpu_workers(capsys: pytest.CaptureFixture[str]) -> None:
    plan = prepare_grid(SweepRequest(preset="paper"))
    cfg, resources = plan.trials[0].config, plan.resources
    assert (cfg.train.epochs, cfg.train.batch_size, cfg.optim.name) == (1000, 1024, "lars")
    assert (cfg.data.dataset, cfg.method.name, cfg.method.temperature) == (
        "speech_commands_10",
        "simclr",
        0.5,
    )
    assert resources.workers_per_trial == 4 and resources.gpus_per_worker == 1.0
    assert resources.use_torch_trainer
    assert cfg.data.download, "the paper preset fetches a missing dataset"
    # Dry run on a machine without GPUs still lists the trials and says why it cannot run.
    # Speech Commands is not on this machine: the paper preset would download it, so the
    # trials are listed with unknown split sizes; without the download it is an error.
    if not (Path(os.environ.get("CLARLAB_DATA", "/nowhere")) / "speech_commands").is_dir():
        argv = ["--dry-run", "--preset", "paper", "--set", "data.download=false"]
        assert main(argv) == EXIT_BAD_INPUT
        assert "dataset 'speech_commands_10' not found" in capsys.readouterr().err
    assert main(["--dry-run", "--preset", "paper", "--num-cpus", "2"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "76 trials" in out and "not runnable on this machine" in out


def test_show_config_prints_every_resolved_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "--dry-run",
                "--show-config",
                "--set",
                "method.name=moco",
                "--set",
                "method.queue_size=4096",
            ]
        )
        == EXIT_OK
    )
    out = capsys.readouterr().out
    blocks = out.split("# --- trial ")[1:]
    assert len(blocks) == 76
    first = yaml.safe_load(blocks[0].split("\n", 1)[1].split("\n\n", 1)[0])
    assert first["method"] == {
        "name": "moco",
        "class_weights": False,
        "momentum": 0.999,
        "queue_size": 4096,
        "temperature": 0.07,
        "projector_dim": 128,  # He et al. 2020: a linear projection to 128
    }
    assert ExperimentConfig.from_dict(first).method.temperature == 0.07


def test_dry_run_checks_the_data_each_trial_would_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path / "nothing-here"))
    assert main(["--dry-run", "--augs", "FD"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "trial raw1d-FD-FD: dataset 'fsdd' not found at" in err and "CLARLAB_DATA" in err


def test_dry_run_refuses_a_batch_larger_than_the_training_split(
    fsdd_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--dry-run", "--data-root", str(fsdd_root), "--set", "data.max_clips=30"]
    assert main(argv) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "train.batch_size=32 is larger than the training split" in err
    assert main([*argv, "--set", "train.batch_size=16"]) == EXIT_OK


VALIDATE_GRID = """
import sys, time
from core.sweep.design import expand_trials
from core.sweep.grid import load_grid
trials = expand_trials(load_grid("aug_matrix"), preset="quick")
assert len(trials) == 72
print("torch" in sys.modules, "torchaudio" in sys.modules, "nnAudio" in sys.modules)
"""


def test_validating_a_grid_imports_no_torch() -> None:
    """Config validation reads the light registries (core.registry, core.methods.configs)."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", VALIDATE_GRID], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["False", "False", "False"], done.stderr


def test_a_metric_no_trial_reports_fails_the_dry_run_naming_the_known_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A grid or a search ranked by a metric its trials never report would fill every
    table with NaN after the whole budget: the dry run refuses it and lists what they do
    report (the method's own losses among them)."""
    from ablations import run_search

    grid = _write(tmp_path, SMALL_SPACE + "metric: test_top5\n", "grid.yaml")
    assert main(["--dry-run", "--space", str(grid)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "metric 'test_top5' is not reported by these trials" in err
    assert "test_top1" in err and "nt_xent" in err and str(grid) in err
    search = _write(
        tmp_path,
        "metric: val_top1\nsearch:\n  params:\n    optim.lr: {loguniform: [1.0e-4, 1.0e-2]}\n",
        "search.yaml",
    )
    # FSDD's official split has no validation clips: val_top1 is never reported there.
    assert run_search.main(["--dry-run", "--space", str(search)]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "metric 'val_top1' is not reported" in err and "test_macro_f1" in err
    # A metric the trials do report passes, whatever its name: here a loss.
    loss = _write(tmp_path, SMALL_SPACE + "metric: nt_xent\nmode: min\n", "loss.yaml")
    assert main(["--dry-run", "--space", str(loss)]) == EXIT_OK
    capsys.readouterr()


def test_mode_defaults_by_the_metric_and_is_checked(tmp_path: Path) -> None:
    assert load_grid(_write(tmp_path, SMALL_SPACE + "metric: loss\n", "a.yaml")).mode == "min"
    assert load_grid(_write(tmp_path, SMALL_SPACE, "b.yaml")).mode == "max"
    with pytest.raises(SweepError, match="mode: expected max or min, got 'lowest'"):
        load_grid(_write(tmp_path, SMALL_SPACE + "mode: lowest\n", "c.yaml"))


def test_the_progress_line_keeps_the_best_by_the_spaces_mode() -> None:
    from types import SimpleNamespace

    from core.sweep.progress import SweepProgress

    def trial(name: str) -> SimpleNamespace:
        return SimpleNamespace(config={"cell": {"trial_id": name}}, status="RUNNING")

    lowest = SweepProgress(total=2, metric="loss", mode="min")
    highest = SweepProgress(total=2, metric="loss", mode="max")
    for progress in (lowest, highest):
        progress.on_trial_result(0, [], trial("a"), {"loss": 0.9})
        progress.on_trial_result(0, [], trial("b"), {"loss": 0.3})
    assert lowest.best == (0.3, "b") and highest.best == (0.9, "a")
    assert "best loss 0.3000 (b)" in lowest.status_line([trial("a"), trial("b")])
