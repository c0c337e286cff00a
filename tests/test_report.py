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
