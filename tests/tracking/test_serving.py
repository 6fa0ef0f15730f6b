"""The registered generator as a servable pyfunc: latents in, images out, and a real
``mlflow models serve`` on loopback answering REST generation requests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import free_port, server_process

from dgm.errors import DgmError
from dgm.models.gan import GANConfig
from dgm.models.generator import sample_uint8, save_generator
from dgm.models.rbm import RBMConfig
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig
from dgm.tracking.mlflow_runs import start_run
from dgm.tracking.pyfunc import log_generator
from dgm.tracking.registry import register_generator


def logged(tmp_path: Path, uri: str, config, name: str = "g"):
    """(model_uri, model) of ``config`` logged as a pyfunc generator for 8×8 images."""
    model = build_model(config, (1, 8, 8), seed=0)
    path = save_generator(model, tmp_path / f"{name}.pt", extra={"dataset": "digits"})
    run_id = start_run("dgm-test", name, {}, {}, uri=uri)
    return log_generator(run_id, path, (1, 8, 8), uri), model, run_id


@pytest.mark.parametrize("config", [GANConfig(width=8, latent_dim=4),
                                    VAEConfig(latent_dim=4, hidden=[16])])
def test_given_latents_decode_like_the_model(tmp_path, tracking_uri, config):
    model_uri, model, _ = logged(tmp_path, tracking_uri, config)
    z = np.random.default_rng(0).normal(size=(6, 4))
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    images = pyfunc.predict(pd.DataFrame({"latents": list(z)}))
    assert images.shape == (6, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(images, sample_uint8(model, 6, 0, latents=z))
    # the latents the seed would draw give the seeded images: z is the only randomness
    drawn = torch.randn(6, 4, generator=torch.Generator().manual_seed(3)).numpy()
    np.testing.assert_array_equal(sample_uint8(model, 6, 3, latents=drawn),
                                  sample_uint8(model, 6, 3))
    with pytest.raises(Exception, match=r"latents must have shape \(2, 4\)"):
        pyfunc.predict(pd.DataFrame({"latents": [[0.0] * 3, [0.0] * 3]}))


def test_conditional_latents_take_a_label_per_row(tmp_path, tracking_uri):
    config = GANConfig(width=8, latent_dim=4, conditional=True)
    model_uri, model, _ = logged(tmp_path, tracking_uri, config)
    z = np.random.default_rng(1).normal(size=(4, 4))
    labels = np.array([0, 3, 3, 9])
    images = mlflow.pyfunc.load_model(model_uri).predict(
        pd.DataFrame({"latents": list(z), "label": labels}))
    np.testing.assert_array_equal(images, sample_uint8(model, 4, 0, labels, z))
    with pytest.raises(DgmError, match="labels must lie in 0..9"):
        sample_uint8(model, 1, 0, [10], z[:1])


def test_rbm_refuses_latents():
    model = build_model(RBMConfig(hidden=4, gibbs_steps=2), (1, 2, 2), seed=0)
    with pytest.raises(DgmError, match="no latents"):
        sample_uint8(model, 2, 0, latents=np.zeros((2, 4)))


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def champion_to_serve(tmp_path: Path, uri: str, config, name: str, env_manager: str):
    """Register ``config``'s generator as ``dgm-test-NAME@champion``: (the model, the base URL
    it will be served at, the ``mlflow models serve`` command with ``env_manager``)."""
    model_uri, model, _ = logged(tmp_path, uri, config, name)
    register_generator(model_uri, f"dgm-test-{name}", "fid", 1.0)
    port = free_port()
    command = [str(Path(sys.executable).with_name("mlflow")), "models", "serve",
               "-m", f"models:/dgm-test-{name}@champion", "--env-manager", env_manager,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    return model, f"http://127.0.0.1:{port}", command


@pytest.fixture()
def served_champion(tmp_path, tracking_uri):
    """``mlflow models serve -m models:/dgm-test-cgan@champion`` on 127.0.0.1 (a real
    process, the local env); yields (invocations URL, the model)."""
    config = GANConfig(width=8, latent_dim=4, conditional=True)
    model, base, command = champion_to_serve(tmp_path, tracking_uri, config, "cgan", "local")
    with server_process(command, f"{base}/ping", tmp_path / "serve.log",
                        {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}):
        yield f"{base}/invocations", model


def test_rest_generation_from_mlflow_models_serve(served_champion):
    url, model = served_champion
    status, body = post(url, {"inputs": {"num_samples": 64, "seed": 3}})
    assert status == 200, body
    images = np.asarray(body["predictions"], dtype=np.uint8)
    assert images.shape == (64, 8, 8, 1)
    np.testing.assert_array_equal(images, sample_uint8(model, 64, 3))
    # records with params; a label asks a conditional model for one class
    status, body = post(url, {"dataframe_records": [{"seed": 3}],
                              "params": {"num_samples": 64, "label": 7}})
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"], dtype=np.uint8),
                                  sample_uint8(model, 64, 3, [7] * 64))
    # given latents: one image per row
    z = np.random.default_rng(0).normal(size=(3, 4))
    status, body = post(url, {"dataframe_split": {"columns": ["latents", "label"],
                                                  "data": [[list(r), 2] for r in z]}})
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"], dtype=np.uint8),
                                  sample_uint8(model, 3, 0, [2, 2, 2], z))
    # a label outside the classes is the client's error, with the reason
    status, body = post(url, {"dataframe_records": [{"num_samples": 2, "label": 10}]})
    assert status >= 400 and "labels must lie in 0..9" in json.dumps(body)


def virtualenv_unavailable() -> str | None:
    """None when MLflow's virtualenv environment manager can build an environment here."""
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "virtualenv").exists() and not shutil.which("virtualenv"):
        return "the virtualenv package is not installed (pip install -e '.[test]')"
    if not shutil.which("pyenv") and not shutil.which("uv") and not Path(
            "~/.pyenv/bin/pyenv").expanduser().exists():
        return "neither pyenv nor uv is available to provide the model's Python"
    return None


@pytest.mark.skipif(virtualenv_unavailable() is not None,
                    reason=str(virtualenv_unavailable()))
def test_the_champion_serves_from_its_own_virtualenv(tmp_path, tracking_uri):
    """`mlflow models serve` with its default kind of environment: MLflow builds a fresh
    virtualenv from the model's requirements (from the configured package index) and dgm
    comes with the model (``code_paths``), not from this environment."""
    config = GANConfig(width=8, latent_dim=4)
    model, base, command = champion_to_serve(tmp_path, tracking_uri, config, "gan", "virtualenv")
    bin_dirs = [str(Path(sys.executable).parent), str(Path("~/.pyenv/bin").expanduser())]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri,
           "MLFLOW_ENV_ROOT": str(tmp_path / "envs"),  # a fresh environment, built here
           "PATH": os.pathsep.join([*bin_dirs, os.environ.get("PATH", "")])}
    with server_process(command, f"{base}/ping", tmp_path / "serve.log", env,
                        cwd=tmp_path, timeout=900):  # no dgm checkout in sight; pip installs
        status, body = post(f"{base}/invocations", {"inputs": {"num_samples": 16, "seed": 5}})
    assert status == 200, body
    np.testing.assert_array_equal(np.asarray(body["predictions"], dtype=np.uint8),
                                  sample_uint8(model, 16, 5))
    (environment,) = (tmp_path / "envs").glob("mlflow-*")
    served_dgm = list(environment.glob("lib/python*/site-packages/dgm*"))
    assert served_dgm == []  # dgm is not installed there: it travels with the model


def test_the_champion_has_a_self_contained_docker_build_context(tmp_path, tracking_uri):
    """`mlflow models generate-dockerfile` (what `mlflow models build-docker` builds, minus
    the Docker daemon this machine lacks): the build context holds the model with dgm's
    code and requirements that name only packages an index has, and the copied model
    decodes like the registered one without this checkout on the path."""
    config = GANConfig(width=8, latent_dim=4)
    model, _, _ = champion_to_serve(tmp_path, tracking_uri, config, "docker", "virtualenv")
    out = tmp_path / "context"
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mlflow")), "models", "generate-dockerfile",
         "-m", "models:/dgm-test-docker@champion", "-d", str(out),
         "--env-manager", "virtualenv"],
        env={**os.environ, "MLFLOW_TRACKING_URI": tracking_uri}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile
    assert "_install_pyfunc_deps('/opt/ml/model', install_mlflow=False, " \
           "env_manager='virtualenv')" in dockerfile
    model_dir = out / "model_dir"
    shipped = {p.relative_to(model_dir / "code").as_posix()
               for p in (model_dir / "code").rglob("*.py")}
    package = Path(__file__).parents[2] / "src"
    assert shipped == {p.relative_to(package).as_posix() for p in (package / "dgm").rglob("*.py")}
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert {r.split("==")[0] for r in requirements} == {
        "mlflow", "torch", "numpy", "pydantic", "pyarrow"}
    probe = ("import mlflow.pyfunc, numpy, sys; m = mlflow.pyfunc.load_model(sys.argv[1]); "
             "import dgm; assert sys.argv[1] in dgm.__file__, dgm.__file__; "
             "numpy.save(sys.argv[2], m.predict({'num_samples': 8, 'seed': 4}))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", probe, str(model_dir), str(tmp_path / "x.npy")],
                   check=True, cwd=tmp_path, env=env, timeout=120)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), sample_uint8(model, 8, 4))
