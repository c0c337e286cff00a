"""A grid's per-fold figures on its parent run (QUACLRS 4.6: results per fold): the
trials' macro ROC curves overlaid and their AUCs (:mod:`core.fold_report`, written with
the report), and each trial's Grad-CAM image gathered from its MLflow run, all under
``figures/<fold>/`` (``fold_3/roc_macro.png``, ``fold_3/roc_auc.csv``,
``fold_3/gradcam_<trial>.png``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from core.cells import FINISHED, TrialRecord
from core.fold_report import FIGURES_FOLDER, fold_folder
from core.tracking import GRADCAM_ARTIFACT, ParentRun


def attach_fold_figures(
    run: ParentRun,
    records: Sequence[TrialRecord],
    out_dir: Path,
    written: Mapping[str, Sequence[Path]],
) -> None:
    """Copy the finished trials' Grad-CAM images into ``out_dir/<fold>/`` (a trial that
    logged none, a 1-D encoder, is left out) and log each fold's folder, with the files
    already ``written`` there by fold, to the parent run."""
    wanted = {
        record.trial_id: out_dir / fold_folder(record) / f"gradcam_{record.trial_id}.png"
        for record in records
        if record.status == FINISHED
    }
    folders: dict[str, list[Path]] = {fold: list(files) for fold, files in written.items()}
    for path in run.copy_trial_artifacts(GRADCAM_ARTIFACT, wanted):
        folders.setdefault(path.parent.name, []).append(path)
    for fold, files in folders.items():
        run.log_files(files, artifact_path=f"{FIGURES_FOLDER}/{fold}")
