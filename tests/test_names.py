"""Run, experiment and trial names are held to a safe set before anything is written: a
``../`` run name would otherwise become ``results_dir/../..``, a YAML label a Tune folder
outside the sweep's, a right-to-left override an MLflow name that reads as another."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ablations import run_aug_matrix
from core.config import ConfigError
from core.names import check_name

EXIT_BAD_INPUT = 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--run-name", "../../escape"],
            r"run name '\.\./\.\./escape' \(--run-name\) starts with a dot",
        ),
        (["--run-name", "/tmp/absolute"], r"holds '/' \(U\+002F, SOLIDUS\) at position 0"),
        (["--experiment", "lab/.."], r"experiment name 'lab/\.\.' \(--experiment\) holds '/'"),
        (["--experiment", "paper\u202eftp"], r"U\+202E, RIGHT-TO-LEFT OVERRIDE"),
    ],
)
def test_an_unsafe_run_or_experiment_name_is_refused_before_anything_is_written(
    argv: list[str], message: str, tmp_path: Path, capsys, fsdd_root: Path
) -> None:
    results = tmp_path / "results"
    code = run_aug_matrix.main([*argv, "--dry-run", "--results", str(results), "--augs", "FD"])
    assert code == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing created, anywhere


def test_a_trial_label_from_yaml_cannot_become_a_path(
    tmp_path: Path, capsys, fsdd_root: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "ablation: names\naxes:\n  variant:\n    cases:\n      ../../outside: {train.seed: 1}\n"
    )
    code = run_aug_matrix.main(["--dry-run", "--space", str(space)])
    assert code == EXIT_BAD_INPUT
    assert "trial name '../../outside" in capsys.readouterr().err


def test_the_safe_set_accepts_the_shipped_names_and_bounds_the_length() -> None:
    for name in ("aug_matrix-quick-3", "clarlab-aug_matrix", "raw1d-FD+TST-fsdd", "pitchshift_-2"):
        check_name(name, "trial")
    check_name("x" * 128, "run")
    with pytest.raises(ConfigError, match="129 characters long"):
        check_name("x" * 129, "run")
    with pytest.raises(ConfigError, match=r"holds '\+'"):
        check_name("FD+TM", "run")  # '+' only in trial names, which join augmentation codes
