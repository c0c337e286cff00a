"""Departures from a paper are named: declared in a space file, or made with ``--set``
under the paper preset, they are printed by the dry run (the report and the parent run
carry them too: tests/test_sweep_e2e.py). CLAR Table 1's paper preset fits every dataset's
training split, with ESC-10's smaller batch declared as such."""

from __future__ import annotations

import csv
import importlib
from pathlib import Path

import pytest

from core.sweep.deviations import parse_deviations
from core.sweep.errors import SweepError

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def _esc50_listing(root: Path) -> Path:
    """ESC-50's official listing (meta/esc50.csv): 50 classes x 40 clips over 5 folds, the
    first ten targets flagged as ESC-10. Only the listing is read by a dry run."""
    folder = root / "esc50"
    (folder / "meta").mkdir(parents=True)
    (folder / "audio").mkdir()
    with (folder / "meta" / "esc50.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["filename", "fold", "target", "category", "esc10", "src_file", "take"])
        for target in range(50):
            for clip in range(40):
                fold = clip % 5 + 1
                name = f"{fold}-{target}-{clip}-A.wav"
                writer.writerow([name, fold, target, f"class{target}", target < 10, clip, "A"])
    return root


def _table_rows(out: str) -> list[list[str]]:
    rows = [line.split() for line in out.splitlines()]
    return [row for row in rows if len(row) > 10 and row[0].isdigit()]


def test_clar_table1_paper_preset_fits_every_datasets_training_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """ESC-50 (1,600 training clips) trains at CLAR's reduced 512, ESC-10 (320) at 256,
    declared as a deviation; at one batch of 1024 for every dataset preflight stops and
    names the per-dataset remedy."""
    monkeypatch.setenv("CLARLAB_DATA", str(_esc50_listing(tmp_path)))
    main = importlib.import_module("ablations.run_features").main
    argv = ["--dry-run", "--preset", "paper", "--no-controls", "--datasets", "esc10", "esc50"]
    assert main([*argv, "--sets", "stft3:FD"]) == EXIT_OK
    out = capsys.readouterr().out
    rows = {row[1]: row for row in _table_rows(out)}
    assert set(rows) == {"stft3-FD-esc10", "stft3-FD-esc50"}
    for row in rows.values():
        train, batch = int(row[10].split("/")[0]), int(row[11])
        assert batch <= train, row
    assert rows["stft3-FD-esc50"][10:12] == ["1600/0/400", "512"]
    assert rows["stft3-FD-esc10"][10:12] == ["320/0/80", "256"]
    assert rows["stft3-FD-esc10"][8] == "10" and rows["stft3-FD-esc50"][8] == "50"
    assert "deviation from the paper: train.batch_size=256 on esc10 (the paper: 512)" in out

    assert main([*argv, "--sets", "stft3:FD", "--set", "train.batch_size=1024"]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "larger than the training split (320 clips of 'esc10'" in err
    assert "presets.<preset>.datasets.esc10.train.batch_size" in err


def test_the_ten_class_fallback_is_named_a_deviation_from_quaclrs(
    fsdd_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--set data.dataset=urbansound8k under the paper preset is the documented fallback
    without sireNNet; the dry run says it is not the paper's class set."""
    monkeypatch.setenv("CLARLAB_DATA", str(tmp_path))  # UrbanSound8K would be downloaded
    main = importlib.import_module("ablations.run_ssl_methods").main
    argv = ["--dry-run", "--preset", "paper", "--no-controls", "--set", "data.dataset=urbansound8k"]
    argv += ["--set", "data.allow_unverified=true"]  # UrbanSound8K: no published SHA-256
    assert main(argv) == EXIT_OK
    out = capsys.readouterr().out
    assert {row[7:9] == ["urbansound8k", "10"] for row in _table_rows(out)} == {True}
    assert (
        "deviation from the paper: --set data.dataset=urbansound8k replaces the paper preset's "
        "'urbansound8k_sirennet'; not the paper's class set (10 classes, the paper's 13)"
    ) in out
    # The quick preset (on FSDD) departs from no paper: nothing is said.
    monkeypatch.setenv("CLARLAB_DATA", str(fsdd_root.parent))
    assert main(["--dry-run", "--no-controls"]) == EXIT_OK
    assert "deviation from the paper" not in capsys.readouterr().out


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not a list", "expected a list of mappings"),
        ([{"preset": "paper", "field": "train.batch_size", "paper": 512}], "missing \\['why'\\]"),
        (
            [{"preset": "paper", "field": "train.batch", "paper": 1, "why": "x"}],
            "not a config field",
        ),
        (
            [{"preset": "lab", "field": "train.epochs", "paper": 1, "why": "x"}],
            "unknown preset 'lab'",
        ),
        (
            [
                {
                    "preset": "paper",
                    "dataset": "esc",
                    "field": "train.epochs",
                    "paper": 1,
                    "why": "x",
                }
            ],
            "unknown dataset 'esc'",
        ),
        ([{"preset": "paper", "field": "train.epochs", "paper": 1, "why": " "}], "say why"),
    ],
)
def test_a_bad_deviation_entry_is_refused_naming_it(raw: object, message: str) -> None:
    with pytest.raises(SweepError, match=message) as error:
        parse_deviations(raw, "space.yaml")
    assert "space.yaml: deviations" in str(error.value)


def test_a_sweep_that_allows_unverified_downloads_says_so_on_its_parent_run(fsdd_root: Path) -> None:
    from core.sweep.grid_plan import prepare_grid
    from core.sweep.request import SweepRequest

    allowed = SweepRequest(preset="quick", overrides={"data.allow_unverified": True})
    assert prepare_grid(allowed).parent_tags()["clarlab.data_unverified"] == "true"
    assert "clarlab.data_unverified" not in prepare_grid(SweepRequest(preset="quick")).parent_tags()
