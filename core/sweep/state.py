"""A sweep's own record, ``<results>/<run name>/sweep.json``: what was asked, the parent
run, the trials' validated configs and how to resume. Typed, so the driver passes one
object instead of a dict of keys, and it saves and loads itself.

The file is what ``--resume`` and ``--report-only`` start from; Tune's own experiment
state (trial progress, checkpoints) lives under ``experiment_path``. Tune's state is
pickled, so a resume first checks (:meth:`SweepState.ensure_trusted`) that this user's
clarlab wrote the folder: :meth:`SweepState.save` gives each sweep a random
``trust_token`` and records it in a per-user registry (:mod:`core.sweep.trust`).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from core.config import ExperimentConfig
from core.sweep import trust
from core.sweep.resources import Resources
from core.sweep.space import SearchSpaceError, Trial
from core.tracking import RunIdentity

SWEEP_FILE = "sweep.json"
TUNE_DIR_NAME = "tune"
STATE_VERSION = 3


@dataclass
class SweepState:
    """Everything a sweep needs to be resumed or reported on."""

    run_name: str
    ablation: str
    search_space: str
    preset: str | None
    identity: RunIdentity  # the parent's identity: tracking URI, experiment, parent run id
    experiment_path: str  # Tune's experiment folder (local or shared storage)
    metric: str
    matrix_codes: list[str] | None
    panels: list[str]
    resources: Resources
    seeds: int
    max_failures: int
    command_line: str
    trials: list[Trial]
    created: float = field(default_factory=time.time)
    report: dict[str, Any] | None = None  # the search space's ReportSpec, as a dict
    # "asha": successive halving stops weak cells early; None: every trial runs its budget.
    # A default, so that sweep.json files written before it load.
    scheduler: str | None = None
    # Random, per sweep; recorded with the file's hash in the per-user registry on save.
    # None for a sweep.json written before the registry existed (refused on resume).
    trust_token: str | None = field(default_factory=trust.new_token)

    @property
    def tracking_uri(self) -> str:
        assert self.identity.tracking_uri, "a sweep's identity always has a resolved URI"
        return self.identity.tracking_uri

    @property
    def parent_run_id(self) -> str:
        assert self.identity.parent_run_id, "a sweep's identity always has its parent run"
        return self.identity.parent_run_id

    def to_json(self) -> dict[str, Any]:
        return {
            "version": STATE_VERSION,
            "run_name": self.run_name,
            "ablation": self.ablation,
            "search_space": self.search_space,
            "preset": self.preset,
            "created": self.created,
            "identity": self.identity.to_dict(),
            "experiment_path": self.experiment_path,
            "metric": self.metric,
            "matrix_codes": self.matrix_codes,
            "panels": self.panels,
            "resources": asdict(self.resources),
            "seeds": self.seeds,
            "max_failures": self.max_failures,
            "command_line": self.command_line,
            "report": self.report,
            "scheduler": self.scheduler,
            trust.TOKEN_KEY: self.trust_token,
            "trials": [
                {
                    "trial_id": trial.trial_id,
                    "panel": trial.panel,
                    "first": trial.first,
                    "second": trial.second,
                    "role": trial.role,
                    "cell_id": trial.cell_id,
                    "controls": dict(trial.controls),
                    "coords": dict(trial.coords),
                    "config": trial.config.model_dump(mode="json"),
                }
                for trial in self.trials
            ],
        }

    def save(self, run_dir: Path) -> Path:
        """Write ``sweep.json`` atomically (a crash never leaves half a file) and record it
        in the per-user registry, so that a later ``--resume`` trusts this folder."""
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.trust_token is None:  # an old sweep resumed on request: it gets one now
            self.trust_token = trust.new_token()
        target = run_dir / SWEEP_FILE
        handle, temporary = tempfile.mkstemp(dir=run_dir, prefix=".sweep-", suffix=".json")
        with os.fdopen(handle, "w") as stream:
            json.dump(self.to_json(), stream, indent=1)
        os.replace(temporary, target)
        try:
            trust.record_trusted(target)
        except OSError as error:  # the sweep can run; only its resume will need the override
            print(
                f"warning: could not record {target} in {trust.registry_path()} ({error}); "
                f"--resume of this sweep will need --trust-results",
                file=sys.stderr,
                flush=True,
            )
        return target

    @staticmethod
    def ensure_trusted(run_dir: Path) -> None:
        """Refuse ``run_dir`` unless this user's clarlab wrote its ``sweep.json`` (and it is
        unchanged since): resuming unpickles Tune's state from the folder. See
        :func:`core.sweep.trust.ensure_trusted` for what is checked and the override."""
        trust.ensure_trusted(run_dir, SWEEP_FILE)

    @classmethod
    def load(cls, run_dir: Path) -> SweepState:
        """Read a sweep's state; the trial configs are validated again (once per resume)."""
        path = run_dir / SWEEP_FILE
        raw = json.loads(path.read_text())
        if raw.get("version") != STATE_VERSION:
            raise SearchSpaceError(
                f"{path} was written by another version of clarlab (state version "
                f"{raw.get('version', 1)}, this one reads {STATE_VERSION}); rerun the sweep"
            )
        trials = [
            Trial(
                item["trial_id"],
                item["panel"],
                item["first"],
                item["second"],
                ExperimentConfig.from_dict(item["config"], source=f"{path} ({item['trial_id']})"),
                role=item["role"],
                cell_id=item["cell_id"],
                controls=item["controls"],
                coords=item.get("coords", {}),
            )
            for item in raw["trials"]
        ]
        return cls(
            run_name=raw["run_name"],
            ablation=raw["ablation"],
            search_space=raw["search_space"],
            preset=raw["preset"],
            identity=RunIdentity.from_dict(raw["identity"]),
            experiment_path=raw["experiment_path"],
            metric=raw["metric"],
            matrix_codes=raw["matrix_codes"],
            panels=raw["panels"],
            resources=Resources(**raw["resources"]),
            seeds=raw["seeds"],
            max_failures=raw["max_failures"],
            command_line=raw["command_line"],
            trials=trials,
            created=raw["created"],
            report=raw.get("report"),
            scheduler=raw.get("scheduler"),
            trust_token=raw.get(trust.TOKEN_KEY),
        )


def unique_run_name(results_dir: Path, stem: str) -> str:
    """``<stem>-<date>-<time>`` (``-2``, ``-3``... when taken), its folder claimed.

    The name is also the MLflow parent run's name, so two sweeps started in the same
    second must not share it. Checking that the folder does not exist and creating it
    later races between processes; ``os.mkdir`` without ``exist_ok`` is atomic, so the
    process whose ``mkdir`` succeeds owns the name and every other one moves on to the
    next counter. The folder is left empty (``run_sweep`` refuses only a folder that
    already holds ``sweep.json``)."""
    results_dir.mkdir(parents=True, exist_ok=True)
    name = f"{stem}-{datetime.now():%Y%m%d-%H%M%S}"
    candidate, number = name, 2
    while True:
        try:
            os.mkdir(results_dir / candidate)
        except FileExistsError:
            candidate, number = f"{name}-{number}", number + 1
            continue
        return candidate


def find_sweep(results_dir: Path, which: str | bool, ablation: str | None = None) -> Path:
    """The folder of a previous sweep: by run name (or path), or the latest of ``ablation``."""
    if isinstance(which, str):
        for candidate in (Path(which), results_dir / which):
            if (candidate / SWEEP_FILE).is_file():
                return candidate.resolve()
        raise SearchSpaceError(
            f"no sweep {which!r} under {results_dir} (no {results_dir / which / SWEEP_FILE}); "
            f"pass the run name printed when the sweep started"
        )
    found = []
    for state_file in results_dir.glob(f"*/{SWEEP_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(state_file.read_text())
            if ablation is None or raw.get("ablation") == ablation:
                found.append((float(raw.get("created", 0.0)), str(state_file.parent)))
    if not found:
        raise SearchSpaceError(
            f"no previous sweep{f' of {ablation}' if ablation else ''} under {results_dir}"
        )
    return Path(max(found)[1])
