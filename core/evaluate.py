"""Frozen-encoder evaluation (CLAR 3.2): features once, evaluation head on cached features.

The encoder is frozen and its features for the labelled training split and the test (and
validation) splits are computed ONCE per evaluation; the evaluation head then trains for
many epochs on those cached feature tensors, which costs a fraction of one training epoch.
The head always sees ALL training labels, also when the encoder was trained on a label
fraction, as in the paper. The head is CLAR's three-layer MLP or, for linear probing
(QUACLRS Tables 5-8), one linear layer (``model.eval_head``).

QUACLRS's backbone tables score the trained network's own classifier instead
(``train.scored_classifier='own'``): :func:`evaluate_classifier` runs encoder and the
method's head (:meth:`core.methods.base.Method.classify`) on the held-out splits, and
trains no evaluation head. :func:`evaluate_method` picks one of the two.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn

from core.roc import RocCurves, roc_curves


@dataclass
class EvaluationResult:
    """Metrics of one evaluation; ``confusion[i, j]`` counts true class i predicted as j."""

    top1: float
    macro_f1: float
    per_class_f1: list[float]
    confusion: np.ndarray
    class_names: list[str]
    split: str = "test"
    extra: dict[str, float] = field(default_factory=dict)
    # Per clip, in cache-row order: which rows were scored, their true and predicted class.
    # Intervals over test clips and McNemar's test between cells are built from these.
    rows: np.ndarray | None = None
    targets: np.ndarray | None = None
    predictions: np.ndarray | None = None
    # Per clip, the class probabilities (softmax of the logits, fp32) the ROC curves need.
    probabilities: np.ndarray | None = None
    # The classifier that was scored, from the front end's output to logits (the encoder,
    # then the method's own head or the standardised evaluation head): Grad-CAM explains
    # the predictions of exactly this function.
    logits_of: Callable[[torch.Tensor], torch.Tensor] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def weighted_f1(self) -> float:
        """Per-class F1 weighted by each class's support (true clips): on imbalanced test
        folds it follows the frequent classes, where macro F1 weighs every class alike."""
        support = np.asarray(self.confusion).sum(axis=1).astype(np.float64)
        total = support.sum()
        if not total:
            return 0.0
        return float(np.dot(np.asarray(self.per_class_f1, dtype=np.float64), support) / total)

    def precision_recall(self) -> dict[str, float]:
        """Macro and weighted precision and recall. Macro means over the classes present in
        truth or prediction, as macro F1 does; a class never predicted has precision 0 and
        one predicted but absent from truth recall 0 (sklearn's ``zero_division=0``).
        Weighted means weigh each class by its true support."""
        confusion = np.asarray(self.confusion, dtype=np.float64)
        true_positive = np.diag(confusion)
        predicted, support = confusion.sum(axis=0), confusion.sum(axis=1)
        present = (predicted + support) > 0
        total = support.sum()
        scores = {}
        for name, denominator in (("precision", predicted), ("recall", support)):
            per_class = np.divide(
                true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
            )
            scores[f"macro_{name}"] = float(per_class[present].mean()) if present.any() else 0.0
            scores[f"weighted_{name}"] = float(per_class @ support / total) if total else 0.0
        return scores

    @cached_property
    def roc(self) -> RocCurves | None:
        """One-vs-rest ROC curves (:mod:`core.roc`), or None when the probabilities were
        not kept."""
        if self.targets is None or self.probabilities is None:
            return None
        return roc_curves(self.targets, self.probabilities, len(self.class_names))

    @property
    def correct(self) -> np.ndarray | None:
        """Per-clip correctness (bool), or None when the predictions were not kept."""
        if self.targets is None or self.predictions is None:
            return None
        return np.asarray(self.targets) == np.asarray(self.predictions)

    def predictions_csv(self) -> str:
        """``row,true,predicted`` per clip, with class names (the trial's artifact)."""
        if self.rows is None or self.targets is None or self.predictions is None:
            return "row,true,predicted\n"
        lines = ["row,true,predicted"]
        for row, true, predicted in zip(self.rows, self.targets, self.predictions, strict=True):
            lines.append(f"{int(row)},{self.class_names[true]},{self.class_names[predicted]}")
        return "\n".join(lines) + "\n"

    def metrics(self, prefix: str | None = None) -> dict[str, float]:
        """Flat scalar metrics for reporting (``test_top1``, ``test_macro_f1``, ...; the
        micro and macro ROC AUC where the probabilities were kept, NaN where undefined)."""
        prefix = f"{prefix or self.split}_"
        flat = {
            f"{prefix}top1": self.top1,
            f"{prefix}macro_f1": self.macro_f1,
            f"{prefix}weighted_f1": self.weighted_f1,
        }
        flat.update({f"{prefix}{key}": value for key, value in self.precision_recall().items()})
        if self.roc is not None:
            flat[f"{prefix}micro_auc"] = self.roc.micro_auc
            flat[f"{prefix}macro_auc"] = self.roc.macro_auc
        flat.update({f"{prefix}{key}": value for key, value in self.extra.items()})
        return flat

    def per_class_report(self) -> str:
        """A plain-text table of per-class F1, support and recall."""
        support = self.confusion.sum(axis=1)
        recall = np.divide(
            np.diag(self.confusion), support, out=np.zeros(len(support)), where=support > 0
        )
        width = max(len(name) for name in self.class_names)
        lines = [f"{'class':<{width}}  {'f1':>6}  {'recall':>6}  {'support':>7}"]
        for name, f1, rec, count in zip(
            self.class_names, self.per_class_f1, recall, support, strict=True
        ):
            lines.append(f"{name:<{width}}  {f1:6.3f}  {rec:6.3f}  {int(count):7d}")
        lines.append(f"{'top-1':<{width}}  {self.top1:6.3f}")
        lines.append(f"{'macro F1':<{width}}  {self.macro_f1:6.3f}")
        lines.append(f"{'weighted F1':<{width}}  {self.weighted_f1:6.3f}")
        return "\n".join(lines)


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true, predicted) pairs, vectorised with bincount."""
    flat = targets.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores_from_confusion(
    confusion: np.ndarray, class_names: list[str], split: str = "test"
) -> EvaluationResult:
    """Top-1, per-class F1, macro F1 (mean over classes present in truth or prediction)
    and, through the result, weighted F1 (mean weighted by true support)."""
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0).astype(np.float64)
    actual = confusion.sum(axis=1).astype(np.float64)
    denominator = predicted + actual
    per_class_f1 = np.divide(
        2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0
    )
    present = denominator > 0
    macro_f1 = float(per_class_f1[present].mean()) if present.any() else 0.0
    total = confusion.sum()
    top1 = float(true_positive.sum() / total) if total else 0.0
    return EvaluationResult(
        top1=top1,
        macro_f1=macro_f1,
        per_class_f1=[float(v) for v in per_class_f1],
        confusion=confusion,
        class_names=list(class_names),
        split=split,
    )


@torch.no_grad()
def extract_features(
    embed: Callable[[torch.Tensor], torch.Tensor],
    load_batch: Callable[[np.ndarray], torch.Tensor],
    indices: np.ndarray,
    batch_size: int,
    device: torch.device,
) -> torch.Tensor:
    """Encoder features for ``indices``, batch by batch, kept on ``device``."""
    chunks = []
    for start in range(0, len(indices), batch_size):
        batch = load_batch(indices[start : start + batch_size]).to(device, non_blocking=True)
        chunks.append(embed(batch).float())
    if not chunks:
        return torch.empty(0, device=device)
    return torch.cat(chunks)


def train_eval_head(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> nn.Module:
    """Train the evaluation head on cached features with Adam (features are standardised)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    head.train()
    count = features.shape[0]
    for _ in range(epochs):
        order = torch.randperm(count, generator=generator).to(features.device)
        for start in range(0, count, batch_size):
            picked = order[start : start + batch_size]
            loss = loss_fn(head(features[picked]), labels[picked])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    head.eval()
    return head


@torch.no_grad()
def head_logits(head: nn.Module, features: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The head's logits for each feature row, in fp32."""
    outputs = [
        head(features[s : s + batch_size]).float() for s in range(0, len(features), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, 0, device=features.device)


def _held_out(split: Any, splits: Sequence[str]) -> dict[str, np.ndarray]:
    """Sorted cache rows of each requested held-out split that has clips (``test`` always
    has; ``val`` only under a split scheme with a validation fold)."""
    known = {"test", "val"}
    unknown = sorted(set(splits) - known)
    if unknown:
        raise ValueError(f"cannot score split(s) {unknown}; valid: {sorted(known)}")
    rows = {name: np.sort(getattr(split, name)) for name in splits}
    return {name: idx for name, idx in rows.items() if name == "test" or len(idx)}


def _scored(
    name: str,
    rows: np.ndarray,
    logits: torch.Tensor,
    cache: Any,
    logits_of: Callable[[torch.Tensor], torch.Tensor],
) -> EvaluationResult:
    """The result of ``logits`` for the sorted cache ``rows`` of split ``name``, with the
    per-clip predictions (intervals and McNemar's test are built from them) and class
    probabilities (the ROC curves) kept, and the classifier that gave them."""
    targets = cache.labels[rows]
    num_classes = len(cache.class_names)
    if len(rows):
        predictions = logits.argmax(dim=1).cpu().numpy()
        probabilities = torch.softmax(logits.float(), dim=1).cpu().numpy()
    else:
        predictions = np.zeros(0, dtype=np.int64)
        probabilities = np.zeros((0, num_classes), dtype=np.float32)
    confusion = confusion_matrix(targets, predictions, num_classes)
    result = scores_from_confusion(confusion, cache.class_names, split=name)
    result.rows = rows
    result.targets, result.predictions = targets.astype(np.int64), predictions.astype(np.int64)
    result.probabilities = probabilities.astype(np.float32)
    result.logits_of = logits_of
    return result


def evaluate_encoder(
    encoder: nn.Module,
    frontend: nn.Module,
    cache: Any,
    split: Any,
    cfg: Any,
    device: torch.device,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, EvaluationResult]:
    """Freeze ``encoder``, cache features of the train and held-out splits once, train the
    evaluation head (``model.eval_head``) on ALL training labels and score each of
    ``splits`` that has clips (``("val",)`` alone: the per-epoch check of early stopping).

    ``cache`` is a :class:`core.data.cache.AudioCache`, ``split`` a
    :class:`core.data.splits.Split` and ``cfg`` an :class:`core.config.ExperimentConfig`.
    """
    from core.models.heads import build_evaluation_head

    held_out = _held_out(split, splits)
    was_training = encoder.training
    encoder.eval()
    batch_size = cfg.train.eval_batch_size

    def embed(waves: torch.Tensor) -> torch.Tensor:
        return encoder(frontend(waves))

    def features_of(indices: np.ndarray) -> torch.Tensor:
        return extract_features(embed, cache.batch, np.sort(indices), batch_size, device)

    try:
        train_features = features_of(split.train)
        held_out_features = {name: features_of(idx) for name, idx in held_out.items()}
    finally:
        encoder.train(was_training)

    # Standardise with training statistics: the head then trains well at one learning rate
    # whatever the encoder's feature scale.
    mean = train_features.mean(dim=0, keepdim=True)
    std = train_features.std(dim=0, keepdim=True).clamp_min(1e-6)
    train_labels = torch.from_numpy(cache.labels[np.sort(split.train)]).to(device)
    num_classes = len(cache.class_names)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.train.seed)
        head = build_evaluation_head(
            cfg.model.eval_head, train_features.shape[1], cfg.model.eval_hidden_dim, num_classes
        )
        head = train_eval_head(
            head.to(device),
            (train_features - mean) / std,
            train_labels,
            epochs=cfg.train.eval_epochs,
            lr=cfg.train.eval_lr,
            batch_size=batch_size,
            seed=cfg.train.seed,
        )

    def logits_of(inputs: torch.Tensor) -> torch.Tensor:
        return head((encoder(inputs).float() - mean) / std)

    return {
        name: _scored(name, rows, head_logits(head, (features - mean) / std), cache, logits_of)
        for (name, rows), features in zip(held_out.items(), held_out_features.values(), strict=True)
    }


@torch.no_grad()
def evaluate_classifier(
    method: nn.Module,
    frontend: nn.Module,
    cache: Any,
    split: Any,
    cfg: Any,
    device: torch.device,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, EvaluationResult]:
    """Score the trained network's own classifier (encoder + the method's head, in eval
    mode) on each of ``splits`` that has clips; no evaluation head is trained, so this is
    one forward pass per held-out clip (cheap enough for every epoch's validation check).

    ``method`` is a :class:`core.methods.base.Method` whose ``classify`` gives logits.
    """
    held_out = _held_out(split, splits)

    def logits_of(inputs: torch.Tensor) -> torch.Tensor:
        logits = method.classify(method.encoder(inputs))
        if logits is None:
            raise ValueError(
                f"train.scored_classifier='own' needs a classifier, but method "
                f"{type(method).__name__} has none; set train.scored_classifier='evaluation_head'"
            )
        return logits

    def logits_of_waves(waves: torch.Tensor) -> torch.Tensor:
        return logits_of(frontend(waves))

    batch_size = cfg.train.eval_batch_size
    was_training = method.training
    method.eval()
    try:
        logits = {
            name: extract_features(logits_of_waves, cache.batch, rows, batch_size, device)
            for name, rows in held_out.items()
        }
    finally:
        method.train(was_training)
    return {
        name: _scored(name, held_out[name], split_logits, cache, logits_of)
        for name, split_logits in logits.items()
    }


def evaluate_method(
    method: nn.Module,
    frontend: nn.Module,
    cache: Any,
    split: Any,
    cfg: Any,
    device: torch.device,
    splits: Sequence[str] = ("test", "val"),
) -> dict[str, EvaluationResult]:
    """The scores ``train.scored_classifier`` asks for: the evaluation head on the frozen
    encoder (CLAR) or the network's own classifier (QUACLRS's backbone tables)."""
    if cfg.train.scored_classifier == "own":
        return evaluate_classifier(method, frontend, cache, split, cfg, device, splits)
    return evaluate_encoder(method.encoder, frontend, cache, split, cfg, device, splits)
