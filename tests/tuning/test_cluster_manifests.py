"""The cluster launcher YAML and the KubeRay RayJob run the pipeline's cluster script, which
exists, parses, and refuses to start without shared storage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import ray
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = "pipelines/cluster-run.sh"


def test_cluster_launcher_yaml():
    spec = yaml.safe_load((REPO / "pipelines/ray-cluster.yaml").read_text())
    assert spec["head_node_type"] in spec["available_node_types"]
    workers = [t for n, t in spec["available_node_types"].items() if n != spec["head_node_type"]]
    assert sum(t["min_workers"] for t in workers) >= 2  # a multi-node cluster
    setup = " ".join(spec["setup_commands"])
    assert "pipelines/constraints-cpu.txt" in setup and (REPO / "pipelines/constraints-cpu.txt"
                                                          ).is_file()
    assert any("ray start --head" in c for c in spec["head_start_ray_commands"])
    # The job it runs is the one the README submits.
    text = (REPO / "pipelines/ray-cluster.yaml").read_text()
    assert f"-- bash {SCRIPT}" in text
    assert f"-- bash {SCRIPT}" in (REPO / "README.md").read_text()


def test_rayjob_manifest():
    job = yaml.safe_load((REPO / "pipelines/rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    assert spec["entrypoint"] == f"bash {SCRIPT}"
    assert spec["rayClusterSpec"]["rayVersion"] == ray.__version__
    images = [c["image"] for group in [spec["rayClusterSpec"]["headGroupSpec"],
                                       *spec["rayClusterSpec"]["workerGroupSpecs"]]
              for c in group["template"]["spec"]["containers"]]
    assert all(f"ray:{ray.__version__}-" in image for image in images)
    env = yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]
    assert "://" in env["DGM_STORAGE"] and env["MLFLOW_TRACKING_URI"].startswith("http")


def test_the_script_they_run_exists_and_needs_shared_storage(tmp_path):
    script = REPO / SCRIPT
    assert script.is_file() and os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "dgm data init" in text and "dvc exp run" in text and "tune.storage_path" in text
    env = {k: v for k, v in os.environ.items() if k != "DGM_STORAGE"}
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode != 0
    assert "DGM_STORAGE" in done.stderr and len(done.stderr.strip().splitlines()) == 1
