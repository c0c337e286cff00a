"""A search's report: Optuna's optimisation history and parameter importances, the
table of trials and the best config, on disk under ``<run>/search/`` and on the MLflow
parent run (through :class:`~core.tracking.ParentRun`, as a grid's report)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import optuna

from core.cells import FAILED, FINISHED
from core.sweep.outcome import SweepOutcome, closing_lines
from core.sweep.results import read_experiment, unreachable_failures
from core.sweep.search import to_config
from core.sweep.search_plan import fail_stale, sample_id, study_url
from core.sweep.state import SweepState
from core.sweep.trials import label_of
from core.tracking import ParentRun

SEARCH_DIR_NAME = "search"  # local folder and MLflow artifact path of the search's report


def _value_text(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else label_of(value)


def trials_table(study: optuna.Study, metric: str, params: Sequence[str]) -> str:
    """One line per trial of the study: its id, state, score, the epoch of its last
    evaluation and its parameters. A pruned (ASHA-stopped) trial's score is its last
    evaluation, at fewer epochs."""
    header = ["trial", "state", metric, "epochs", *params]
    rows = [header]
    for trial in study.trials:
        value = "" if trial.value is None else f"{trial.value:.4f}"
        epochs = "" if trial.last_step is None else str(trial.last_step)
        shown = [_value_text(trial.params[name]) if name in trial.params else "" for name in params]
        rows.append([sample_id(trial.number), trial.state.name.lower(), value, epochs, *shown])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(line.rstrip() for line in lines)


def _completed(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return [trial for trial in study.trials if trial.state == optuna.trial.TrialState.COMPLETE]


def write_plots(study: optuna.Study, folder: Path, metric: str, lines: list[str]) -> list[Path]:
    """Optuna's optimisation history and parameter importances, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    written = []
    completed = _completed(study)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = optuna_plots.plot_optimization_history(study, target_name=metric)
        path = folder / "optimization_history.png"
        axes.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
        varying = [
            name
            for name in {name for trial in completed for name in trial.params}
            if len({repr(trial.params.get(name)) for trial in completed}) > 1
        ]
        if len(completed) < 2 or not varying:
            lines.append(
                f"parameter importances: not drawn; they need at least 2 completed trials "
                f"whose parameters differ (the study has {len(completed)} completed)"
            )
            return written
        try:
            importances = optuna.importance.get_param_importances(study)
            axes = optuna_plots.plot_param_importances(study, target_name=metric)
        except (ValueError, RuntimeError) as error:
            lines.append(f"parameter importances: not drawn ({error})")
            return written
        path = folder / "param_importances.png"
        axes.figure.savefig(path, dpi=120, bbox_inches="tight")
        plt.close(axes.figure)
        written.append(path)
    shown = ", ".join(f"{name} {value:.2f}" for name, value in importances.items())
    lines.append(f"parameter importances ({len(completed)} completed trials): {shown}")
    return written


def _best(study: optuna.Study, state: SweepState, folder: Path) -> tuple[dict | None, list[str]]:
    """The best completed trial (its number, value and config values) and the lines that
    say it; its whole config goes to ``best_config.yaml``."""
    search = state.search
    assert search is not None
    if not _completed(study):
        return None, [f"no trial completed its budget yet; no best {state.metric}"]
    best = study.best_trial
    values = {name: to_config(name, value) for name, value in best.params.items()}
    config = search.base.with_overrides(values, source=f"best trial {best.number}")
    (folder / "best_config.yaml").write_text(config.to_yaml())
    lines = [
        f"best {state.metric}: {best.value:.4f} ({sample_id(best.number)}, evaluated at epoch "
        f"{best.last_step})",
        *(f"  {name}: {label_of(value)}" for name, value in values.items()),
    ]
    return {"number": best.number, "value": best.value, "params": values}, lines


def finish_search(
    state: SweepState,
    run_dir: Path,
    stream: TextIO,
    set_status: bool,
    fit_seconds: float | None = None,
) -> SweepOutcome:
    """The study's report on disk and on the parent run; ends the parent; prints the best
    config and the table. The outcome counts this invocation's trials (the last one's)."""
    search = state.search
    assert search is not None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=state.run_name, storage=study_url(run_dir))
    fail_stale(study)
    folder = run_dir / SEARCH_DIR_NAME
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    files = write_plots(study, folder, state.metric, lines)
    frame = study.trials_dataframe()
    if not frame.empty:
        frame.insert(0, "trial", [sample_id(number) for number in frame["number"]])
    frame.to_csv(folder / "trials.csv", index=False)
    files.append(folder / "trials.csv")
    best, best_lines = _best(study, state, folder)
    lines[:0] = best_lines
    if best is not None:
        files.append(folder / "best_config.yaml")
    invocation = search.invocations[-1] if search.invocations else {}
    results = read_experiment(invocation["experiment_path"]) if invocation else {}
    parent = ParentRun(state.tracking_uri, state.parent_run_id, state.identity.experiment)
    outcome = SweepOutcome(
        kind="search",
        run_name=state.run_name,
        run_dir=run_dir,
        resources=state.resources,
        parent_run_id=parent.run_id,
        tracking_uri=parent.tracking_uri,
        experiment=parent.experiment,
        best=best,
        study_trials=len(study.trials),
        failed=sorted(name for name, result in results.items() if result.status == FAILED),
        unreachable_failed=unreachable_failures(list(results.values())),
        ended=_ended(results, invocation),
        fit_seconds=fit_seconds,
    )
    outcome.tracking_error = parent.publish(
        "attaching the search's report",
        lambda run: _attach(run, state, study, best, files, outcome, set_status),
    )
    outcome.summary = _summary(state, study, run_dir, folder, lines, parent, outcome)
    print(outcome.summary, file=stream, flush=True)
    return outcome


def _ended(results: Mapping[str, Any], invocation: Mapping[str, Any]) -> bool:
    """Every trial of the invocation ended (finished or failed)."""
    wanted = int(invocation.get("samples", 0))
    done = [r for r in results.values() if r.status in (FINISHED, FAILED)]
    return len(results) >= wanted and len(done) == len(results)


def _attach(
    run: ParentRun,
    state: SweepState,
    study: optuna.Study,
    best: dict | None,
    files: Sequence[Path],
    outcome: SweepOutcome,
    set_status: bool,
) -> None:
    # Tags, not params: a resumed search may find a better trial, and MLflow never lets a
    # run's param change.
    if best is not None:
        run.set_tags({"best.trial": sample_id(best["number"])})
        run.set_tags({f"best.{name}": label_of(value) for name, value in best["params"].items()})
        run.log_metric(f"best_{state.metric}", float(best["value"]), step=len(_completed(study)))
    assert state.search is not None
    run.log_metric("search_trials", len(study.trials), step=len(state.search.invocations))
    run.log_files(files, artifact_path=SEARCH_DIR_NAME)
    if set_status:
        run.finish("FINISHED" if outcome.ended and not outcome.unreachable_failed else "KILLED")


def _summary(
    state: SweepState,
    study: optuna.Study,
    run_dir: Path,
    folder: Path,
    lines: list[str],
    parent: ParentRun,
    outcome: SweepOutcome,
) -> str:
    counts: dict[str, int] = {}
    for trial in study.trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    shown_counts = ", ".join(f"{count} {name}" for name, count in sorted(counts.items()))
    minutes = f"; {outcome.fit_seconds / 60:.1f} min" if outcome.fit_seconds else ""
    assert state.search is not None
    summary = [
        "",
        f"search {state.run_name}: {len(study.trials)} trials in study {state.run_name!r} "
        f"({shown_counts}){minutes}",
        *lines,
        "",
        trials_table(study, state.metric, list(state.search.settings.params)),
        "",
        f"study: {study_url(run_dir)} (study {state.run_name!r})",
        f"report: {folder}",
        parent.hint(),
    ]
    if outcome.failed:
        summary.append(f"failed: {', '.join(outcome.failed)} (see their Tune error files)")
    summary += closing_lines(outcome, "the search")
    return "\n".join(summary)
