"""What a trial scores: weighted F1, precision, recall and ROC AUC (against sklearn), the
network's own classifier against the evaluation head, the linear probe, and the config
checks that keep the test split out of selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core import evaluate
from core.config import ConfigError, ExperimentConfig
from core.data.splits import Split
from core.evaluate import evaluate_classifier, evaluate_method, scores_from_confusion
from core.methods import build_method
from core.train import load_trial_data

CLASSES = ["zero", "one", "two"]


def test_weighted_f1_weighs_per_class_f1_by_support():
    # Rows are true classes: class 0 has 10 clips, class 1 two, class 2 one (never found).
    confusion = np.array([[8, 2, 0], [1, 1, 0], [0, 1, 0]])
    result = scores_from_confusion(confusion, CLASSES, split="test")
    f1 = [16 / 19, 2 / 6, 0.0]  # 2 TP / (predicted + actual)
    assert result.per_class_f1 == pytest.approx(f1)
    assert result.weighted_f1 == pytest.approx((f1[0] * 10 + f1[1] * 2 + f1[2] * 1) / 13)
    assert result.macro_f1 == pytest.approx(sum(f1) / 3)
    assert result.weighted_f1 > result.macro_f1 + 0.3  # the frequent class dominates
    metrics = result.metrics()
    assert metrics["test_weighted_f1"] == pytest.approx(result.weighted_f1)
    assert set(metrics) == {
        "test_top1",
        "test_macro_f1",
        "test_weighted_f1",
        "test_macro_precision",
        "test_weighted_precision",
        "test_macro_recall",
        "test_weighted_recall",
    }, "without kept probabilities there is no ROC AUC"
    assert f"weighted F1  {result.weighted_f1:6.3f}" in result.per_class_report()
    empty = scores_from_confusion(np.zeros((3, 3), dtype=np.int64), CLASSES)
    assert empty.weighted_f1 == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_precision_and_recall_equal_sklearns(seed: int):
    """Macro means over the classes in truth or prediction (as macro F1: a class in
    neither is left out), weighted means by true support, 0 where undefined."""
    from sklearn.metrics import f1_score, precision_recall_fscore_support

    rng = np.random.default_rng(seed)
    classes = 6
    targets = rng.choice([0, 1, 2, 4], size=60)  # classes 3 and 5 absent from truth
    predictions = np.where(rng.random(60) < 0.6, targets, rng.choice([0, 1, 3], size=60))
    result = scores_from_confusion(
        evaluate.confusion_matrix(targets, predictions, classes), [str(k) for k in range(classes)]
    )
    scores = result.precision_recall()
    for average in ("macro", "weighted"):
        precision, recall, _, _ = precision_recall_fscore_support(
            targets, predictions, average=average, zero_division=0
        )
        assert scores[f"{average}_precision"] == pytest.approx(precision)
        assert scores[f"{average}_recall"] == pytest.approx(recall)
        f1 = result.macro_f1 if average == "macro" else result.weighted_f1
        assert f1 == pytest.approx(f1_score(targets, predictions, average=average, zero_division=0))
    metrics = result.metrics("val")
    assert metrics["val_macro_recall"] == scores["macro_recall"]
    assert {"val_weighted_precision", "val_macro_precision", "val_weighted_recall"} <= set(metrics)


def test_roc_auc_equals_sklearns_and_skips_a_class_absent_from_the_split():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    targets = rng.choice([0, 1, 3], size=80)  # class 2 is absent
    logits = rng.normal(size=(80, 4)) + 2.0 * (targets[:, None] == np.arange(4))
    probabilities = torch.softmax(torch.from_numpy(logits), dim=1).numpy()
    confusion = evaluate.confusion_matrix(targets, probabilities.argmax(1), 4)
    result = scores_from_confusion(confusion, ["a", "b", "c", "d"])
    result.targets, result.probabilities = targets, probabilities.astype(np.float32)
    truth = targets[:, None] == np.arange(4)
    present = [0, 1, 3]
    metrics = result.metrics()
    assert metrics["test_micro_auc"] == pytest.approx(
        roc_auc_score(truth, probabilities, average="micro"), abs=1e-6
    )
    assert metrics["test_macro_auc"] == pytest.approx(
        roc_auc_score(truth[:, present], probabilities[:, present], average="macro"), abs=1e-6
    )
    assert result.roc.skipped == [2] and sorted(result.roc.per_class) == present


class ToyCache:
    """The part of an AudioCache evaluation reads: labels, class names, batches of rows.

    Each "clip" is 16 numbers with a bump at its class's index, so frozen random features
    separate the classes and a trained evaluation head scores near 100 %.
    """

    def __init__(self, labels: np.ndarray) -> None:
        self.labels = labels
        self.class_names = CLASSES
        generator = torch.Generator().manual_seed(0)
        self.audio = 0.3 * torch.randn(len(labels), 16, generator=generator)
        self.audio[torch.arange(len(labels)), torch.from_numpy(labels)] += 4.0

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        return self.audio[torch.as_tensor(rows)]


class ToyEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.feature_dim = 8
        self.layer = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


def toy_setup(method: str, scored: str, eval_head: str = "mlp"):
    # Test fold: half class 0, a quarter each of classes 1 and 2.
    labels = np.concatenate(
        [np.arange(90) % 3, np.repeat([1, 2, 0], [10, 10, 20]), np.repeat([0, 1], [15, 15])]
    )
    split = Split(
        train=np.arange(90),
        test=np.arange(90, 130),
        val=np.arange(130, 160),
        train_labels=labels[:90].copy(),
    )
    cfg = ExperimentConfig.from_dict(
        {
            "method": {"name": method},
            "model": {"proj_hidden_dim": 16, "eval_hidden_dim": 16, "eval_head": eval_head},
            "train": {
                "scored_classifier": scored,
                "eval_epochs": 60,
                "eval_lr": 1e-2,
                "eval_batch_size": 16,
            },
        }
    )
    torch.manual_seed(0)
    model = build_method(cfg, ToyEncoder(), num_classes=3)
    return cfg, model, ToyCache(labels), split


def test_own_classifier_is_scored_not_an_evaluation_head():
    cfg, model, cache, split = toy_setup("supervised", "own")
    last = model.head.layers[-1]
    with torch.no_grad():  # a classifier that always says class 0
        last.weight.zero_()
        last.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))
    model.train()
    results = evaluate_method(model, nn.Identity(), cache, split, cfg, torch.device("cpu"))
    assert model.training, "evaluation must hand the network back in training mode"
    test, val = results["test"], results["val"]
    share_of_zero = float(np.mean(cache.labels[split.test] == 0))
    assert share_of_zero == 0.5
    assert test.top1 == pytest.approx(share_of_zero)
    assert set(test.predictions.tolist()) == {0} and set(val.predictions.tolist()) == {0}
    np.testing.assert_array_equal(test.rows, split.test)
    np.testing.assert_array_equal(test.targets, cache.labels[split.test])
    assert val.top1 == pytest.approx(float(np.mean(cache.labels[split.val] == 0)))

    # The same network under CLAR's scoring: an evaluation head on the frozen encoder,
    # which reads the separable features and ignores the broken classifier.
    head_cfg = cfg.with_overrides({"train.scored_classifier": "evaluation_head"})
    by_head = evaluate_method(model, nn.Identity(), cache, split, head_cfg, torch.device("cpu"))
    assert by_head["test"].top1 > 0.9


@pytest.mark.parametrize("scored", ["own", "evaluation_head"])
def test_both_scorings_keep_probabilities_and_the_classifier_they_scored(scored: str):
    """Per clip, the softmax of the logits (fp32, rows summing to 1, arg-max the
    prediction), and ``logits_of``: the scored classifier, which gives those logits again
    from the front end's output (what Grad-CAM explains)."""
    cfg, model, cache, split = toy_setup("supervised", scored)
    test = evaluate_method(model, nn.Identity(), cache, split, cfg, torch.device("cpu"))["test"]
    assert test.probabilities.dtype == np.float32
    assert test.probabilities.shape == (len(split.test), 3)
    np.testing.assert_allclose(test.probabilities.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(test.probabilities.argmax(axis=1), test.predictions)
    model.eval()
    with torch.no_grad():
        again = torch.softmax(test.logits_of(cache.batch(test.rows)), dim=1).numpy()
    np.testing.assert_allclose(again, test.probabilities, atol=1e-5)
    metrics = test.metrics()
    assert 0.0 <= metrics["test_micro_auc"] <= 1.0 and 0.0 <= metrics["test_macro_auc"] <= 1.0


def test_validation_alone_can_be_scored_for_the_per_epoch_check():
    cfg, model, cache, split = toy_setup("supervised", "own")
    only_val = evaluate_classifier(
        model, nn.Identity(), cache, split, cfg, torch.device("cpu"), ("val",)
    )
    assert set(only_val) == {"val"}
    head_cfg = cfg.with_overrides({"train.scored_classifier": "evaluation_head"})
    by_head = evaluate_method(
        model, nn.Identity(), cache, split, head_cfg, torch.device("cpu"), ("val",)
    )
    assert set(by_head) == {"val"} and by_head["val"].split == "val"


def test_linear_probe_trains_a_single_linear_layer(monkeypatch):
    from core.models import heads

    built: list[nn.Module] = []
    original = heads.build_evaluation_head

    # evaluate_encoder imports the builder when it runs, so it calls this recording one.
    def recording(*args, **kwargs):
        head = original(*args, **kwargs)
        built.append(head)
        return head

    monkeypatch.setattr(heads, "build_evaluation_head", recording)
    cfg, model, cache, split = toy_setup("simclr", "evaluation_head", eval_head="linear")
    results = evaluate.evaluate_encoder(
        model.encoder, nn.Identity(), cache, split, cfg, torch.device("cpu")
    )
    assert len(built) == 1 and type(built[0]) is nn.Linear
    assert results["test"].top1 > 0.9  # the toy features are linearly separable


def test_own_classifier_is_refused_for_a_method_without_one():
    cfg, model, cache, split = toy_setup("simclr", "evaluation_head")
    cfg.train.scored_classifier = "own"  # as a config that skipped the cross-section check
    with pytest.raises(ValueError, match="train.scored_classifier='evaluation_head'"):
        evaluate_classifier(model, nn.Identity(), cache, split, cfg, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"train.scored_classifier='own' .* method.name='simclr'"):
        cfg.train.check_method(cfg.method.name)
    cfg.train.check_method("supervised")
    # A trial refuses it before opening any data (or the config already did).
    with pytest.raises(ValueError, match="has none; use method.name='supervised'"):
        load_trial_data(cfg.with_overrides({"data.root": "/nonexistent"}), progress=False)


def test_a_test_metric_is_refused_for_early_stopping():
    with pytest.raises(ConfigError, match=r"train.early_stopping_metric: .*leak.*'val_macro_f1'"):
        ExperimentConfig.from_dict({"train": {"early_stopping_metric": "test_macro_f1"}})
    assert ExperimentConfig.from_dict({"train": {"early_stopping_metric": "val_top1"}})


def test_the_paper_preset_evaluates_every_ten_epochs_for_figure_5():
    from core.config import preset

    assert preset("paper").train.eval_every == 10


def test_the_roc_curve_is_sklearns_point_for_point_ties_included() -> None:
    """core.roc draws its curves without sklearn (an import every trial would pay): the
    same points as roc_curve(drop_intermediate=False) and the same area as roc_auc_score,
    on random scores rounded so that ties occur."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from core.roc import _curve

    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(100):
        size = int(rng.integers(5, 60))
        positive = rng.random(size) < 0.3
        if positive.all() or not positive.any():
            continue
        score = np.round(rng.random(size), int(rng.integers(1, 4)))
        curve = _curve(positive, score)
        fpr, tpr, _ = roc_curve(positive, score, drop_intermediate=False)
        np.testing.assert_allclose(curve.fpr, fpr)
        np.testing.assert_allclose(curve.tpr, tpr)
        assert curve.auc == pytest.approx(roc_auc_score(positive, score), abs=1e-12)
        checked += 1
    assert checked > 80
