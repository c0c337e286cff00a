"""The paper-shaped tables (core/tables.py) and the axis kinds behind them (cases, folds),
on hand-made trial records: no Ray, no training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.cells import FINISHED, TrialRecord
from core.report import write_report
from core.sweep.design import expand_trials
from core.sweep.errors import GridError
from core.sweep.grid import load_grid, restrict_axes
from core.table_layout import WALL_TIME, build_tables
from core.tables import read_table_csv, table_markdown

SPACES = Path(__file__).resolve().parents[1] / "search_spaces"


def _record(cell_id: str, coords: dict[str, str], value: float, **extra) -> TrialRecord:
    return TrialRecord(
        trial_id=cell_id,
        status=FINISHED,
        panel="all",
        coords=coords,
        metrics={"test_top1": value, "test_macro_f1": value / 2},
        cell_id=cell_id,
        **extra,
    )


def test_fold_columns_summaries_and_controls() -> None:
    records = [
        _record("64-fold1", {"model.proj_dim": "64", "data.fold": "fold1"}, 0.5, wall_seconds=10),
        _record("64-fold2", {"model.proj_dim": "64", "data.fold": "fold2"}, 0.7, wall_seconds=14),
        _record("128-fold1", {"model.proj_dim": "128", "data.fold": "fold1"}, 0.6),
        _record("128-fold2", {"model.proj_dim": "128", "data.fold": "fold2"}, 0.9),
        _record("fold1-untrained", {"data.fold": "fold1"}, 0.3, role="untrained"),
        _record("fold2-untrained", {"data.fold": "fold2"}, 0.2, role="untrained"),
    ]
    (table,) = build_tables(
        records,
        rows=["model.proj_dim"],
        columns="data.fold",
        summary=["mean", "std", "range"],
        wall_time=True,
    )
    assert table.rows == ["64", "128", "untrained control"]
    assert table.columns == ["fold1", "fold2", WALL_TIME]  # the wall time last
    assert table.cells[("64", "fold2")].values == [0.7]
    assert table.cells[("untrained control", "fold1")].values == [0.3]
    summary = table.summaries("128")
    assert summary["mean"] == pytest.approx(0.75)
    assert summary["std"] == pytest.approx(np.std([0.6, 0.9], ddof=1))
    assert (summary["min"], summary["max"]) == (0.6, 0.9)
    assert table.summaries("64")["mean"] == pytest.approx(0.6)  # seconds stay out of it
    assert table.cells[("64", WALL_TIME)].values == [10.0, 14.0]
    markdown = table_markdown(table)
    assert "| 64 | 50.0 | 70.0 | 60.0 | 14.1 | 50.0 - 70.0 | 12.0 |" in markdown


def test_aggregated_axes_give_a_mean_and_an_interval() -> None:
    """Folds that are not the columns are aggregated: the cell holds every fold's value."""
    records = [
        _record(f"{m}-fold{k}", {"method.name": m, "data.fold": f"fold{k}"}, v)
        for m, values in (("simclr", [0.6, 0.8]), ("moco", [0.4, 0.5]))
        for k, v in enumerate(values, start=1)
    ]
    (table,) = build_tables(
        records,
        rows=["method.name"],
        columns="metrics",
        metrics=["test_top1", "test_macro_f1"],
    )
    assert table.columns == ["top-1", "macro F1"]
    cell = table.cells[("simclr", "top-1")]
    assert cell.values == [0.6, 0.8] and cell.mean == pytest.approx(0.7)
    assert not math.isnan(cell.interval.half_width)
    assert table.cells[("moco", "macro F1")].mean == pytest.approx(0.225)


def test_a_control_without_the_column_axis_sits_in_every_column() -> None:
    records = [
        _record("simclr-1", {"method.name": "simclr", "data.label_fraction": "1"}, 0.8),
        _record("simclr-0.01", {"method.name": "simclr", "data.label_fraction": "0.01"}, 0.6),
        _record("untrained", {}, 0.4, role="untrained"),
    ]
    (table,) = build_tables(records, rows=["method.name"], columns="data.label_fraction")
    assert table.cells[("untrained control", "1")].values == [0.4]
    assert table.cells[("untrained control", "0.01")].values == [0.4]


def test_panels_split_tables_and_controls_join_each(tmp_path: Path) -> None:
    records = [
        _record(f"{a}-{m}-fold1", {"augmentation": a, "method.name": m, "data.fold": "fold1"}, v)
        for a, m, v in (("original", "simclr", 0.5), ("mixup", "simclr", 0.6),
                        ("original", "moco", 0.4), ("mixup", "moco", 0.7))
    ] + [_record("fold1-untrained", {"data.fold": "fold1"}, 0.2, role="untrained")]  # fmt: skip
    spec = {"panels": ["method.name"], "rows": ["augmentation"], "columns": "data.fold",
            "summary": ["mean"]}  # fmt: skip
    report = write_report(records, tmp_path, codes=None, panels=[], name="augs", table=spec)
    tables = read_table_csv(tmp_path / "augs_table.csv")
    assert tables[("moco", "mixup", "fold1")] == pytest.approx(0.7)
    assert tables[("simclr", "untrained control", "fold1")] == pytest.approx(0.2)
    assert tables[("moco", "untrained control", "fold1")] == pytest.approx(0.2)
    assert tables[("simclr", "original", "mean")] == pytest.approx(0.5)
    assert {"augs_table.png", "augs_table.md", "augs_cells.csv"} <= {
        p.name for p in tmp_path.iterdir()
    }
    assert "**simclr**" in report.summary and "| mixup | 70.0 | 70.0 |" in report.summary


def test_per_class_table_and_curves(tmp_path: Path) -> None:
    records = [
        _record("simclr", {"method.name": "simclr"}, 0.6, per_class_f1={"dog": 0.5, "cat": 0.7},
                history={"test_top1": [(1, 0.3), (2, 0.6)]}),  # fmt: skip
        _record("moco", {"method.name": "moco"}, 0.5, per_class_f1={"dog": 0.4, "cat": 0.6},
                history={"test_top1": [(1, 0.2), (2, 0.5)]}),  # fmt: skip
    ]
    spec = {"rows": ["method.name"], "columns": "metrics", "metrics": ["test_top1"],
            "per_class": True, "curves": {"panels": "method.name", "lines": "method.name"}}  # fmt: skip
    write_report(records, tmp_path, codes=None, panels=[], name="ssl", table=spec)
    text = (tmp_path / "ssl_per_class_f1.md").read_text()
    assert "| dog | 0.50 | 0.40 |" in text and "| cat | 0.70 | 0.60 |" in text
    assert (tmp_path / "ssl_curves.png").stat().st_size > 0


# --- axis kinds ---------------------------------------------------------------------------
def test_folds_axis_takes_the_datasets_declared_folds() -> None:
    space = load_grid(SPACES / "projection_dim.yaml")
    trials = expand_trials(space, preset="quick")
    folds = sorted({trial.config.data.fold for trial in trials})
    assert folds == [1, 2, 3, 4, 5, 6]  # FSDD: six speakers, one fold each
    assert {trial.config.data.split_scheme for trial in trials} == {"quaclrs"}
    assert trials[0].trial_id == "64-fold1" and trials[0].coords == {
        "model.proj_dim": "64", "data.fold": "fold1"
    }  # fmt: skip
    chosen = expand_trials(restrict_axes(space, {"data.fold": [2]}), preset="quick")
    assert [trial.trial_id for trial in chosen] == ["64-fold2", "128-fold2", "256-fold2"]
    with pytest.raises(GridError, match=r"folds \[7\] do not exist in 'fsdd'"):
        expand_trials(restrict_axes(space, {"data.fold": [7]}), preset="quick")
    with pytest.raises(GridError, match="has no folds"):
        expand_trials(space, preset="quick", overrides={"data.dataset": "speech_commands_10"})


def test_cases_axis_and_new_cases() -> None:
    space = load_grid(SPACES / "moco_queue.yaml")
    trials = expand_trials(space, preset="quick")
    assert [(t.config.train.batch_size, t.config.method.queue_size) for t in trials] == [
        (8, 4096), (16, 4096), (32, 4096), (32, 8192)
    ]  # fmt: skip
    new = restrict_axes(space, {"batch_queue": [{"b4-q128": {"train.batch_size": 4,
                                                             "method.queue_size": 128}}]})  # fmt: skip
    (trial,) = expand_trials(new, preset="quick")
    assert trial.trial_id == "b4-q128" and trial.config.method.queue_size == 128
    with pytest.raises(GridError, match="not a case; valid: b8-q4096"):
        restrict_axes(space, {"batch_queue": ["b1-q1"]})


def test_controls_are_named_by_what_they_depend_on() -> None:
    space = load_grid(SPACES / "moco_queue.yaml")
    trials = expand_trials(space, preset="quick", controls=True)
    controls = {t.trial_id: t for t in trials if t.role != "cell"}
    # The untrained control has no queue: one per batch size, named by it.
    assert {"batch_size8-untrained", "batch_size32-untrained"} <= set(controls)
    assert sum(t.role == "untrained" for t in controls.values()) == 3
    fd = load_grid(SPACES / "projection_dim.yaml")
    trials = expand_trials(restrict_axes(fd, {"data.fold": [1, 2]}), preset="quick", controls=True)
    named = sorted(t.trial_id for t in trials if t.role != "cell")
    # The projection size does not matter to a control: one per fold and role.
    assert named == ["fold1-supervised", "fold1-untrained", "fold2-supervised", "fold2-untrained"]


def test_report_section_must_name_axes(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "ablation: bad\naxes:\n  model.proj_dim: [64]\nreport:\n  rows: [model.width]\n"
    )
    with pytest.raises(GridError, match="'model.width' is not an axis"):
        load_grid(path)


def test_figure_five_draws_a_band_over_seeds(tmp_path: Path) -> None:
    from core.tables import write_curves_figure

    records = [
        _record(f"simclr-0.1-seed{seed}", {"method.name": "simclr", "data.label_fraction": "0.1"},
                0.5, seed=seed, history={"test_top1": [(1, 0.2 + d), (2, 0.5 + d)]})
        for seed, d in ((0, 0.0), (1, 0.1))
    ]  # fmt: skip
    path = write_curves_figure(records, "data.label_fraction", "method.name", "test_top1",
                               tmp_path / "figure5.png")  # fmt: skip
    assert path is not None and path.stat().st_size > 0


def test_control_names_become_valid_mlflow_metric_names() -> None:
    from mlflow.utils.validation import _validate_metric_name

    from core.sweep.results import metric_name

    for raw in ("test_top1_batch_size=8-untrained", "test_top1_mean_raw1d-FD+TM"):
        _validate_metric_name(metric_name(raw))  # raises on a name MLflow refuses
