"""Real Ray Train runs (local Ray, 2 CPUs): DDP training, MLflow logging, resume."""

from __future__ import annotations

import csv

import pytest
import torch
from mlflow.tracking import MlflowClient

from dgm import cluster
from dgm.config import Params
from dgm.errors import DgmError
from dgm.models.generator import load_generator, sample_uint8
from dgm.stages.layout import Layout
from dgm.stages.train import run as train
from dgm.training import ray_train
from dgm.training.config import TrainConfig


@pytest.fixture()
def project(tmp_path, digits_dir, tracking_uri):
    """A project root whose artifacts/data/digits is the prepared digits set."""
    data = tmp_path / "artifacts" / "data" / "digits"
    data.parent.mkdir(parents=True)
    data.symlink_to(digits_dir, target_is_directory=True)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    return tmp_path


def tiny_params(**train) -> Params:
    return Params.model_validate({
        "models": {"gan": {"width": 8, "latent_dim": 8}, "vae": {"width": 8, "latent_dim": 4}},
        "train": {"epochs": 2, "batch_size": 128, "num_workers": 2, "cpus_per_worker": 0.5,
                  "sample_every": 1, **train},
    })


def test_gan_trains_with_ddp_logs_to_mlflow_and_writes_outputs(ray_session, project, tracking_uri):
    info = train(tiny_params(), "gan", root=project)
    out = Layout(project, "digits").model_dir("gan")

    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    steps_per_epoch = 1294 // 128  # drop_last with the global batch split over 2 workers
    assert [int(float(r["step"])) for r in rows] == [steps_per_epoch, 2 * steps_per_epoch]
    assert all(float(r["loss_d"]) > 0 for r in rows)

    client = MlflowClient(tracking_uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.num_workers"] == "2"
    assert len(client.get_metric_history(info["run_id"], "loss_g")) == 2
    artifacts = {a.path for a in client.list_artifacts(info["run_id"], "samples")}
    assert artifacts == {"samples/epoch_0001.png", "samples/epoch_0002.png"}
    assert {a.path for a in client.list_artifacts(info["run_id"], "curves")} >= {
        "curves/history.csv", "curves/loss_curves.png"}

    model = load_generator(out / "generator.pt")
    assert model.extra["dataset"] == "digits"
    images = sample_uint8(model, 16, seed=3)
    assert images.shape == (16, 8, 8, 1) and images.dtype.name == "uint8"
    assert (images == sample_uint8(model, 16, seed=3)).all()


def test_resume_continues_from_the_last_checkpoint(ray_session, project):
    params = tiny_params(epochs=1, num_workers=1, cpus_per_worker=1)
    first = train(params, "vae", root=project, run_name="digits-vae-resume")
    out = Layout(project, "digits").model_dir("vae")
    first_rows = list(csv.DictReader(open(out / "history.csv")))

    params.train.epochs = 2
    second = train(params, "vae", root=project, resume=True)
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert second["run_name"] == "digits-vae-resume"
    assert second["run_id"] == first["run_id"]  # the same MLflow run goes on
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert rows[0] == first_rows[0]  # epoch 1 came from the checkpoint, not a re-run


def test_resources_are_checked_before_waiting(ray_session):
    assert cluster.decide_use_gpu("auto", 1) is (ray_session.cluster_resources().get("GPU", 0)
                                                  >= 1)
    if not torch.cuda.is_available():
        with pytest.raises(DgmError, match="GPU"):
            cluster.decide_use_gpu(True, 1)
    with pytest.raises(DgmError, match=r"^train.num_workers × train.cpus_per_worker: 8 CPUs "
                                       r"needed, but the Ray cluster has 2$"):
        ray_train.prepare_cluster(tiny_params(num_workers=8, cpus_per_worker=1).train, "train")


def test_resume_without_an_earlier_run_is_a_user_error(ray_session, project):
    with pytest.raises(DgmError, match="no earlier run"):
        train(tiny_params(), "gan", root=project, resume=True)


def test_resume_of_a_run_that_does_not_exist_refuses_and_keeps_the_outputs(ray_session,
                                                                          project):
    """``--resume --run-name X`` for an X that never ran is an error, not a fresh run over
    the outputs of the last one."""
    artifacts = project / "artifacts"
    before = {p: p.read_bytes() for p in artifacts.rglob("*") if p.is_file()}
    with pytest.raises(DgmError, match="--resume: no run digits-gan-typo under "):
        train(tiny_params(), "gan", root=project, resume=True, run_name="digits-gan-typo")
    assert {p: p.read_bytes() for p in artifacts.rglob("*") if p.is_file()} == before


def test_divergence_stops_with_one_line_and_marks_the_run_failed(ray_session, project,
                                                                  tracking_uri):
    params = tiny_params(epochs=3, num_workers=1, cpus_per_worker=1)
    # the largest learning rate a config accepts, and a gradient norm the first step exceeds
    params.models["vae"].lr = 1.0
    params.models["vae"].max_grad_norm = 1e-3
    with pytest.raises(DgmError, match=r"training stopped: .* became (nan|inf|[0-9])") as info:
        train(params, "vae", root=project, run_name="digits-vae-diverge")
    assert "\n" not in str(info.value)
    client = MlflowClient(tracking_uri)
    [run] = client.search_runs(
        [client.get_experiment_by_name("dgm-digits").experiment_id],
        "attributes.run_name = 'digits-vae-diverge'")
    assert run.info.status == "FAILED"
    assert "became" in run.data.tags["dgm.failure_reason"]
    assert not (Layout(project, "digits").model_dir("vae") / "generator.pt").exists()


def test_rbm_trains_with_ddp_and_keeps_its_chains(ray_session, project, tracking_uri):
    """The RBM goes through the same Ray Train path: DDP over the free energy, PCD chains
    and pixel means as per-worker buffers saved with the generator."""
    params = Params.model_validate({
        "models": {"rbm": {"hidden": 16, "persistent": True, "persistent_chains": 8,
                           "gibbs_steps": 20, "ais_betas": 200}},
        "train": {"epochs": 2, "batch_size": 128, "num_workers": 2, "cpus_per_worker": 0.5,
                  "sample_every": 1},
    })
    info = train(params, "rbm", root=project)
    out = Layout(project, "digits").model_dir("rbm")
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[1]["recon_bce"]) < float(rows[0]["recon_bce"])
    assert MlflowClient(tracking_uri).get_run(info["run_id"]).info.status == "FINISHED"
    model = load_generator(out / "generator.pt")
    assert model.net.chains.shape == (8, 64)
    assert model.net.pixel_count.item() == 2 * (1294 // 128) * 64  # rank 0's images
    images = sample_uint8(model, 16, seed=3)
    assert images.shape == (16, 8, 8, 1) and (images == sample_uint8(model, 16, seed=3)).all()
    nll = model.log_likelihood(torch.rand(10, 1, 8, 8), 20, torch.Generator().manual_seed(0))
    assert torch.isfinite(nll).all() and (nll < 0).all()


def test_wgan_gp_trains_under_ddp(ray_session, project, tracking_uri):
    """The gradient penalty differentiates through the DDP-wrapped critic."""
    params = Params.model_validate({
        "models": {"gan": {"width": 8, "latent_dim": 8, "loss": "wgan-gp", "n_critic": 2}},
        "train": {"epochs": 1, "batch_size": 128, "num_workers": 2, "cpus_per_worker": 0.5},
    })
    train(params, "gan", root=project)
    rows = list(csv.DictReader(open(Layout(project, "digits").model_dir("gan") / "history.csv")))
    assert len(rows) == 1 and float(rows[0]["gradient_penalty"]) >= 0


def test_conditional_gan_with_schedule_and_early_stopping_under_ddp(ray_session, project):
    """Two DDP workers: validation metrics averaged over the ranks (they agree, or the
    barrier would hang), the cosine schedule per epoch, early stopping by patience."""
    params = Params.model_validate({
        "models": {"cgan": {"family": "gan", "width": 8, "latent_dim": 8, "conditional": True,
                            "ema_decay": 0.9, "dropout": 0.2}},
        "train": {"epochs": 6, "batch_size": 128, "num_workers": 2, "cpus_per_worker": 0.5,
                  "sample_every": 10,
                  "lr_schedule": {"kind": "cosine", "min_lr_factor": 0.0},
                  # val_d_real (D's mean output on real val images) can't keep rising for
                  # long under mode max with a huge min_delta: stops after 2 stalled epochs
                  "early_stopping": {"metric": "val_d_real", "mode": "max", "patience": 2,
                                     "min_delta": 10.0}},
    })
    train(params, "cgan", root=project)
    out = Layout(project, "digits").model_dir("cgan")
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]  # best at 1, then 2 without gain
    lr0 = 2e-4
    for r in rows:
        e = int(r["epoch"])
        expected = lr0 * (1 + torch.cos(torch.tensor(torch.pi * (e - 1) / 6)).item()) / 2
        assert float(r["lr_G"]) == pytest.approx(expected, rel=1e-6)
        assert float(r["lr_D"]) == pytest.approx(expected, rel=1e-6)
        assert 0 < float(r["val_d_real"]) < 1 and float(r["val_loss"]) > 0
    model = load_generator(out / "generator.pt")
    assert model.conditional and model.G_ema is not None
    labels = torch.arange(10)
    a = model.sample(10, torch.Generator().manual_seed(0), labels=labels)
    b = model.sample(10, torch.Generator().manual_seed(0), labels=labels.flip(0))
    assert a.shape == (10, 1, 8, 8) and not torch.equal(a, b)


def test_streamed_ingest_reads_each_ranks_shard_from_the_storage(ray_session, project,
                                                                 tmp_path_factory, capfd,
                                                                 monkeypatch):
    from dgm.data import streaming
    from dgm.data.streaming import COMPLETE, stream_dataset

    # the val split streams too (a pass per epoch), as a large one would
    monkeypatch.setattr(streaming, "STREAM_MIN_BYTES", 1)
    storage = tmp_path_factory.mktemp("storage")
    params = tiny_params(ingest="stream")
    params.cluster.storage = str(storage)
    info = train(params, "gan", root=project)

    rows = list(csv.DictReader(open(Layout(project, "digits").model_dir("gan") / "history.csv")))
    # Ray Data splits the 1294 train rows equally over the 2 ranks (647 each): 10 batches of
    # 64 per rank and epoch, as the in-memory path's DistributedSampler gives.
    assert [int(float(r["step"])) for r in rows] == [10, 20]
    assert all(float(r["val_loss"]) > 0 for r in rows)
    digits = project / "artifacts" / "data" / "digits"
    copy = storage / "datasets" / cluster.directory_digest(digits)
    assert (copy / COMPLETE).is_file()
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*.parquet")) == sorted(
        p.relative_to(digits.resolve()).as_posix() for p in digits.resolve().rglob("*.parquet"))
    # shipped once per content: a second run finds the complete copy and writes nothing
    before = {p: p.stat().st_mtime_ns for p in copy.rglob("*")}
    again = stream_dataset(digits, str(storage), cluster.directory_digest(digits))
    assert again.location == str(copy) and again.splits == ("train", "val")
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*")} == before
    assert MlflowClient().get_run(info["run_id"]).info.status == "FINISHED"
    err = capfd.readouterr().err
    assert "row/s" not in err and "Starting execution" not in err  # Ray Data stays quiet


def test_ray_trains_console_level_is_critical_unless_asked(monkeypatch):
    """A successful run prints none of Ray Train's own error lines (dgm says it in one)."""
    from dgm.training.ray_train import train_log_level

    monkeypatch.delenv("DGM_LOG_LEVEL", raising=False)
    assert train_log_level() == "CRITICAL"
    monkeypatch.setenv("DGM_LOG_LEVEL", "info")
    assert train_log_level() == "INFO"
    monkeypatch.setenv("DGM_LOG_LEVEL", "loud")
    with pytest.raises(DgmError, match="DGM_LOG_LEVEL=LOUD: not a log level"):
        train_log_level()


def test_a_dataset_that_would_not_fit_a_workers_memory_is_refused_in_one_line():
    cfg = TrainConfig(batch_size=64, num_workers=2)
    pixels = 3 * 128 * 128
    cfg.check_memory(100_000, pixels, "stream", node_bytes=8 * 2**30)  # 64 images in flight
    with pytest.raises(DgmError) as error:  # 100 000 float32 images of 128×128×3: 18.3 GiB
        cfg.check_memory(100_000, pixels, "memory", node_bytes=8 * 2**30)
    assert str(error.value) == (
        "each Ray Train worker would hold 18.3 GiB for the train and val splits as float32 "
        "plus its batch, more than the 8.0 GiB Ray gives tasks on a node: use train.ingest: "
        "stream (with cluster.storage), a smaller dataset or resolution")
    cfg.check_memory(100_000, pixels, "memory", node_bytes=0)  # the cluster did not say
    huge = TrainConfig(batch_size=10_000_000, num_workers=1)
    with pytest.raises(DgmError, match="for its batch, more than .* a smaller train.batch_size"):
        huge.check_memory(10**8, pixels, "stream", node_bytes=8 * 2**30)


def test_the_memory_check_reads_the_clusters_nodes(ray_session, project):
    """Against the real cluster's largest node: digits fit; a batch of 8×8 images that
    (with its gradient) outgrows the node does not."""
    data = project / "artifacts" / "data" / "digits"
    ray_train.check_worker_memory(TrainConfig(batch_size=64, num_workers=2), data, "memory")
    node = max(n["Resources"]["memory"] for n in ray_session.nodes() if n["Alive"])
    batch = int(node / (2 * 4 * 64)) + 1  # float32 8×8 images, twice (input and gradient)
    with pytest.raises(DgmError, match=rf"more than the {node / 2**30:.1f} GiB Ray gives"):
        ray_train.check_worker_memory(TrainConfig(batch_size=batch, num_workers=1), data,
                                      "stream")
