"""A sweep's own record, ``<results>/<run name>/sweep.json``: what was asked, the parent
run, how to resume, and the kind's details (a grid's trials, a search's settings and
invocations). Typed and versioned; it saves and loads itself.

The file is what ``--resume`` and ``--report-only`` start from; Tune's own experiment
state (trial progress, checkpoints) lives under the storage root. Tune's state is
pickled, so a resume first checks (:func:`core.sweep.trust.ensure_trusted`) that this
user's clarlab wrote the folder: :meth:`SweepState.save` gives each sweep a random
``trust_token`` and records it in a per-user registry.
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
from core.sweep.errors import SweepError
from core.sweep.resources import Resources
from core.sweep.search import SearchSettings
from core.sweep.trials import Trial
from core.tracking import RunIdentity

SWEEP_FILE = "sweep.json"
TUNE_DIR_NAME = "tune"
STUDY_FILE = "optuna.db"
STATE_VERSION = 4


@dataclass
class GridDetails:
    """What only a grid keeps: its trials and the shape of its report."""

    trials: list[Trial]
    matrix_codes: list[str] | None
    panels: list[str]
    seeds: int
    report: dict[str, Any] | None  # the grid's ReportSpec, as a dict
    deviations: list[str] = field(default_factory=list)  # departures from the paper

    def to_json(self) -> dict[str, Any]:
        return {
            "trials": [trial.to_json() for trial in self.trials],
            "matrix_codes": self.matrix_codes,
            "panels": self.panels,
            "seeds": self.seeds,
            "report": self.report,
            "deviations": self.deviations,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> GridDetails:
        trials = [Trial.from_json(item, source) for item in raw["trials"]]
        return cls(
            trials,
            raw["matrix_codes"],
            raw["panels"],
            raw["seeds"],
            raw["report"],
            [str(line) for line in raw.get("deviations") or []],
        )


@dataclass
class SearchDetails:
    """What only a search keeps: what it samples, the base every sample starts from, and
    one entry per invocation (each its own Tune experiment, ``tune``, ``tune-2`` ...)."""

    settings: SearchSettings
    base: ExperimentConfig
    invocations: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_json(),
            "base": self.base.model_dump(mode="json"),
            "invocations": self.invocations,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any], source: str) -> SearchDetails:
        base = ExperimentConfig.from_dict(raw["base"], source=f"{source} (base)")
        return cls(SearchSettings.from_json(raw["settings"]), base, raw["invocations"])


@dataclass
class SweepState:
    """Everything a sweep needs to be resumed or reported on, grid or search."""

    kind: str  # "grid" | "search"
    run_name: str
    ablation: str
    space_file: str
    preset: str | None
    identity: RunIdentity  # the parent's identity: tracking URI, experiment, parent run id
    metric: str
    mode: str  # "max" | "min"
    resources: Resources
    scheduler: str | None  # "asha" or None (fifo)
    storage_root: str  # where Tune keeps <run name>/tune*/ (local results or shared storage)
    max_failures: int
    command_line: str
    grid: GridDetails | None = None
    search: SearchDetails | None = None
    created: float = field(default_factory=time.time)
    # Random, per sweep; recorded with the file's hash in the per-user registry on save.
    # None for a file that carries none (refused on resume unless trusted on request).
    trust_token: str | None = field(default_factory=trust.new_token)

    @property
    def tracking_uri(self) -> str:
        assert self.identity.tracking_uri, "a sweep's identity always has a resolved URI"
        return self.identity.tracking_uri

    @property
    def parent_run_id(self) -> str:
        assert self.identity.parent_run_id, "a sweep's identity always has its parent run"
        return self.identity.parent_run_id

    @property
    def experiment_path(self) -> str:
        """A grid's Tune experiment (one for the whole sweep, restored by a resume)."""
        return f"{self.storage_root}/{self.run_name}/{TUNE_DIR_NAME}"

    def to_json(self) -> dict[str, Any]:
        details = self.grid if self.kind == "grid" else self.search
        assert details is not None, f"a {self.kind} state has its details"
        return {
            "version": STATE_VERSION,
            "kind": self.kind,
            "run_name": self.run_name,
            "ablation": self.ablation,
            "space_file": self.space_file,
            "preset": self.preset,
            "created": self.created,
            "identity": self.identity.to_dict(),
            "metric": self.metric,
            "mode": self.mode,
            "resources": asdict(self.resources),
            "scheduler": self.scheduler,
            "storage_root": self.storage_root,
            "max_failures": self.max_failures,
            "command_line": self.command_line,
            trust.TOKEN_KEY: self.trust_token,
            self.kind: details.to_json(),
        }

    def save(self, run_dir: Path) -> Path:
        """Write ``sweep.json`` atomically (a crash never leaves half a file) and record it
        in the per-user registry, so that a later ``--resume`` trusts this folder."""
        run_dir.mkdir(parents=True, exist_ok=True)
        if self.trust_token is None:  # a file trusted on request: it gets one now
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
        """Read a sweep's state; its configs are validated again (once per resume)."""
        path = run_dir / SWEEP_FILE
        raw = json.loads(path.read_text())
        if raw.get("version") != STATE_VERSION:
            raise SweepError(
                f"{path} was written by another version of clarlab (state version "
                f"{raw.get('version', 1)}, this one reads {STATE_VERSION}); rerun the sweep"
            )
        kind = raw["kind"]
        details = {
            "grid": GridDetails.from_json(raw["grid"], str(path)) if kind == "grid" else None,
            "search": SearchDetails.from_json(raw["search"], str(path))
            if kind == "search"
            else None,
        }
        common = ("run_name", "ablation", "space_file", "preset", "metric", "mode", "scheduler")
        return cls(
            kind=kind,
            **{key: raw[key] for key in common},
            identity=RunIdentity.from_dict(raw["identity"]),
            resources=Resources(**raw["resources"]),
            storage_root=raw["storage_root"],
            max_failures=raw["max_failures"],
            command_line=raw["command_line"],
            created=raw["created"],
            trust_token=raw.get(trust.TOKEN_KEY),
            **details,
        )


def unique_run_name(results_dir: Path, stem: str) -> str:
    """``<stem>-<date>-<time>`` (``-2``, ``-3``... when taken), its folder claimed.

    The name is also the MLflow parent run's name, so two sweeps started in the same
    second must not share it. Checking that the folder does not exist and creating it
    later races between processes; ``os.mkdir`` without ``exist_ok`` is atomic, so the
    process whose ``mkdir`` succeeds owns the name and every other one moves on to the
    next counter. The folder is left empty (a new sweep refuses only a folder that
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


def find_sweep(results_dir: Path, which: str | bool, kind: str, ablation: str | None) -> Path:
    """The folder of a previous sweep of ``kind``: by run name (or path), or the latest of
    ``ablation``."""
    if isinstance(which, str):
        for candidate in (Path(which), results_dir / which):
            if (candidate / SWEEP_FILE).is_file():
                return candidate.resolve()
        raise SweepError(
            f"no sweep {which!r} under {results_dir} (no {results_dir / which / SWEEP_FILE}); "
            f"pass the run name printed when the sweep started"
        )
    found = []
    for state_file in results_dir.glob(f"*/{SWEEP_FILE}"):
        with contextlib.suppress(OSError, ValueError):
            raw = json.loads(state_file.read_text())
            if raw.get("kind") == kind and (ablation is None or raw.get("ablation") == ablation):
                found.append((float(raw.get("created", 0.0)), str(state_file.parent)))
    if not found:
        what = f"{kind}{f' of {ablation}' if ablation else ''}"
        raise SweepError(f"no previous {what} under {results_dir}")
    return Path(max(found)[1])
