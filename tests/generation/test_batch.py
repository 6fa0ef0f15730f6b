"""Batch generation from a registered generator into Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dgm.data.parquet import read_images, read_meta
from dgm.errors import DgmError
from dgm.generation.batch import generate
from dgm.models.generator import save_generator
from dgm.models.registry import build_model
from dgm.models.vae import VAEConfig
from dgm.tracking.mlflow_runs import log_generator, start_run
from dgm.tracking.registry import register_generator


@pytest.fixture()
def champion(tmp_path, tracking_uri):
    model = build_model(VAEConfig(width=8, latent_dim=4), (1, 8, 8), seed=0)
    path = save_generator(model, tmp_path / "generator.pt",
                          extra={"dataset": "digits", "class_names": list("0123456789")})
    run_id = start_run("dgm-test", "unit", {}, {}, uri=tracking_uri)
    uri = log_generator(run_id, path, (1, 8, 8), tracking_uri)
    register_generator(uri, "dgm-digits-vae", "fid", 1.0, run_id=run_id)
    return "models:/dgm-digits-vae@champion"


def test_generate_streams_rows_deterministically(champion, tmp_path):
    a = generate(champion, 2500, tmp_path / "a.parquet", seed=7, batch_size=1000, progress=False)
    b = generate(champion, 2500, tmp_path / "b.parquet", seed=7, batch_size=1000, progress=False)
    c = generate(champion, 2500, tmp_path / "c.parquet", seed=8, batch_size=1000, progress=False)
    table = pq.read_table(a.output)
    assert table.num_rows == 2500
    assert pq.ParquetFile(a.output).metadata.num_row_groups == 3  # streamed batch by batch
    assert table.column("seed").to_pylist() == [7] * 2500
    assert table.column("label").null_count == 2500
    meta = read_meta(a.output)
    assert (meta.name, meta.height, meta.width, meta.channels) == ("digits", 8, 8, 1)
    assert meta.class_names == tuple("0123456789")
    assert pq.read_table(b.output).column("image").equals(table.column("image"))
    assert not pq.read_table(c.output).column("image").equals(table.column("image"))
    images = read_images(a.output).images
    assert images.shape == (2500, 8, 8, 1) and images.std() > 0
    grid = np.asarray(Image.open(a.grid))
    assert a.grid == tmp_path / "a.png" and grid.ndim == 2 and grid.shape[0] > 8


@pytest.mark.parametrize("num_samples", [0, -3])
def test_non_positive_counts_are_refused(champion, tmp_path, num_samples):
    with pytest.raises(DgmError, match="must be positive"):
        generate(champion, num_samples, tmp_path / "x.parquet", seed=1, progress=False)
    assert not (tmp_path / "x.parquet").exists()


def test_unknown_model_leaves_no_output(tracking_uri, tmp_path):
    with pytest.raises(DgmError, match="does not exist"):
        generate("models:/dgm-digits-gan@champion", 10, tmp_path / "x.parquet", seed=1,
                 progress=False)
    assert list(tmp_path.iterdir()) == [tmp_path / "mlflow.db"] or not (
        tmp_path / "x.parquet").exists()
