"""cluster.yaml against Ray's own autoscaler schema, its security properties, and the resource-fit check."""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from slmscale.errors import SlmscaleError
from slmscale.sweep.grid import grid_from_dict
from slmscale.sweep.plan import make_plan
from slmscale.sweep.resources import NodeShape, autoscaler_nodes, check_fits, trial_bundles

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster.yaml"


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_validates_against_ray_schema():
    cfg = yaml.safe_load(CLUSTER.read_text())
    jsonschema.validate(cfg, ray_schema())
    # The same check `ray up` does after filling in the provider's defaults.
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(cfg))


def test_schema_check_catches_a_broken_config():
    cfg = yaml.safe_load(CLUSTER.read_text())
    cfg["available_node_types"]["gpu.1x"]["min_workers"] = "zero"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(cfg, ray_schema())


def test_cluster_shape_gpu_autoscaling_spot_object_storage_private_dashboard():
    cfg = yaml.safe_load(CLUSTER.read_text())
    head = cfg["available_node_types"][cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0  # CPU head
    workers = {k: v for k, v in cfg["available_node_types"].items() if k != cfg["head_node_type"]}
    assert workers and all(w["min_workers"] == 0 and w["max_workers"] > 0 and w["resources"]["GPU"] > 0 for w in workers.values())
    assert all(w["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot" for w in workers.values())
    # Object storage by default: workers get S3 access from an instance profile; no credentials in the file, and
    # no file system to mount (the EFS mount is the documented, commented-out alternative).
    assert all("Arn" in w["node_config"]["IamInstanceProfile"] for w in workers.values())
    text = CLUSTER.read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text
    assert "--storage s3://" in text and "--units s3://" in text
    setup = "\n".join(cfg["setup_commands"])
    assert "mount -t nfs4" not in setup and "SLMSCALE_SCRATCH" in setup
    assert "# shared-filesystem alternative" in text and "mount -t nfs4" in text
    assert "pip install" in setup and "~/slmscale" in setup  # installs this project
    head_start = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start and "0.0.0.0" not in head_start
    rules = cfg["provider"]["security_group"]["IpPermissions"]
    assert [(r["FromPort"], r["ToPort"]) for r in rules] == [(22, 22)]  # only SSH from outside
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in rules for ip in r["IpRanges"])


def _spec(**res):
    return grid_from_dict({"name": "fit", "models": ["tiny-100K", "tiny-1M"], "tokens": [4096],
                           "resources": {"workers": 1, "cpus_per_worker": 1, "gpus_per_worker": 0, **res}}, source="fit.yaml")


def test_fit_check_against_cluster_yaml_node_types():
    nodes = [NodeShape("head", 8, 0)] + autoscaler_nodes(CLUSTER)
    assert {n.name for n in nodes} >= {"gpu.1x", "gpu.8x"}
    ok = _spec(workers=8, cpus_per_worker=8, gpus_per_worker=1)
    check_fits(ok, make_plan(ok).trials, nodes)
    too_big = _spec(workers=1, cpus_per_worker=8, gpus_per_worker=16)
    with pytest.raises(SlmscaleError, match=r"needs a worker with 8 CPU and 16 GPU.*no node"):
        check_fits(too_big, make_plan(too_big).trials, nodes)
    too_many = _spec(workers=40, cpus_per_worker=8, gpus_per_worker=1)  # 40 GPUs > 16 + 2*8
    with pytest.raises(SlmscaleError, match=r"needs 320.5 CPU and 40 GPU in total"):
        check_fits(too_many, make_plan(too_many).trials, nodes)


def test_trial_bundles_reserve_the_trainable_only_for_multi_worker_runs():
    from slmscale.sweep.grid import TrialResources

    assert trial_bundles(TrialResources(1, 2, 1)) == [{"CPU": 2.0, "GPU": 1.0}]
    b = trial_bundles(TrialResources(2, 4, 1))
    assert len(b) == 3 and b[1:] == [{"CPU": 4.0, "GPU": 1.0}] * 2 and "GPU" not in b[0]


def test_missing_cluster_config_is_a_clear_error(tmp_path):
    with pytest.raises(SlmscaleError, match="--cluster-config: file not found"):
        autoscaler_nodes(tmp_path / "nope.yaml")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"head_node_type": "h", "available_node_types": {
        "h": {"resources": {"CPU": 4}}, "w": {"resources": {}, "max_workers": 2}}}))
    with pytest.raises(SlmscaleError, match=r"available_node_types.w.resources has no CPU count"):
        autoscaler_nodes(tmp_path / "c.yaml")
