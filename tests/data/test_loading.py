"""Arrow → tensors."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from dgm.data.loading import load_split_tensors, to_float_tensor, to_uint8_images
from dgm.data.parquet import DatasetMeta, decode_table, images_to_table, read_meta


def test_to_float_tensor_shape_range_dtype():
    images = np.zeros((3, 4, 5, 2), np.uint8)
    images[0, 1, 2, 0] = 255
    images[2, 3, 4, 1] = 51
    out = to_float_tensor(images)
    assert out.shape == (3, 2, 4, 5)
    assert out.dtype == torch.float32
    assert out[0, 0, 1, 2].item() == 1.0
    assert out[2, 1, 3, 4].item() == pytest.approx(0.2)
    assert out.min().item() == 0.0 and out.max().item() == 1.0
    assert out.sum().item() == pytest.approx(1.2)


def test_to_float_tensor_of_non_contiguous_input():
    images = np.arange(2 * 4 * 4 * 1, dtype=np.uint8).reshape(2, 4, 4, 1)[:, ::2]
    out = to_float_tensor(images)
    assert out.shape == (2, 1, 2, 4)
    np.testing.assert_allclose(out.permute(0, 2, 3, 1).numpy(), images / 255, rtol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_to_float_tensor_has_one_layout_whatever_the_input_strides(channels):
    """Greyscale images stacked then given a channel axis have stride 0 there; a conv's
    rounding depends on the layout it is given, so the same pixels must give the same
    tensor layout (and so the same features)."""
    rng = np.random.default_rng(0)
    plain = rng.integers(0, 256, (4, 6, 6, channels), dtype=np.uint8)
    views = [plain, np.stack(list(plain[..., 0]))[..., None] if channels == 1
             else np.moveaxis(np.moveaxis(plain, 3, 0).copy(), 0, 3)]
    assert views[1].strides != plain.strides
    conv = torch.nn.Conv2d(channels, 8, 3)
    outs = [to_float_tensor(v) for v in views]
    for out in outs:
        assert out.stride() == (36 * channels, 1, 6 * channels, channels)  # channels-last
    assert torch.equal(conv(outs[0]), conv(outs[1]))


def test_uint8_round_trip_is_exact():
    images = np.random.default_rng(0).integers(0, 256, (16, 6, 4, 3), dtype=np.uint8)
    images[0, 0, 0, :] = [0, 255, 128]
    back = to_uint8_images(to_float_tensor(images))
    assert back.dtype == np.uint8 and back.shape == images.shape
    np.testing.assert_array_equal(back, images)


def test_to_uint8_clamps_and_rounds():
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.7, 0.2]).view(1, 1, 2, 3)
    out = to_uint8_images(x)
    assert out.shape == (1, 2, 3, 1)
    assert out.reshape(-1).tolist() == [0, 0, 128, 255, 255, 51]


def test_to_uint8_does_not_modify_input():
    x = torch.full((1, 1, 2, 2), 0.5, requires_grad=True)
    to_uint8_images(x)
    assert torch.equal(x.detach(), torch.full((1, 1, 2, 2), 0.5))


def test_load_split_tensors(digits_dir):
    sizes = {"train": 1294, "val": 144, "test": 359}
    for split, n in sizes.items():
        ds = load_split_tensors(digits_dir, split)
        images, labels = ds.tensors
        assert len(ds) == n
        assert images.shape == (n, 1, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert 0.0 <= images.min().item() and images.max().item() == 1.0
        assert set(labels.tolist()) == set(range(10))


@pytest.fixture()
def table_and_meta(digits_dir):
    path = sorted((digits_dir / "test").glob("*.parquet"))[0]
    return pq.read_table(path), read_meta(path)


def test_decode_multi_chunk_table(table_and_meta):
    table, meta = table_and_meta
    whole = decode_table(table, meta)
    doubled = pa.concat_tables([table, table])
    assert doubled.column("image").num_chunks == 2
    out = decode_table(doubled, meta)
    np.testing.assert_array_equal(out.images, np.concatenate([whole.images, whole.images]))
    np.testing.assert_array_equal(out.labels, np.concatenate([whole.labels, whole.labels]))


def test_decode_sliced_table(table_and_meta):
    table, meta = table_and_meta
    whole = decode_table(table, meta)
    part = table.slice(37, 50)
    assert part.column("image").chunk(0).offset == 37
    out = decode_table(part, meta)
    np.testing.assert_array_equal(out.images, whole.images[37:87])
    np.testing.assert_array_equal(out.labels, whole.labels[37:87])


def test_decode_concat_of_slices_with_nulls():
    meta = DatasetMeta("t", 2, 2, 1)
    images = np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1)
    labels = np.array([0, 1, -1, 3, 4, 5, -1, 7, 8, 9])
    table = images_to_table(images, labels, meta)
    mixed = pa.concat_tables([table.slice(1, 3), table.slice(6, 2)])
    out = decode_table(mixed, meta)
    np.testing.assert_array_equal(out.images, images[[1, 2, 3, 6, 7]])
    assert out.labels.tolist() == [1, -1, 3, -1, 7]
