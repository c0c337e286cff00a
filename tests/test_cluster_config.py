"""``cluster.yaml`` passes the Ray cluster launcher's own schema check, offline."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def test_cluster_yaml_validates(cluster):
    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    workers = prepared["available_node_types"]["gpu_worker"]
    assert workers["node_config"]["InstanceType"] == "p3.8xlarge"  # 4 GPUs per node
    assert prepared["available_node_types"]["head"]["resources"] == {"CPU": 0}


def test_cluster_yaml_starts_mlflow_on_the_head(cluster):
    commands = " ".join(cluster["head_start_ray_commands"])
    assert "mlflow server" in commands and "--port 5000" in commands


def test_a_broken_cluster_yaml_is_rejected(cluster):
    broken = copy.deepcopy(cluster)
    broken["available_node_types"]["gpu_worker"]["min_workers"] = "four"
    with pytest.raises(Exception, match="min_workers|four"):
        validate_config(prepare_config(broken))
