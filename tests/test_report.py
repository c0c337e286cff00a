"""Figure 4 report: matrix layout, means over finished cells, failed cells, files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from core.report import (
    FAILED,
    FINISHED,
    TrialRecord,
    augmentation_matrix,
    read_matrix_csv,
    trials_markdown,
    write_report,
)

CODES = ["PS", "FD", "WN"]


def _records(values: np.ndarray, panel: str, failed: set[tuple[int, int]] = frozenset()):
    records = []
    for i, first in enumerate(CODES):
        for j, second in enumerate(CODES):
            status = FAILED if (i, j) in failed else FINISHED
            records.append(
                TrialRecord(
                    trial_id=f"{panel}-{first}-{second}",
                    status=status,
                    panel=panel,
                    first=first,
                    second=second,
                    pipeline=[first] if i == j else [first, second],
                    frontend=panel,
                    metrics={} if status == FAILED else {"test_top1": values[i, j]},
                    epochs=1,
                    wall_seconds=1.5,
                    error="boom" if status == FAILED else None,
                )
            )
    return records


def test_matrix_means_rows_columns_and_corner() -> None:
    rng = np.random.default_rng(0)
    values = rng.uniform(0.1, 0.9, size=(3, 3))
    matrix = augmentation_matrix(_records(values, "stft3"), CODES, "stft3")
    np.testing.assert_allclose(matrix.values[:3, :3], values)
    np.testing.assert_allclose(matrix.values[:3, 3], values.mean(axis=1))  # applied first
    np.testing.assert_allclose(matrix.values[3, :3], values.mean(axis=0))  # applied second
    assert matrix.values[3, 3] == pytest.approx(values.mean())
    i, j = np.unravel_index(values.argmax(), values.shape)
    assert matrix.best == (CODES[i], CODES[j], pytest.approx(values[i, j]))


def test_failed_cell_is_marked_and_left_out_of_means(tmp_path: Path) -> None:
    values = np.arange(9, dtype=float).reshape(3, 3) / 10
    records = _records(values, "raw1d", failed={(0, 1)})
    # A record of another panel must not leak into this one.
    records.append(
        TrialRecord("stft3-PS-FD", FINISHED, "stft3", "PS", "FD", metrics={"test_top1": 9})
    )
    matrix = augmentation_matrix(records, CODES, "raw1d")
    assert matrix.status[0, 1] == FAILED and math.isnan(matrix.values[0, 1])
    assert matrix.values[0, 3] == pytest.approx(np.mean([values[0, 0], values[0, 2]]))
    assert matrix.values[3, 1] == pytest.approx(np.mean([values[1, 1], values[2, 1]]))
    expected_corner = (values.sum() - values[0, 1]) / 8
    assert matrix.values[3, 3] == pytest.approx(expected_corner)

    report = write_report(records[:9], tmp_path, codes=CODES, panels=["raw1d"])
    csv_path = tmp_path / "aug_matrix_raw1d.csv"
    assert "failed" in csv_path.read_text()
    codes, read_back = read_matrix_csv(csv_path)
    assert codes == CODES
    np.testing.assert_allclose(read_back, matrix.values, atol=1e-4)  # 4 decimals in the CSV
    png = tmp_path / "aug_matrix_raw1d.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5_000
    assert {p.name for p in report.files} >= {"trials.md", "trials.csv", png.name, csv_path.name}
    assert "1 failed" in report.summary and "failed raw1d-PS-FD: boom" in report.summary


def test_missing_cells_stay_empty_and_table_lists_every_trial(tmp_path: Path) -> None:
    values = np.full((3, 3), 0.5)
    records = _records(values, "stft3")[:4]  # a partial sweep
    records.append(TrialRecord("stft3-FD-FD", "RUNNING", "stft3", "FD", "FD", pipeline=["FD"]))
    matrix = augmentation_matrix(records, CODES, "stft3")
    assert np.isnan(matrix.values[2, 2]) and matrix.status[1, 1] == "RUNNING"
    assert matrix.values[3, 3] == pytest.approx(0.5)
    table = trials_markdown(records)
    assert table.count("\n") == 2 + len(records)
    assert "| stft3-PS-FD | FINISHED | PS > FD | stft3 |" in table
    assert "| stft3-FD-FD | RUNNING | FD |" in table


def test_a_min_mode_metric_marks_the_lowest_cell_best_in_the_heatmap_and_summary(
    tmp_path: Path,
) -> None:
    """Ranked by a loss (``mode: min``), the best cell is the lowest: in the matrix, in the
    cells within noise of it, and in the summary's words."""
    values = np.array([[0.9, 0.8, 0.7], [0.6, 0.1, 0.5], [0.4, 0.3, 0.95]])
    records = _records(values, "stft3")
    for record in records:
        record.metrics = {"loss": record.metrics["test_top1"]}
    report = write_report(
        records, tmp_path, codes=CODES, panels=["stft3"], metric="loss", mode="min"
    )
    matrix = report.matrices["stft3"]
    assert matrix.best == ("FD", "FD", pytest.approx(0.1))
    assert matrix.within_best[1, 1]
    assert "stft3: best cell (lowest loss) FD 0.100" in report.summary
    highest = write_report(records, tmp_path / "max", codes=CODES, panels=["stft3"], metric="loss")
    assert highest.matrices["stft3"].best == ("WN", "WN", pytest.approx(0.95))
    assert "best cell WN 0.950" in highest.summary
    assert (tmp_path / "aug_matrix_stft3.png").stat().st_size > 0


def _seeded(cell: tuple[str, str], values: list[float], stopped: list[bool]) -> list[TrialRecord]:
    """One cell of the stft3 panel at seeds 0.., some stopped early by ASHA at its rung."""
    first, second = cell
    return [
        TrialRecord(
            trial_id=f"stft3-{first}-{second}-seed{seed}",
            status=FINISHED,
            panel="stft3",
            first=first,
            second=second,
            metrics={"test_top1": value},
            epochs=5 if stop else 20,
            cell_id=f"stft3-{first}-{second}",
            seed=seed,
            stopped_early=stop,
        )
        for seed, (value, stop) in enumerate(zip(values, stopped, strict=True))
    ]


def test_a_cell_with_a_seed_stopped_at_a_rung_is_marked_and_not_compared_with_the_best(
    tmp_path: Path,
) -> None:
    """Under ASHA a cell keeps every seed's last value (dropping the stopped seed would keep
    only the seeds that looked good at the rung), is marked, and stays out of the
    comparison with the best, even when its mean is higher than every full-budget cell's."""
    from core.cells import gather_cells

    records = [
        *_seeded(("FD", "WN"), [0.97, 0.96, 0.95], [False, False, True]),  # a mixed cell
        *_seeded(("PS", "PS"), [0.90, 0.92, 0.91], [False, False, False]),
        *_seeded(("WN", "WN"), [0.60, 0.62, 0.61], [False, False, False]),
    ]
    cells = gather_cells(records)
    mixed, best, low = cells["stft3-FD-WN"], cells["stft3-PS-PS"], cells["stft3-WN-WN"]
    assert mixed.scores.by_seed == {0: 0.97, 1: 0.96, 2: 0.95}  # the stopped seed stays in
    assert (mixed.stopped, mixed.stopped_early) == (1, True)
    assert not best.stopped_early and best.within_best
    assert not mixed.within_best and not low.within_best

    report = write_report(records, tmp_path, codes=CODES, panels=["stft3"])
    matrix = report.matrices["stft3"]
    at = {code: k for k, code in enumerate(CODES)}
    assert matrix.values[at["FD"], at["WN"]] == pytest.approx(0.96)
    assert matrix.stopped_early[at["FD"], at["WN"]]
    assert not matrix.stopped_early[at["PS"], at["PS"]]
    assert "best cell PS " in report.summary
    assert "1 of 2 cells within noise of it" in report.summary
    assert "stopped 1 seed(s) of 1 cell(s) early" in report.summary
    header = (tmp_path / "aug_matrix_cells.csv").read_text().splitlines()[0]
    assert "seeds_stopped_early" in header


def test_the_trial_table_says_which_trials_asha_stopped_and_which_were_interrupted(
    tmp_path: Path,
) -> None:
    """Tune's own statuses read FINISHED for a trial ASHA stopped at a rung and PENDING for
    one Ctrl-C cut off after some epochs; the table and the summary say what happened."""
    records = _seeded(("FD", "WN"), [0.90, 0.30], [False, True])
    interrupted = _seeded(("WN", "WN"), [0.50], [False])[0]
    interrupted.status, interrupted.epochs = "PENDING", 3
    never_started = _seeded(("PS", "PS"), [math.nan], [False])[0]
    never_started.status, never_started.epochs, never_started.metrics = "PENDING", None, {}
    records += [interrupted, never_started]

    report = write_report(records, tmp_path, codes=CODES, panels=["stft3"])
    statuses = {
        line.split(",")[0]: line.split(",")[1]
        for line in (tmp_path / "trials.csv").read_text().splitlines()[1:]
    }
    assert statuses == {
        "stft3-FD-WN-seed0": "FINISHED",
        "stft3-FD-WN-seed1": "STOPPED_EARLY",
        "stft3-WN-WN-seed0": "INTERRUPTED",
        "stft3-PS-PS-seed0": "PENDING",
    }
    assert "4 trials: 1 finished, 1 interrupted, 1 pending, 1 stopped early" in report.summary
