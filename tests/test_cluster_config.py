"""The cluster files pass Ray's own checks, hold the paper's trial, and expose nothing.

Offline: Ray's ``prepare_config`` + ``validate_config`` (what ``ray up`` runs before it
talks to a cloud) on ``cluster.yaml`` (AWS), on its commented A10G alternative as a user
would uncomment it, and on ``cluster.local.yaml``; the paper preset's trial, sized by the
sweep's own ``prepare_grid``, against the worker node type's ``resources``; every server
the files start, parsed by the launcher that starts it; and the files' shell commands that
decide where things live, run in bash against a scratch home.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from core.config import PRESETS
from core.serve import build_parser
from core.serve_plan import is_loopback, is_wildcard, plan_mlflow
from core.sweep.grid_plan import prepare_grid
from core.sweep.request import SweepRequest
from core.sweep.resources import ResourceError, Resources, replan

REPO = Path(__file__).resolve().parents[1]
FILES = ["cluster.yaml", "cluster.local.yaml"]
COMMAND_KEYS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)


def load(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / name).read_text())


def commands(config: dict[str, Any]) -> list[str]:
    return [command for key in COMMAND_KEYS for command in config.get(key) or ()]


def a10g_alternative() -> str:
    """cluster.yaml with its gpu_worker swapped for the commented g5.12xlarge one, the
    way its comment tells a user to do it."""
    lines = (REPO / "cluster.yaml").read_text().splitlines()
    active = lines.index("  gpu_worker:")
    end = next(i for i in range(active + 1, len(lines)) if re.match(r"  \S", lines[i]))
    start = lines.index("  # gpu_worker:")
    stop = next(i for i in range(start, len(lines)) if not lines[i].startswith("  # "))
    uncommented = ["  " + line[len("  # ") :] for line in lines[start:stop]]
    return "\n".join(lines[:active] + lines[end:start] + uncommented + lines[stop:])


@pytest.fixture(scope="module")
def paper_trial() -> Resources:
    """What one paper trial asks Ray for, sized as the sweep driver sizes it."""
    plan = prepare_grid(SweepRequest(preset="paper"))
    trials, resources = plan.trials, plan.resources
    workers = PRESETS["paper"]["train"]["num_workers"]
    assert trials and resources.workers_per_trial == workers
    assert resources.per_trial["GPU"] == workers  # one GPU per training worker
    return resources


@pytest.mark.parametrize("name", FILES)
def test_ray_accepts_the_file(name: str):
    prepared = prepare_config(copy.deepcopy(load(name)))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_ray_accepts_the_a10g_alternative():
    config = yaml.safe_load(a10g_alternative())
    validate_config(prepare_config(config))
    worker = config["available_node_types"]["gpu_worker"]
    assert worker["node_config"]["InstanceType"] == "g5.12xlarge"
    assert (
        worker["node_config"]["ImageId"]
        == config["available_node_types"]["head"]["node_config"]["ImageId"]
    )


def test_a_broken_file_is_rejected():
    broken = load("cluster.yaml")
    broken["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "four"
    with pytest.raises(Exception, match="four"):
        validate_config(prepare_config(broken))


@pytest.mark.parametrize("text", ["cluster.yaml", "a10g"])
def test_the_paper_trial_fits_on_a_worker_node(text: str, paper_trial: Resources):
    config = load(text) if text.endswith(".yaml") else yaml.safe_load(a10g_alternative())
    head = config["head_node_type"]
    workers = {name: spec for name, spec in config["available_node_types"].items() if name != head}
    assert workers
    for name, spec in workers.items():
        node = {kind: float(amount) for kind, amount in spec["resources"].items()}
        fitted = replan(paper_trial, available=node)  # raises if the node can never hold it
        assert fitted.max_concurrent_trials == 1, name  # 4 GPUs: one trial at a time
        short = {**node, "GPU": node["GPU"] - 1}
        with pytest.raises(ResourceError, match="GPU"):
            replan(paper_trial, available=short)
    # The head takes no trial work.
    assert config["available_node_types"][head]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("name", FILES)
def test_no_server_listens_on_all_interfaces(name: str, tmp_path: Path):
    config = load(name)
    every = commands(config)
    text = "\n".join(every)
    assert "0.0.0.0" not in text and "--host ::" not in text and "[::]" not in text
    assert "mlflow server" not in text and "mlflow ui" not in text  # only through core.serve
    head_start = [c for c in config["head_start_ray_commands"] if "ray start --head" in c]
    assert len(head_start) == 1 and "--dashboard-host=127.0.0.1" in head_start[0]

    servers = [c for c in config["head_start_ray_commands"] if "core.serve mlflow" in c]
    plans = []
    for command in servers:
        launched = command.split("-m core.serve ", 1)[1].replace("$HOME", str(tmp_path))
        plans.append(plan_mlflow(build_parser().parse_args(shlex.split(launched))))
        args = build_parser().parse_args(shlex.split(launched))
        assert args.background is not None  # started detached, `ray up` waits for it
    hosts = {plan.argv[plan.argv.index("--host") + 1] for plan in plans}
    assert len(plans) == 2 and not any(is_wildcard(host) for host in hosts)
    assert any(is_loopback(host) for host in hosts)  # where `ray attach -p 5000` lands
    for plan in plans:
        assert plan.argv[plan.argv.index("--port") + 1] == "5000"
        assert "--serve-artifacts" in plan.argv
    # One store and one artifact folder behind both servers.
    for flag in ("--backend-store-uri", "--artifacts-destination"):
        assert len({plan.argv[plan.argv.index(flag) + 1] for plan in plans}) == 1
    for command in config["worker_start_ray_commands"]:
        assert "--head" not in command and "dashboard-host" not in command


@pytest.mark.parametrize("name", FILES)
def test_no_credentials_in_the_file(name: str):
    text = (REPO / name).read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key|PRIVATE KEY", text)
    assert not re.search(r"password\s*[=:]", text, re.IGNORECASE)


def run_in_home(command: str, home: Path) -> subprocess.CompletedProcess[str]:
    """A file's command in bash with ``home`` as the node's home directory."""
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(
        ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=30
    )


def env_file(config: dict[str, Any]) -> str:
    return next(c for c in config["setup_commands"] if c.endswith("> ~/.clarlab.env"))


@pytest.mark.parametrize("name", FILES)
def test_storage_is_shared_and_the_dataset_cache_is_per_node(name: str, tmp_path: Path):
    written = run_in_home(env_file(load(name)), tmp_path)
    assert written.returncode == 0, written.stderr
    shown = run_in_home(
        "source ~/.clarlab.env && printf '%s\\n' "
        '"$CLARLAB_STORAGE_PATH" "$CLARLAB_DATA" "$CLARLAB_CACHE" "$RAY_AUTH_MODE"',
        tmp_path,
    )
    storage, data, cache, auth_mode = shown.stdout.splitlines()
    assert storage.startswith("s3://") or storage.startswith("/mnt/")
    for per_node in (data, cache):
        assert Path(per_node).is_relative_to(tmp_path)  # the node's own disk
    assert auth_mode == "token"
    # Every node reads it: the Ray processes (so the trials) and interactive shells.
    config = load(name)
    for command in config["head_start_ray_commands"] + config["worker_start_ray_commands"]:
        if "ray start" in command:
            assert command.startswith("source ~/.clarlab.env && ")
    assert any("source ~/.clarlab.env" in c and ".bashrc" in c for c in config["setup_commands"])


@pytest.mark.parametrize("name", FILES)
def test_setup_stops_while_shared_storage_is_unset_or_unmounted(name: str, tmp_path: Path):
    config = load(name)
    check = next(c for c in config["setup_commands"] if 'case "$CLARLAB_STORAGE_PATH"' in c)
    shared = tmp_path / "shared"
    shared.mkdir()
    cases = {
        "/mnt/CHANGE-ME-shared/clarlab": 1,  # the file as shipped
        "s3://CHANGE-ME-bucket/clarlab": 1,
        str(tmp_path / "not-mounted"): 1,
        str(shared): 0,
        "s3://my-bucket/clarlab": 0,
    }
    for storage, expected in cases.items():
        (tmp_path / ".clarlab.env").write_text(f"export CLARLAB_STORAGE_PATH={storage}\n")
        result = run_in_home(check, tmp_path)
        assert result.returncode == expected, (storage, result.stderr)
        if expected:
            assert "CLARLAB_STORAGE_PATH" in result.stderr


@pytest.mark.parametrize("name", FILES)
def test_the_documented_submit_command_is_accepted_by_the_script(name: str):
    header = (REPO / name).read_text().split("\ncluster_name:")[0]
    submit = header[header.index("ray submit") :].split("\n#   ray attach")[0]
    words = shlex.split(submit.replace("\\\n#", " "))
    script_args = words[words.index("--") + 1 :]
    assert words[words.index("--") - 1] == "ablations/run_aug_matrix.py"
    from ablations.run_aug_matrix import build_parser as script_parser

    args = script_parser().parse_args(script_args)
    assert args.preset == "paper" and args.address == "auto"
    assert args.tracking_uri == "http://localhost:5000"
    assert args.storage_path == "$CLARLAB_STORAGE_PATH"  # expanded by the head's shell


@pytest.mark.parametrize("hard_limit", [20000, 4096])
@pytest.mark.parametrize("name", FILES)
def test_the_start_commands_run_under_the_machines_hard_open_files_limit(
    name: str, hard_limit: int, tmp_path: Path
):
    """The start commands, as written, in bash under a hard open-files limit (the machine
    a user first tried had 20000): `ray start` runs with as many as the limit allows, and
    a limit below Ray's 65536 is said. ``ray`` is a stand-in that records its limit."""
    config = load(name)
    assert run_in_home(env_file(config), tmp_path).returncode == 0
    (tmp_path / "clarlab").symlink_to(REPO)  # file_mounts: the checkout at ~/clarlab
    fake_ray = tmp_path / "clarlab-venv" / "bin" / "ray"
    fake_ray.parent.mkdir(parents=True)
    fake_ray.write_text('#!/bin/bash\n[ "$1" = start ] && ulimit -n > "$HOME/nofile"\nexit 0\n')
    fake_ray.chmod(0o755)
    starting = [c for key in ("head_start_ray_commands", "worker_start_ray_commands")
                for c in config[key] if "ray start" in c]  # fmt: skip
    assert len(starting) == 2
    for command in starting:
        (tmp_path / "nofile").unlink(missing_ok=True)
        limited = f"ulimit -Sn 1024 && ulimit -Hn {hard_limit} && {command}"
        result = run_in_home(limited.replace("$RAY_HEAD_IP", "127.0.0.1"), tmp_path)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "nofile").read_text().strip() == str(hard_limit)
        assert f"hard limit on {os.uname().nodename} is {hard_limit}" in result.stderr


def _aws_node_configs() -> dict[str, dict[str, Any]]:
    """Every AWS node type's node_config, the commented A10G alternative included."""
    shipped = load("cluster.yaml")["available_node_types"]
    alternative = yaml.safe_load(a10g_alternative())["available_node_types"]
    return {
        "head": shipped["head"]["node_config"],
        "gpu_worker": shipped["gpu_worker"]["node_config"],
        "a10g gpu_worker": alternative["gpu_worker"]["node_config"],
    }


@pytest.mark.parametrize("node_type", ["head", "gpu_worker", "a10g gpu_worker"])
def test_every_aws_node_requires_imdsv2_and_uses_the_users_security_group(node_type: str):
    """IMDSv2 only (a forged request cannot read the instance profile's credentials), and
    the user's own security group: given one, Ray creates none of its own, whose SSH rule
    admits 0.0.0.0/0. Shipped as a placeholder, so AWS refuses to launch until it is set."""
    node = _aws_node_configs()[node_type]
    assert node["MetadataOptions"]["HttpTokens"] == "required"
    assert node["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
    assert node["SecurityGroupIds"] == ["sg-CHANGE-ME"]
    assert set(node["IamInstanceProfile"]) == {"Name"}


def _policy(name: str) -> list[dict[str, Any]]:
    import json

    return json.loads((REPO / "aws" / name).read_text())["Statement"]


def test_the_head_profile_holds_what_the_autoscaler_and_storage_need_and_no_more():
    assert load("cluster.yaml")["available_node_types"]["head"]["node_config"][
        "IamInstanceProfile"
    ] == {"Name": "clarlab-head"}
    allowed = {
        "ec2:DescribeInstances", "ec2:DescribeInstanceStatus", "ec2:DescribeImages",
        "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs",
        "ec2:DescribeInstanceTypes", "ec2:RunInstances", "ec2:CreateTags",
        "ec2:StartInstances", "ec2:StopInstances", "ec2:TerminateInstances",
        "iam:PassRole", "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
    }  # fmt: skip
    for name in ("clarlab-head-policy.json", "clarlab-worker-policy.json"):
        for statement in _policy(name):
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert set(actions) <= allowed, (name, actions)
            assert not any("*" in action for action in actions), (name, actions)
            resources = statement["Resource"]
            if any(action.startswith(("s3:", "iam:")) for action in actions):
                assert resources != "*" and "CHANGE-ME-bucket" in resources or "role/" in resources
    worker = {
        a
        for s in _policy("clarlab-worker-policy.json")
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert all(action.startswith("s3:") for action in worker)  # the workers touch S3 only
