"""The per-epoch MLflow logger of a training run, against a real SQLite store."""

from __future__ import annotations

import re

from mlflow.tracking import MlflowClient

from dgm.models.gan import GANConfig
from dgm.models.registry import build_model
from dgm.tracking.callbacks import GRID_KEY, MLflowEpochLogger
from dgm.tracking.mlflow_runs import last_logged_step, start_run
from dgm.tracking.relay import Tracking


def test_grids_are_mlflow_images_with_the_epoch_as_step(tracking_uri):
    model = build_model(GANConfig(width=8, latent_dim=4), (1, 8, 8), seed=0).setup()
    run_id = start_run("dgm-test", "unit", {}, {"dgm.stage": "test"}, uri=tracking_uri)
    logger = MLflowEpochLogger(run_id, Tracking(tracking_uri), sample_every=2)
    for epoch in (1, 2, 3):
        logger.on_epoch_end(model, epoch, {"loss_g": float(epoch)}, final=epoch == 3)
    client = MlflowClient(tracking_uri)
    assert [m.step for m in client.get_metric_history(run_id, "loss_g")] == [1, 2, 3]
    named = {a.path for a in client.list_artifacts(run_id, "samples")}
    assert named == {"samples/epoch_0002.png", "samples/epoch_0003.png"}
    # MLflow's image keys: <key>+step+<step>+timestamp+… (full size, and a compressed copy)
    steps = {int(m.group(1)) for a in client.list_artifacts(run_id, "images")
             if (m := re.fullmatch(rf"images/{GRID_KEY}\+step\+(\d+)\+.*\.png", a.path))}
    assert steps == {2, 3}


def test_a_resumed_run_does_not_log_its_retrained_epochs_twice(tracking_uri):
    model = build_model(GANConfig(width=8, latent_dim=4), (1, 8, 8), seed=0).setup()
    run_id = start_run("dgm-test", "unit", {}, {"dgm.stage": "test"}, uri=tracking_uri)
    MLflowEpochLogger(run_id, Tracking(tracking_uri), 100).on_epoch_end(
        model, 1, {"loss_g": 1.0}, final=False)
    assert last_logged_step(run_id, tracking_uri) == 1
    resumed = MLflowEpochLogger(run_id, Tracking(tracking_uri), 100, logged_through=1)
    for epoch in (1, 2):  # the checkpoint was of epoch 0: epoch 1 is trained again
        resumed.on_epoch_end(model, epoch, {"loss_g": 10.0 + epoch}, final=epoch == 2)
    history = MlflowClient(tracking_uri).get_metric_history(run_id, "loss_g")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 12.0)]
