"""The `dgm` command: bad input gives one line on stderr, exit status 2 and writes nothing;
`dgm evaluate --samples` and `--report` on a tiny digits project."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def dgm(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "dgm.cli", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dgm: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


# --- running `dgm` ------------------------------------------------------------------------
# A fresh interpreter pays ~3 s importing torch, scipy and pyarrow before `dgm evaluate` runs,
# too slow for the two dozen cases here on a shared 2-core machine. Most tests run each command
# in a forked child of one warm interpreter instead (``fast_dgm``): its own process, cwd,
# environment, stdout, stderr and exit status, entered through the same `dgm.cli.main` as the
# console script. test_usage_error_is_one_line and test_evaluate_error_in_a_fresh_interpreter
# keep a plain `python -m dgm.cli` (``dgm``), import-time noise on stderr included.
FORK_SERVER = r'''
import importlib, json, os, signal, sys, tempfile, traceback

for name in sys.argv[1:]:
    importlib.import_module(name)
from dgm.cli import main

for line in sys.stdin:
    req = json.loads(line)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"stdout": os.path.join(tmp, "out"), "stderr": os.path.join(tmp, "err")}
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.alarm(req["timeout"])
                os.chdir(req["cwd"])
                os.environ.clear()
                os.environ.update(req["env"])
                for fd, name in ((1, "stdout"), (2, "stderr")):
                    os.dup2(os.open(paths[name], os.O_WRONLY | os.O_CREAT, 0o600), fd)
                sys.argv = ["dgm", *req["argv"]]
                try:
                    main(req["argv"])
                    code = 0
                except SystemExit as exc:
                    if exc.code is None or isinstance(exc.code, int):
                        code = exc.code or 0
                    else:
                        print(exc.code, file=sys.stderr)
            except BaseException:
                traceback.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        _, status = os.waitpid(pid, 0)
        reply = {"returncode": os.waitstatus_to_exitcode(status)}
        for name, path in paths.items():
            reply[name] = open(path, errors="replace").read() if os.path.exists(path) else ""
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
'''
PRELOAD = ("torch", "scipy.stats", "pyarrow.parquet", "PIL.Image", "mlflow", "dgm.cli",
           "dgm.config", "dgm.stages.evaluate", "dgm.stages.report", "dgm.stages.train",
           "dgm.generation.batch")
# One BLAS/OpenMP thread (cf. the single_torch_thread fixture): on two busy cores a threaded
# OpenBLAS spends ~0.8 s in the 128x128 eigvals of one FID, single-threaded ~5 ms.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def fast_dgm(tmp_path_factory):
    """``fast_dgm(*args, cwd=...)``: like :func:`dgm`, in a child forked from a warm server."""
    log = tmp_path_factory.mktemp("fork-server") / "stderr.log"
    with open(log, "w") as err:
        server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, *PRELOAD], text=True,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                  env={**os.environ, **ONE_THREAD})

    def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k != "DGM_DATA_DIR"}
        full_env.update({**ONE_THREAD, **(env or {})})
        request = {"argv": [str(a) for a in args], "cwd": str(cwd), "env": full_env,
                   "timeout": 120}
        server.stdin.write(json.dumps(request) + "\n")
        server.stdin.flush()
        line = server.stdout.readline()
        assert line, f"fork server died: {log.read_text()}"
        reply = json.loads(line)
        return subprocess.CompletedProcess(["dgm", *request["argv"]], reply["returncode"],
                                           reply["stdout"], reply["stderr"])

    yield run
    server.stdin.close()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


@pytest.fixture()
def workdir(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "params.yaml").write_text(
        (REPO / "configs" / "params.yaml").read_text())
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.delenv("DGM_DATA_DIR", raising=False)
    return tmp_path


def test_unknown_dataset(fast_dgm, workdir):
    assert_one_line_error(fast_dgm("prepare", "--dataset", "cifar-1000", cwd=workdir),
                          "unknown dataset 'cifar-1000'")
    assert not (workdir / "artifacts").exists()


@pytest.mark.parametrize(("yaml_text", "key"), [
    ("train:\n  epochz: 3\n", "train.epochz: unknown key"),
    ("train:\n  epochs: many\n", "train.epochs"),
    ("models:\n  gan:\n    widht: 3\n", "models.gan.widht: unknown key"),
    ("bogus: 1\n", "bogus: unknown key"),
    ("train:\n  seed: -1\n", "train.seed"),
    ("evaluate:\n  seed: 18446744073709551616\n", "evaluate.seed"),
    ("data:\n  name: ../../outside\n", "data.name '../../outside' is not a plain name"),
    ("models:\n  ../gan: {family: gan}\n", "models: key '../gan' is not a plain name"),
    # numbers that validate as numbers but not as settings: non-finite or absurd
    ("models:\n  gan:\n    lr_g: .inf\n", "models.gan.lr_g: Input should be a finite number"),
    ("models:\n  vae:\n    beta: .nan\n", "models.vae.beta: Input should be a finite number"),
    ("models:\n  gan:\n    lr_d: 1.0e+6\n", "models.gan.lr_d: Input should be less than or equal "
                                              "to 1"),
    ("models:\n  gan:\n    latent_dim: 1000000000\n", "models.gan.latent_dim: Input should be "
                                                      "less than or equal to 4096"),
    ("models:\n  vae:\n    hidden: [200, 100000000]\n", "models.vae.hidden.1: Input should be "
                                                         "less than or equal to 65536"),
    ("models:\n  rbm:\n    gibbs_steps: 1.0e+12\n", "models.rbm.gibbs_steps"),
    ("train:\n  epochs: 100000000000\n", "train.epochs: Input should be less than or equal"),
    ("train:\n  lr_schedule: {kind: step, gamma: .inf}\n", "train.lr_schedule.gamma"),
    ("evaluate:\n  metric_options: {k: .nan}\n", "evaluate.metric_options.k"),
])
def test_bad_config(fast_dgm, workdir, yaml_text, key):
    bad = workdir / "configs" / "bad.yaml"
    bad.write_text(yaml_text)
    assert_one_line_error(fast_dgm("prepare", "--params", str(bad), cwd=workdir), str(bad), key)


@pytest.mark.parametrize("seed", ["-1", str(2**64)])
@pytest.mark.parametrize("command", [
    ("generate", "--model-uri", "models:/dgm-digits-gan@champion", "--output", "g.parquet"),
    ("shapes", "--out", "shapes"),
])
def test_seed_out_of_range(fast_dgm, workdir, command, seed):
    assert_one_line_error(fast_dgm(*command, "--seed", seed, cwd=workdir), "--seed")
    assert not (workdir / command[-1]).exists()


@pytest.mark.parametrize("name", ["../../outside", "/tmp/abs", ".hidden", "a/b"])
def test_dataset_names_never_become_paths_outside_artifacts(fast_dgm, project, test_images,
                                                            tmp_path, name):
    samples = write_npz(tmp_path / "s.npz", test_images)
    out = tmp_path / "m.json"
    before = sorted(p for p in project.parent.rglob("*"))
    result = fast_dgm("evaluate", "--dataset", name, "--samples", samples, "--output", out,
                      cwd=project)
    assert_one_line_error(result, f"dataset {name!r} is not a plain name")
    assert sorted(p for p in project.parent.rglob("*")) == before and not out.exists()


@pytest.mark.parametrize("command", ["train", "tune"])
@pytest.mark.parametrize(("batch", "fragment"), [
    (1_000_000_000, "train.batch_size 1000000000 exceeds the 1294 images of the train split"),
    (1, "train.batch_size 1 is smaller than {command}.num_workers 2"),
])
def test_a_batch_that_cannot_be_formed_is_refused_before_ray(fast_dgm, project, tmp_path,
                                                              command, batch, fragment):
    params = yaml.safe_load((project / "configs" / "params.yaml").read_text())
    params["train"]["batch_size"] = batch
    params["tune"]["num_workers"] = 2
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    before = sorted(project.rglob("*"))
    result = fast_dgm(command, "--model", "gan", "--params", path, cwd=project)
    assert_one_line_error(result, fragment.format(command=command))
    assert sorted(project.rglob("*")) == before  # no Ray results, no MLflow run


def test_params_file_that_is_not_utf8(fast_dgm, workdir):
    bad = workdir / "configs" / "latin1.yaml"
    bad.write_bytes("data:\n  name: digits  # \u00e9t\u00e9\n".encode("latin-1"))
    assert_one_line_error(fast_dgm("prepare", "--params", str(bad), cwd=workdir), str(bad),
                          "not UTF-8 text")


@pytest.mark.parametrize("where", ["under-a-file", "pseudo-filesystem"])
def test_output_that_cannot_be_written(fast_dgm, workdir, where):
    """``--out`` below a regular file, or on /proc: one line naming it, nothing written, and
    the blocking file intact."""
    blocker = workdir / "a-file"
    blocker.write_text("keep me")
    out = blocker / "prepared" if where == "under-a-file" else Path("/proc/dgm-prepared")
    result = fast_dgm("prepare", "--out", str(out), cwd=workdir)
    assert_one_line_error(result, f"cannot write {out}",
                          *(["a-file is not a directory"] if where == "under-a-file" else []))
    assert blocker.read_text() == "keep me"
    assert not out.exists() and not (workdir / "artifacts").exists()


def test_missing_raw_file(fast_dgm, workdir):
    empty = workdir / "mirror"
    (empty / "mnist").mkdir(parents=True)
    result = fast_dgm("prepare", "--dataset", "mnist", cwd=workdir,
                      env={"DGM_DATA_DIR": str(empty)})
    assert_one_line_error(result, "train-images-idx3-ubyte.gz", "not found")
    assert not (workdir / "artifacts").exists()


def test_checksum_mismatch(fast_dgm, workdir):
    mirror = workdir / "mirror" / "mnist"
    mirror.mkdir(parents=True)
    for name in IDX:
        (mirror / name).write_bytes(b"not the real file")
    result = fast_dgm("prepare", "--dataset", "mnist", cwd=workdir,
                      env={"DGM_DATA_DIR": str(mirror.parent)})
    assert_one_line_error(result, "checksum mismatch")
    assert not (workdir / "artifacts").exists()


@pytest.mark.parametrize("count", ["0", "-4"])
def test_non_positive_num_samples(fast_dgm, workdir, count):
    out = workdir / "s.parquet"
    result = fast_dgm("generate", "--model-uri", "models:/dgm-digits-gan@champion",
                      "--num-samples", count, "--output", str(out), cwd=workdir)
    assert_one_line_error(result, "--num-samples must be positive")
    assert not out.exists()


def test_model_uri_that_does_not_exist(fast_dgm, workdir):
    out = workdir / "s.parquet"
    result = fast_dgm("generate", "--model-uri", "models:/dgm-digits-gan@champion",
                      "--num-samples", "10", "--output", str(out), cwd=workdir)
    assert_one_line_error(result, "models:/dgm-digits-gan@champion", "does not exist")
    assert not out.exists() and not out.with_suffix(".png").exists()


@pytest.fixture()
def not_mlflow(tmp_path):
    """An HTTP server on loopback that is not MLflow (404 for everything); its URL."""
    import http.server
    import threading

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.mark.parametrize("uri", ["file:///tmp/dgm-mlruns", "/tmp/dgm-mlruns", "./mlruns"])
@pytest.mark.parametrize("command", [("generate", "--model-uri",
                                      "models:/dgm-digits-gan@champion", "--output", "g.parquet"),
                                     ("lineage", "models:/dgm-digits-gan@champion")])
def test_a_file_tracking_store_is_one_line(fast_dgm, workdir, uri, command):
    result = fast_dgm(*command, cwd=workdir, env={"MLFLOW_TRACKING_URI": uri})
    assert_one_line_error(result, f"MLFLOW_TRACKING_URI={uri}", "file store is retired")
    assert not (workdir / "g.parquet").exists() and not Path("/tmp/dgm-mlruns").exists()


@pytest.mark.parametrize("server", ["refused", "not_mlflow"])
def test_unreachable_tracking_server_is_one_line_fast(fast_dgm, workdir, server, request):
    from conftest import free_port

    uri = (f"http://127.0.0.1:{free_port()}" if server == "refused"
           else request.getfixturevalue("not_mlflow"))
    out = workdir / "s.parquet"
    started = time.monotonic()
    result = fast_dgm("generate", "--model-uri", "models:/dgm-digits-gan@champion",
                      "--num-samples", "10", "--output", str(out), cwd=workdir,
                      env={"MLFLOW_TRACKING_URI": uri})
    assert time.monotonic() - started < 30  # MLflow alone retries for minutes
    assert_one_line_error(result, uri)
    assert ("cannot reach the MLflow tracking server" if server == "refused"
            else "does not answer as an MLflow tracking server") in result.stderr
    assert not out.exists() and not out.with_suffix(".png").exists()


@pytest.mark.parametrize(("space", "fragment"), [
    ("{lr_gg: {uniform: [0.1, 0.2]}}", "tune.space.gan.lr_gg: unknown hyperparameter of gan"),
    ("{lr_g: {loguniform: [0.001, 0.0001]}}", "empty or inverted range"),
    ("{loss: {choice: []}}", "empty choice"),
    ("{loss: {choice: [nonsaturating, minimax]}}", "'minimax' is not accepted"),
])
def test_tune_bad_search_space(fast_dgm, workdir, space, fragment):
    bad = workdir / "configs" / "bad.yaml"
    bad.write_text(f"models:\n  gan: {{}}\ntune:\n  models: [gan]\n  space:\n    gan: {space}\n")
    assert_one_line_error(fast_dgm("tune", "--model", "gan", "--params", str(bad), cwd=workdir),
                          str(bad), fragment)
    assert not (workdir / "artifacts").exists()


def test_tune_unknown_model(fast_dgm, workdir):
    assert_one_line_error(fast_dgm("tune", "--model", "gann", cwd=workdir),
                          "unknown model 'gann'")


def test_usage_error_is_one_line(workdir):
    result = dgm("train", cwd=workdir)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == ["dgm: error: Missing option '--model'."]


# --- dgm evaluate --samples / --report -----------------------------------------------------
EVAL_KEYS = {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage",
             "class_entropy", "class_kl", "mode_kl", "modes_covered", "inception_score", "swd",
             "swd_pixel", "memorization"}


def new_project(path: Path) -> Path:
    """A project directory: the repository's params and dvc.yaml, no artifacts."""
    (path / "configs").mkdir(parents=True)
    shutil.copyfile(REPO / "configs" / "params.yaml", path / "configs" / "params.yaml")
    shutil.copyfile(REPO / "dvc.yaml", path / "dvc.yaml")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project with prepared digits and a quick evaluator: an untrained, seeded classifier
    with its reference (enough for the CLI's plumbing; the numbers mean nothing)."""
    import torch

    from dgm.data.parquet import write_dataset
    from dgm.data.sources import load_raw
    from dgm.evaluation.classifier import Classifier, save_classifier
    from dgm.evaluation.reference import REFERENCE_FILE, build_reference, save_reference

    root = new_project(tmp_path_factory.mktemp("project"))
    data_dir = root / "artifacts" / "data" / "digits"
    write_dataset(load_raw("digits", []), data_dir, val_fraction=0.1, test_fraction=0.2,
                  seed=0, shard_rows=20_000)
    torch.manual_seed(0)
    model = Classifier((1, 8, 8), 10).eval()
    model.version = "cli-test"
    evaluator_dir = root / "artifacts" / "evaluator" / "digits"
    save_classifier(model, evaluator_dir / "classifier.pt", version=model.version)
    save_reference(*build_reference(model, data_dir), evaluator_dir / REFERENCE_FILE)
    return root


@pytest.fixture(scope="module")
def test_images(project):
    from dgm.data.parquet import read_split

    return read_split(project / "artifacts" / "data" / "digits", "test").images[:40]


def write_npz(path: Path, images) -> Path:
    np.savez(path, images=images)
    return path


def metrics_of(result: subprocess.CompletedProcess, path: Path) -> dict:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    metrics = json.loads(path.read_text())
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values()), metrics
    return metrics


def test_evaluate_samples_npz(fast_dgm, project, test_images, tmp_path):
    samples = write_npz(tmp_path / "test.npz", test_images)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--dataset", "digits", "--samples", samples, "--output", out,
                      cwd=project)
    metrics = metrics_of(result, out)
    assert set(metrics) == EVAL_KEYS
    assert metrics["modes_covered"] >= 1 and 0 <= metrics["memorization"] <= 1
    assert "fid=" in result.stdout and "memorization=" in result.stdout


def test_evaluate_samples_relative_paths_and_png_folder(fast_dgm, project, test_images,
                                                       tmp_path):
    from PIL import Image

    cwd = tmp_path / "work"
    (cwd / "pngs").mkdir(parents=True)
    for i, image in enumerate(test_images):
        Image.fromarray(image[..., 0], mode="L").save(cwd / "pngs" / f"{i:03d}.png")
    result = fast_dgm("evaluate", "--samples", "pngs", "--output", "m.json", "--params",
                      project / "configs" / "params.yaml", "--evaluator",
                      project / "artifacts" / "evaluator" / "digits", cwd=cwd)
    png_metrics = metrics_of(result, cwd / "m.json")
    assert set(png_metrics) == EVAL_KEYS
    # The same images as .npz score the same.
    samples = write_npz(tmp_path / "same.npz", test_images)
    out = tmp_path / "npz.json"
    npz_metrics = metrics_of(fast_dgm("evaluate", "--samples", samples, "--output", out,
                                      cwd=project), out)
    assert npz_metrics == pytest.approx(png_metrics)


def test_evaluate_with_evaluator_outside_a_project(fast_dgm, project, test_images, tmp_path):
    from dgm.paths import project_root

    evaluator = tmp_path / "my-evaluator"
    shutil.copytree(project / "artifacts" / "evaluator" / "digits", evaluator)
    assert sorted(p.name for p in evaluator.iterdir()) == ["classifier.pt", "reference.npz"]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    assert project_root(cwd) == cwd  # no dvc.yaml anywhere above: defaults, no data
    write_npz(cwd / "s.npz", test_images)
    result = fast_dgm("evaluate", "--samples", "s.npz", "--output", "m.json", "--evaluator",
                      evaluator, cwd=cwd)
    assert set(metrics_of(result, cwd / "m.json")) == EVAL_KEYS
    assert not (cwd / "artifacts").exists()
    # The classifier file itself works as well as its folder.
    result = fast_dgm("evaluate", "--samples", "s.npz", "--output", "m2.json", "--evaluator",
                      evaluator / "classifier.pt", "--metrics", "fid", cwd=cwd)
    assert set(metrics_of(result, cwd / "m2.json")) == {"fid"}


def test_evaluate_selected_metrics(fast_dgm, project, test_images, tmp_path):
    samples = write_npz(tmp_path / "s.npz", test_images)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--samples", samples, "--output", out, "--metrics",
                      "fid, kid", cwd=project)
    assert set(metrics_of(result, out)) == {"fid", "kid", "kid_std"}
    assert result.stdout.split()[0].startswith("fid=")


def _bad_samples(tmp_path: Path, case: str) -> Path:
    rng = np.random.default_rng(0)
    if case == "shape-28x28":
        return write_npz(tmp_path / "s.npz", rng.integers(0, 256, (5, 28, 28), dtype=np.uint8))
    if case == "three-channels":
        return write_npz(tmp_path / "s.npz", rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8))
    if case == "empty-file":
        (tmp_path / "s.npz").touch()
        return tmp_path / "s.npz"
    if case == "nan":
        images = rng.random((5, 8, 8, 1))
        images[1, 2, 3, 0] = np.nan
        return write_npz(tmp_path / "s.npz", images)
    if case == "missing":
        return tmp_path / "nope.npz"
    if case == "not-a-zip":
        (tmp_path / "s.npz").write_bytes(b"this is not a zip archive")
        return tmp_path / "s.npz"
    if case == "truncated-zip":
        whole = write_npz(tmp_path / "whole.npz", rng.integers(0, 256, (5, 8, 8), np.uint8))
        (tmp_path / "s.npz").write_bytes(whole.read_bytes()[:200])
        return tmp_path / "s.npz"
    raise AssertionError(case)


@pytest.mark.parametrize(("case", "fragment"), [
    ("shape-28x28", "do not match digits (8x8x1)"),
    ("three-channels", "do not match digits (8x8x1)"),
    ("empty-file", "empty file"),
    ("nan", "NaN or infinite"),
    ("missing", "samples not found"),
    ("not-a-zip", "not a readable .npz"),
    ("truncated-zip", "not a readable .npz"),
])
def test_evaluate_bad_samples(fast_dgm, project, tmp_path, case, fragment):
    samples = _bad_samples(tmp_path, case)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--dataset", "digits", "--samples", samples, "--output", out,
                      cwd=project)
    assert_one_line_error(result, fragment, str(samples))
    assert not out.exists()


def test_evaluate_unknown_metric(fast_dgm, project, test_images, tmp_path):
    samples = write_npz(tmp_path / "s.npz", test_images)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--samples", samples, "--output", out, "--metrics",
                      "fid,fidd", cwd=project)
    assert_one_line_error(result, "unknown metric(s) fidd")
    assert not out.exists()


def test_evaluate_without_evaluator(fast_dgm, test_images, tmp_path):
    root = new_project(tmp_path / "empty-project")
    samples = write_npz(tmp_path / "s.npz", test_images)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--dataset", "digits", "--samples", samples, "--output", out,
                      cwd=root)
    assert_one_line_error(result, "evaluator not found",
                          str(root / "artifacts" / "evaluator" / "digits"))
    assert not out.exists() and not (root / "artifacts").exists()


def test_evaluate_with_evaluator_of_another_dataset(fast_dgm, project, tmp_path):
    samples = write_npz(tmp_path / "s.npz", np.zeros((5, 28, 28), np.uint8))
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--dataset", "mnist", "--evaluator",
                      project / "artifacts" / "evaluator" / "digits", "--samples", samples,
                      "--output", out, cwd=project)
    assert_one_line_error(result, "the evaluator judges digits, not mnist")
    assert not out.exists()


def test_evaluate_needs_model_samples_or_report(fast_dgm, project):
    assert_one_line_error(fast_dgm("evaluate", cwd=project), "--samples", "--report")


def test_evaluate_error_in_a_fresh_interpreter(project, tmp_path):
    """One bad-input case through a plain ``python -m dgm.cli``: import-time noise included,
    stderr is still the one error line."""
    samples = _bad_samples(tmp_path, "three-channels")
    out = tmp_path / "m.json"
    result = dgm("evaluate", "--samples", str(samples), "--output", str(out), cwd=project)
    assert_one_line_error(result, "do not match digits (8x8x1)")
    assert not out.exists()


def _write_eval(root: Path, model: str, metrics: dict) -> None:
    path = root / "artifacts" / "eval" / "digits" / model / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(metrics))


def _table(text: str) -> dict[str, dict[str, str]]:
    """Markdown table rows as {model: {column: cell}}."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert set(lines[1]) <= set("|-")
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == len(header), line
        rows[cells[0]] = dict(zip(header[1:], cells[1:], strict=True))
    return rows


@pytest.mark.parametrize("floors", [False, True], ids=["no-floor", "floor"])
def test_evaluate_report(fast_dgm, tmp_path, floors):
    root = new_project(tmp_path / "proj")
    _write_eval(root, "gan", {"fid": 12.5, "kid": 0.25, "kid_std": 0.01, "precision": 0.75,
                              "evaluator_test_accuracy": 0.97})
    _write_eval(root, "vae", {"fid": 30.0, "kid": 0.5, "kid_std": 0.02, "precision": 0.5,
                              "nll_nats": 81.25, "evaluator_test_accuracy": 0.97})
    if floors:
        evaluator = root / "artifacts" / "evaluator" / "digits"
        evaluator.mkdir(parents=True)
        (evaluator / "metrics.json").write_text(json.dumps(
            {"test_accuracy": 0.97, "floor_fid": 0.5, "floor_kid": 0.001}))
    result = fast_dgm("evaluate", "--report", cwd=root)
    assert result.returncode == 0, result.stderr
    report = root / "artifacts" / "reports" / "digits.md"
    text = report.read_text()
    assert text.startswith("# digits: evaluated models")
    assert result.stdout == text
    rows = _table(text)
    assert set(rows) == ({"gan", "vae", "real test (floor)"} if floors else {"gan", "vae"})
    assert rows["gan"]["fid ↓"] == "12.5" and rows["vae"]["fid ↓"] == "30"
    assert rows["gan"]["precision ↑"] == "0.75"
    assert rows["gan"]["nll_nats ↓"] == "" and rows["vae"]["nll_nats ↓"] == "81.25"
    assert "evaluator_test_accuracy" in rows["gan"]
    if floors:
        floor = rows["real test (floor)"]
        assert floor["fid ↓"] == "0.5" and floor["kid ↓"] == "0.001"
        assert floor["precision ↑"] == ""


def test_evaluate_report_to_output(fast_dgm, tmp_path):
    root = new_project(tmp_path / "proj")
    _write_eval(root, "gan", {"fid": 1.0})
    result = fast_dgm("evaluate", "--report", "--output", "docs/r.md", cwd=root)
    assert result.returncode == 0, result.stderr
    assert "| gan | 1 |" in (root / "docs" / "r.md").read_text()
    assert not (root / "artifacts" / "reports" / "digits.md").exists()


def test_evaluate_report_without_evaluated_models(fast_dgm, tmp_path):
    root = new_project(tmp_path / "proj")
    result = fast_dgm("evaluate", "--report", cwd=root)
    assert_one_line_error(result, "no evaluated models")
    assert not (root / "artifacts" / "reports" / "digits.md").exists()


def test_evaluate_empty_metric_list(fast_dgm, project, test_images, tmp_path):
    samples = write_npz(tmp_path / "s.npz", test_images)
    out = tmp_path / "m.json"
    result = fast_dgm("evaluate", "--samples", samples, "--output", out, "--metrics", " , ",
                      cwd=project)
    assert_one_line_error(result, "--metrics: list at least one metric name")
    assert not out.exists()


def test_evaluate_report_does_not_take_samples(fast_dgm, project, test_images, tmp_path):
    samples = write_npz(tmp_path / "s.npz", test_images)
    result = fast_dgm("evaluate", "--report", "--samples", samples, cwd=project)
    assert_one_line_error(result, "--report compares evaluated models")


def test_evaluate_takes_the_dataset_from_the_evaluator(fast_dgm, project, test_images,
                                                       tmp_path):
    """Params say mnist; without --dataset the given digits evaluator decides."""
    cwd = new_project(tmp_path / "mnist-project")
    params = cwd / "configs" / "params.yaml"
    params.write_text(params.read_text().replace("name: digits", "name: mnist", 1))
    write_npz(cwd / "s.npz", test_images)
    result = fast_dgm("evaluate", "--samples", "s.npz", "--output", "m.json", "--evaluator",
                      project / "artifacts" / "evaluator" / "digits", "--metrics", "fid",
                      cwd=cwd)
    assert set(metrics_of(result, cwd / "m.json")) == {"fid"}
