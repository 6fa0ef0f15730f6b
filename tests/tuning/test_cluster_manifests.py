"""The cluster launcher YAML (valid under Ray's own schema), the KubeRay RayJob (the fields
KubeRay requires, a reachable dashboard, the project's image, a GPU group) and the image
recipe all run the pipeline's cluster script, which exists, parses, and refuses to start
without storage; every documented `dvc exp run -S` names the params file."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "pipelines/cluster-run.sh"


def test_cluster_launcher_yaml_passes_rays_schema():
    spec = yaml.safe_load((REPO / "pipelines/ray-cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler/ray-schema.json").read_text())
    jsonschema.validate(spec, schema)
    broken = {**spec, "provider": {"region": "us-west-2"}}  # the check can fail
    try:
        jsonschema.validate(broken, schema)
    except jsonschema.ValidationError:
        pass
    else:
        raise AssertionError("a provider without a type passed Ray's schema")

    assert spec["head_node_type"] in spec["available_node_types"]
    workers = [t for n, t in spec["available_node_types"].items() if n != spec["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) >= 2  # a multi-node cluster
    assert "dgm" in spec["docker"]["image"]  # the project's image, not a stale file mount
    assert not spec["file_mounts"] and not spec["setup_commands"]
    (head_start,) = [c for c in spec["head_start_ray_commands"] if "ray start --head" in c]
    assert "--dashboard-host=0.0.0.0" in head_start
    text = (REPO / "pipelines/ray-cluster.yaml").read_text()
    assert f"-- bash {SCRIPT}" in text and "--working-dir ." in text
    assert f"-- bash {SCRIPT}" in (REPO / "README.md").read_text()


def containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


def test_rayjob_manifest_has_what_kuberay_requires():
    job = yaml.safe_load((REPO / "pipelines/rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert spec["entrypoint"] == f"bash {SCRIPT}"
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    groups = cluster["workerGroupSpecs"]
    for group in [head, *groups]:
        for container in containers(group):
            assert container["name"] and f"dgm:{ray.__version__}-" in container["image"]
    scaling = [g for g in groups if g["minReplicas"] != g["maxReplicas"]]
    assert not scaling or cluster["enableInTreeAutoscaling"] is True
    for group in groups:
        assert group["groupName"] and "rayStartParams" in group
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    gpu = [g for g in groups
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in containers(g))]
    assert gpu and all(c["image"].endswith("-cuda") for g in gpu for c in containers(g))
    runtime = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "://" in runtime["env_vars"]["DGM_STORAGE"] and runtime["working_dir"].endswith(".zip")
    secrets = {s["secretRef"]["name"] for s in containers(head)[0]["envFrom"]}
    assert secrets == {"dgm-mlflow", "dgm-s3"}  # the MLflow URI and S3 keys from Secrets


def test_image_recipe_installs_the_project_for_cpu_and_cuda():
    text = (REPO / "pipelines/cluster/Dockerfile").read_text()
    assert "FROM ${BASE}" in text and f"rayproject/ray:{ray.__version__}-py311-cpu" in text
    assert f"rayproject/ray:{ray.__version__}-py311-gpu" in text and "whl/cu" in text
    assert "-c pipelines/constraints-cpu.txt ." in text and "COPY --chown=ray:users src/" in text


def test_the_script_they_run_exists_and_needs_storage(tmp_path):
    script = REPO / SCRIPT
    assert script.is_file() and os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "dgm.cli data init" in text
    assert '-S "configs/params.yaml:cluster.storage=$DGM_STORAGE"' in text
    env = {k: v for k, v in os.environ.items() if k != "DGM_STORAGE"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "DGM_STORAGE" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_every_documented_set_param_names_the_params_file():
    """`dvc exp run -S key=value` writes params.yaml at the root; ours is configs/params.yaml."""
    sources = [REPO / "README.md", REPO / "configs/params.yaml",
               *sorted((REPO / "pipelines").glob("*.sh"))]
    found = []
    for source in sources:
        for value in re.findall(r"-S\s+\"?([^\s\"']+=)", source.read_text()):
            found.append((source.name, value))
    assert len(found) >= 4
    assert [f for f in found if not f[1].startswith("configs/params.yaml:")] == []
