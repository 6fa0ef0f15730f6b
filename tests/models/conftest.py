"""Shared inputs of the model tests: a fixed tiny batch of real digits, one torch thread."""

from __future__ import annotations

import pytest
import torch

from dgm.data.loading import load_split_tensors


@pytest.fixture(autouse=True)
def _one_thread(single_torch_thread):
    yield


@pytest.fixture(scope="module")
def digits_batch(digits_dir) -> torch.Tensor:
    """16 digits images, float (16, 1, 8, 8) in [0, 1]; the same every run."""
    return load_split_tensors(digits_dir, "train").tensors[0][:16].clone()
