"""Finding a trial's MLflow run again, or creating it.

A trial restarted by Ray (worker failure, ``Tuner.restore``) must continue its own MLflow
run instead of opening a duplicate, a well-known pitfall of Ray + MLflow. A run is found
again either by its id (kept in the trial checkpoint) or by the ``clarlab.trial_id`` tag
under the same parent run; a continued run is marked RUNNING again and its params are
checked against the config it continues with.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from typing import Any

from mlflow.entities import Param, Run, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from core.config import ExperimentConfig
from core.tracking.server import once_more_after_broken_read, reaching, unreachable_reason
from core.tracking.store import (
    TAG_ABLATION,
    TAG_DATASET,
    TAG_ERROR,
    TAG_KIND,
    TAG_PARAMS_CHANGED,
    TAG_PARENT,
    TAG_PREVIOUS_ERROR,
    TAG_RESUME_COUNT,
    TAG_TRIAL_ID,
    RunIdentity,
    chunks,
    default_artifact_root,
    ensure_experiment,
    now_ms,
    provenance_tags,
    quoted,
    resolve_tracking_uri,
    search_all,
    tracking_client,
)


def _param_text(value: Any) -> str:
    """MLflow params are strings: lists/dicts as JSON (parseable back), scalars via str."""
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:MAX_PARAM_VAL_LENGTH]


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The flattened config as MLflow params (``augment.pipeline -> '["PS", "FD"]'``).

    The sweep report can parse list-valued params back with ``json.loads``.
    """
    return {key: _param_text(value) for key, value in cfg.flat().items()}


def default_run_name(cfg: ExperimentConfig, identity: RunIdentity) -> str:
    """A readable trial name: ``simclr-resnet18w16-stft3-PS+FD[-<trial id>]``."""
    if identity.run_name:
        return identity.run_name
    augmentations = "+".join([*cfg.augment.pipeline, *cfg.augment.spec_pipeline]) or "noaug"
    parts = [
        cfg.method.name,
        f"{cfg.model.encoder}w{cfg.model.width}",
        cfg.frontend.name,
        augmentations,
    ]
    if cfg.data.label_fraction < 1:
        parts.append(f"labels{cfg.data.label_fraction:g}")
    if cfg.data.fold is not None:
        parts.append(f"fold{cfg.data.fold}")
    if identity.trial_id:
        parts.append(identity.trial_id)
    return "-".join(parts)
def experiment_for(client: MlflowClient, tracking_uri: str, identity: RunIdentity) -> str:
    """The parent's experiment (MLflow nests runs of one experiment only), else ours."""
    if identity.parent_run_id:
        try:
            return client.get_run(identity.parent_run_id).info.experiment_id
        except MlflowException as error:
            if unreachable_reason(error):
                raise  # not a missing parent: `reaching` names the cause
            raise MlflowException(
                f"parent_run_id={identity.parent_run_id!r} is not a run in "
                f"{tracking_uri}; start the parent with core.tracking.start_parent_run "
                f"against the same tracking URI ({error.message})"
            ) from None
    return ensure_experiment(
        tracking_uri, identity.experiment, default_artifact_root(tracking_uri)
    )



def existing_run(
    client: MlflowClient,
    tracking_uri: str,
    identity: RunIdentity,
    run_id: str | None,
) -> Run | None:
    if run_id:
        try:
            return client.get_run(run_id)
        except MlflowException as error:
            if unreachable_reason(error):
                raise
            raise MlflowException(
                f"cannot continue MLflow run {run_id!r}: not found in {tracking_uri} "
                f"({error.message}); was the checkpoint written against another "
                f"tracking URI?"
            ) from None
    if not identity.trial_id:
        return None
    experiment_id = experiment_for(client, tracking_uri, identity)
    conditions = [f"tags.`{TAG_TRIAL_ID}` = {quoted(identity.trial_id, 'trial_id')}"]
    if identity.parent_run_id:
        conditions.append(
            f"tags.`{TAG_PARENT}` = {quoted(identity.parent_run_id, 'parent_run_id')}"
        )
    matches = search_all(client, experiment_id, " and ".join(conditions))
    # Oldest first: should duplicates exist from older tooling, the original wins.
    return matches[0] if matches else None



def reopen(client: MlflowClient, run: Run) -> None:
    """Mark a continued run RUNNING again and move a stale error out of the way."""
    tags = run.data.tags
    previous_error = tags.get(TAG_ERROR)
    if previous_error is not None:
        client.set_tag(run.info.run_id, TAG_PREVIOUS_ERROR, previous_error)
        client.delete_tag(run.info.run_id, TAG_ERROR)
    client.set_tag(
        run.info.run_id, TAG_RESUME_COUNT, str(int(tags.get(TAG_RESUME_COUNT, "0")) + 1)
    )
    if run.info.status != RunStatus.to_string(RunStatus.RUNNING):
        client.update_run(run.info.run_id, status="RUNNING")



def log_identity(
    client: MlflowClient, run_id: str, cfg: ExperimentConfig, identity: RunIdentity, run: Run, extra_tags: Mapping[str, str]
) -> None:
    existing = run.data.params
    wanted = config_params(cfg)
    changed = sorted(k for k, v in wanted.items() if k in existing and existing[k] != v)
    new_params = [Param(k, v) for k, v in wanted.items() if k not in existing]
    tags = {
        TAG_ABLATION: identity.ablation,
        TAG_DATASET: cfg.data.dataset,
        TAG_KIND: "trial",
        **provenance_tags(),
        **{key: str(value) for key, value in extra_tags.items()},
    }
    if identity.trial_id:
        tags[TAG_TRIAL_ID] = identity.trial_id
    if changed:
        warnings.warn(
            f"MLflow run {run_id} continues with changed params {changed}; MLflow "
            f"params are immutable, so the run keeps the old values (listed in the "
            f"{TAG_PARAMS_CHANGED} tag)",
            stacklevel=4,
        )
        tags[TAG_PARAMS_CHANGED] = json.dumps({k: wanted[k] for k in changed})[
            :MAX_TAG_VAL_LENGTH
        ]
    run_tags = [RunTag(k, v[:MAX_TAG_VAL_LENGTH]) for k, v in tags.items()]
    for params in chunks(new_params, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, params=params)
    for chunk in chunks(run_tags, MAX_PARAMS_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)



def open_run(
    cfg: ExperimentConfig,
    identity: RunIdentity,
    run_id: str | None,
    extra_tags: Mapping[str, str],
) -> tuple[MlflowClient, str, Run, bool]:
    """(client, tracking URI, run, resumed): run ``run_id``, or the run tagged with
    ``identity.trial_id`` under the parent (or in the experiment when there is no
    parent), else a new run.

    Params, tags and ``extra_tags`` (e.g. the data cache hash) are logged either way;
    params already on a continued run are not logged again (MLflow params are
    immutable), and a changed value is reported in the ``clarlab.params_changed`` tag.
    A tracking server that cannot be reached raises
    :class:`~core.tracking.server.TrackingServerError`.
    """
    tracking_uri = resolve_tracking_uri(identity)
    client = tracking_client(tracking_uri)
    with reaching(tracking_uri, f"opening the run of trial {identity.trial_id or '-'}"):
        run = existing_run(client, tracking_uri, identity, run_id)
        resumed = run is not None
        if run is None:
            tags = {TAG_PARENT: identity.parent_run_id} if identity.parent_run_id else {}
            if identity.trial_id:  # at creation, so a retry can find a created run
                tags[TAG_TRIAL_ID] = identity.trial_id
            experiment_id = experiment_for(client, tracking_uri, identity)
            run = once_more_after_broken_read(
                tracking_uri,
                lambda: client.create_run(
                    experiment_id,
                    start_time=now_ms(),
                    tags=tags or None,
                    run_name=default_run_name(cfg, identity),
                ),
                already_done=lambda: existing_run(client, tracking_uri, identity, None),
            )
        else:
            reopen(client, run)
        log_identity(client, run.info.run_id, cfg, identity, run, extra_tags)
    return client, tracking_uri, run, resumed
