"""Search space -> validated trials -> Ray Tune -> MLflow parent run and report.

The only package of ``core`` that imports Ray Tune or reads search-space YAML. One module
per job:

- :mod:`~core.sweep.space`: YAML -> typed search space -> validated trials (no Ray);
- :mod:`~core.sweep.preflight`: what each trial's data would be, checked before Ray starts;
- :mod:`~core.sweep.resources`: placing trials on the cluster;
- :mod:`~core.sweep.trial`: the Tune trainable and its in-process and worker-group hosts;
- :mod:`~core.sweep.progress`: the terminal's progress lines;
- :mod:`~core.sweep.state`: ``sweep.json``, what a resume starts from;
- :mod:`~core.sweep.driver`: run, resume, report-only, dry run;
- :mod:`~core.sweep.results`: Tune's state back into records, the report, the summary.
"""

from __future__ import annotations

from core.lazy import lazy_attributes

# Imported on first use, so that reading a search space (core.sweep.space) does not load
# Ray Tune and MLflow: the driver validates a grid before it needs either.
_EXPORTS = {
    "SweepRequest": "core.sweep.driver",
    "init_ray": "core.sweep.driver",
    "prepare_trials": "core.sweep.driver",
    "reachable_tracking_uri": "core.sweep.driver",
    "run_sweep": "core.sweep.driver",
    "trial_table": "core.sweep.dryrun",
    "PreflightError": "core.sweep.preflight",
    "SplitSizes": "core.sweep.preflight",
    "check_trials": "core.sweep.preflight",
    "ResourceError": "core.sweep.resources",
    "Resources": "core.sweep.resources",
    "plan_resources": "core.sweep.resources",
    "SweepOutcome": "core.sweep.results",
    "collect_records": "core.sweep.results",
    "mlflow_hint": "core.sweep.results",
    "Axis": "core.sweep.space",
    "SearchSpace": "core.sweep.space",
    "SearchSpaceError": "core.sweep.space",
    "Trial": "core.sweep.space",
    "expand_trials": "core.sweep.space",
    "load_search_space": "core.sweep.space",
    "restrict_axes": "core.sweep.space",
    "SWEEP_FILE": "core.sweep.state",
    "SweepState": "core.sweep.state",
    "find_sweep": "core.sweep.state",
    "TRIAL_ENV": "core.sweep.trial",
    "run_trial": "core.sweep.trial",
    "trial_environment": "core.sweep.trial",
}


__getattr__ = lazy_attributes("core.sweep", _EXPORTS)

__all__ = [
    "SWEEP_FILE",
    "TRIAL_ENV",
    "Axis",
    "PreflightError",
    "ResourceError",
    "Resources",
    "SearchSpace",
    "SearchSpaceError",
    "SplitSizes",
    "SweepOutcome",
    "SweepRequest",
    "SweepState",
    "Trial",
    "check_trials",
    "collect_records",
    "expand_trials",
    "find_sweep",
    "init_ray",
    "load_search_space",
    "mlflow_hint",
    "plan_resources",
    "prepare_trials",
    "reachable_tracking_uri",
    "restrict_axes",
    "run_sweep",
    "run_trial",
    "trial_environment",
    "trial_table",
]
