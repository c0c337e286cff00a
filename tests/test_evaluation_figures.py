"""QUACLRS 4.6's ROC curves and Grad-CAM panels as a trial draws them, their edge cases
(a class absent from the test split, two classes, one class, diverged scores), and the
per-fold ROC overlay and AUC table of a sweep's parent run."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from core.cells import FAILED, FINISHED, TrialRecord
from core.evaluate import confusion_matrix, scores_from_confusion
from core.fold_report import write_fold_roc
from core.gradcam import GradCamMaps
from core.roc import MACRO_GRID, macro_roc_json, parse_macro_roc, roc_curves
from core.tracking import gradcam_figure, roc_figure
from tests.images import assert_png_not_blank, figure_png


def scored(targets: np.ndarray, num_classes: int, seed: int = 0, signal: float = 2.0):
    """An evaluation result of noisy scores that favour the true class."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(len(targets), num_classes))
    logits += signal * (targets[:, None] == np.arange(num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predictions = probabilities.argmax(axis=1)
    names = [f"class_{k}" for k in range(num_classes)]
    result = scores_from_confusion(confusion_matrix(targets, predictions, num_classes), names)
    result.targets, result.predictions = targets, predictions
    result.probabilities = probabilities.astype(np.float32)
    return result


def figure_title(figure) -> str:
    return figure.axes[0].get_title()


def legend_texts(figure) -> list[str]:
    return [text.get_text() for text in figure.axes[0].get_legend().get_texts()]


def test_the_roc_figure_has_a_curve_per_class_and_both_averages(tmp_path: Path):
    result = scored(np.arange(60) % 5, 5)
    figure = roc_figure(result)
    legend = legend_texts(figure)
    assert len(legend) == 1 + 5 + 2  # chance, five classes, micro, macro
    assert f"micro-average (AUC {result.roc.micro_auc:.3f})" in legend
    assert f"macro-average (mean AUC {result.roc.macro_auc:.3f})" in legend
    assert f"class_0 (AUC {result.roc.per_class[0].auc:.3f})" in legend
    assert "no ROC" not in figure_title(figure)
    png = figure_png(figure)
    assert_png_not_blank(png)
    (tmp_path / "roc.png").write_bytes(png)


def test_a_class_absent_from_the_test_split_is_skipped_and_named():
    targets = np.array([0, 1, 3] * 10)  # class 2 (and 4) absent
    result = scored(targets, 5)
    roc = result.roc
    assert roc.skipped == [2, 4] and sorted(roc.per_class) == [0, 1, 3]
    assert roc.macro_auc == pytest.approx(np.mean([roc.per_class[k].auc for k in (0, 1, 3)]))
    figure = roc_figure(result)
    assert "no ROC" in figure_title(figure) and "class_2, class_4" in figure_title(figure)
    assert not any(text.startswith("class_2") for text in legend_texts(figure))
    assert_png_not_blank(figure_png(figure))


def test_two_classes_present_and_a_binary_problem():
    two_of_ten = scored(np.array([3, 7] * 15), 10)
    assert sorted(two_of_ten.roc.per_class) == [3, 7] and len(two_of_ten.roc.skipped) == 8
    binary = scored(np.array([0, 1] * 15), 2)
    assert sorted(binary.roc.per_class) == [0, 1] and binary.roc.skipped == []
    for result in (two_of_ten, binary):
        assert 0.5 < result.metrics()["test_macro_auc"] <= 1.0
        assert_png_not_blank(figure_png(roc_figure(result)))


def test_one_class_present_has_no_per_class_roc_but_a_micro_one():
    result = scored(np.full(20, 2), 4)
    metrics = result.metrics()
    assert math.isnan(metrics["test_macro_auc"]) and 0.0 <= metrics["test_micro_auc"] <= 1.0
    assert result.roc.per_class == {} and result.roc.skipped == [0, 1, 2, 3]
    assert macro_roc_json(result.roc) is None
    figure = roc_figure(result)
    assert "no ROC" in figure_title(figure)
    assert_png_not_blank(figure_png(figure))
    single = scored(np.zeros(10, dtype=np.int64), 1)
    assert math.isnan(single.metrics()["test_micro_auc"])
    roc_figure(single)  # draws, with nothing but the chance line


def test_diverged_scores_give_no_curves_rather_than_an_error():
    result = scored(np.arange(20) % 4, 4)
    result.probabilities[3, 1] = np.nan
    metrics = result.metrics()
    assert math.isnan(metrics["test_micro_auc"]) and math.isnan(metrics["test_macro_auc"])
    assert result.roc.skipped == [0, 1, 2, 3]
    roc_figure(result)


def test_the_reported_macro_curve_round_trips():
    roc = roc_curves(np.arange(40) % 4, np.random.default_rng(1).random((40, 4)), 4)
    curve = parse_macro_roc(macro_roc_json(roc))
    assert curve["fpr"] == pytest.approx(MACRO_GRID.tolist())
    assert curve["tpr"] == pytest.approx(roc.macro.tpr, abs=1e-4)
    assert curve["auc"] == roc.macro_auc and curve["tpr"][-1] == pytest.approx(1.0)


def test_the_gradcam_figure_titles_each_clip_true_and_predicted(tmp_path: Path):
    rng = np.random.default_rng(0)
    grid = np.linspace(0, 1, 40)
    maps = GradCamMaps(
        images=rng.normal(size=(5, 40, 30)),
        maps=np.exp(-((grid[None, :, None] - rng.random((5, 1, 1))) ** 2) * 20).repeat(30, 2),
        true=["zero", "one", "two", "three", "four"],
        predicted=["zero", "one", "one", "three", "four"],
        rows=np.arange(5),
        layer="trunk.layer4",
        map_size=(5, 4),
    )
    maps.maps[4] = 0.0  # nothing speaks for the predicted class
    figure = gradcam_figure(maps)
    titles = [axes.get_title() for axes in figure.axes]
    assert titles[2] == "true two\npredicted one" and len(titles) == 5
    assert titles[4] == "true four\npredicted four (no evidence)"
    assert "trunk.layer4 (5x4 map)" in figure._suptitle.get_text()
    assert_png_not_blank(figure_png(figure))
    maps.map_size = (1, 1)
    assert "each clip's map is constant" in gradcam_figure(maps)._suptitle.get_text()


def _record(trial: str, fold: int | None, status: str = FINISHED, seed: int = 0) -> TrialRecord:
    roc = roc_curves(np.arange(40) % 4, np.random.default_rng(seed).random((40, 4)), 4)
    finished = status == FINISHED
    metrics = {"test_micro_auc": roc.micro_auc, "test_macro_auc": roc.macro_auc}
    return TrialRecord(
        trial_id=trial,
        status=status,
        panel="all",
        fold=fold,
        metrics={**metrics, "test_top1": 0.25} if finished else {},
        macro_roc=parse_macro_roc(macro_roc_json(roc)) if finished else None,
    )


def test_per_fold_roc_overlay_and_auc_table(tmp_path: Path):
    records = [
        _record("resnet18-fold1", 1),
        _record("vgg16-fold1", 1, seed=1),
        _record("resnet18-fold2", 2, seed=2),
        _record("vgg16-fold2", 2, status=FAILED),  # no curve, no AUC: a blank line
        _record("clar", None),
    ]
    written = write_fold_roc(records, tmp_path)
    assert sorted(written) == ["fold_1", "fold_2", "no_fold"]
    assert [path.name for path in written["fold_1"]] == ["roc_auc.csv", "roc_macro.png"]
    with (tmp_path / "fold_2" / "roc_auc.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["trial"] for row in rows] == ["resnet18-fold2", "vgg16-fold2"]
    assert rows[0]["fold"] == "2" and float(rows[0]["macro_auc"]) == pytest.approx(
        records[2].metrics["test_macro_auc"], abs=1e-6
    )
    assert rows[1]["status"] == FAILED and rows[1]["micro_auc"] == ""
    assert_png_not_blank(tmp_path / "fold_1" / "roc_macro.png")
    only_failed = write_fold_roc([_record("x-fold4", 4, status=FAILED)], tmp_path / "failed")
    assert [path.name for path in only_failed["fold_4"]] == ["roc_auc.csv"]
