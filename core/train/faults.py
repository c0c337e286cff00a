"""Fault injection for the failure tests, kept out of the loop's body.

``CLARLAB_INJECT_FAULT=kind:epoch:step:rank:marker`` (several such specs separated by
commas; a marker path holds no comma) arms faults that fire at named points of a trial:
the loop calls :meth:`FaultHooks.poisons_loss` and :meth:`FaultHooks.after_step` at each
training step and :meth:`FaultHooks.before_report` at the end of each epoch, and does
nothing else about faults. Without the variable both are no-ops.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

FAULT_ENV = "CLARLAB_INJECT_FAULT"
# How long a ``pause_before_report`` fault holds a worker (a test kills the driver meanwhile).
FAULT_PAUSE_S = 300.0


def inject_fault(kind: str, epoch: int, step: int, rank: int) -> str | None:
    """Test hook for failure handling: ``CLARLAB_INJECT_FAULT=kind:epoch:step:rank:marker``,
    several such specs separated by commas (a marker path holds no comma).

    A spec fires once (its marker file is removed when it fires), so a restarted trial runs
    clean, and a test arms it by creating the marker. After a training step: ``kill``
    SIGKILLs this worker process; ``nan`` makes the step's loss NaN. At the end of an epoch
    (step 0), after rank 0 logged the epoch to MLflow and before its checkpoint is reported
    -- the window in which a kill made a restarted trial log the epoch twice:
    ``kill_before_report`` SIGKILLs this worker; ``pause_before_report`` sleeps
    :data:`FAULT_PAUSE_S`, so that a test can kill the driver at that exact point.

    ``CLARLAB_INJECT_FAULT=@PATH`` reads the specs from the file at PATH (one per line) at
    every check, so a Ray cluster started once for a whole test session carries the hook
    and each test adds the specs it needs.
    """
    specs = _specs()
    if not specs:
        return None
    for spec in specs:
        want_kind, want_epoch, want_step, want_rank, marker = spec.split(":", 4)
        wanted = (want_kind, int(want_epoch), int(want_step), int(want_rank))
        if wanted != (kind, epoch, step, rank):
            continue
        try:
            os.remove(marker)
        except FileNotFoundError:
            continue  # not armed, or fired already
        if kind in ("kill", "kill_before_report"):
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "pause_before_report":
            time.sleep(FAULT_PAUSE_S)
        return kind
    return None


def _specs() -> list[str]:
    """The armed-or-not specs: from the variable, or from the file it names with ``@``."""
    value = os.environ.get(FAULT_ENV, "")
    if value.startswith("@"):
        try:
            value = Path(value[1:]).read_text().replace("\n", ",")
        except FileNotFoundError:
            return []
    return [spec.strip() for spec in value.split(",") if spec.strip()]


@dataclass(frozen=True)
class FaultHooks:
    """The named points at which an armed fault can fire (see the module docstring)."""

    rank: int = 0

    def poisons_loss(self, epoch: int, step: int) -> bool:
        """Before a step's loss is checked: True for an armed ``nan`` (the caller then
        makes the loss NaN, as a diverging model would)."""
        return inject_fault("nan", epoch, step, self.rank) is not None

    def after_step(self, epoch: int, step: int) -> None:
        """After a training step: ``kill`` SIGKILLs this worker."""
        inject_fault("kill", epoch, step, self.rank)

    def before_report(self, epoch: int) -> None:
        """At the end of an epoch, after rank 0 logged it and before its checkpoint is
        reported: ``kill_before_report`` or ``pause_before_report``."""
        inject_fault("kill_before_report", epoch, 0, self.rank)
        inject_fault("pause_before_report", epoch, 0, self.rank)
