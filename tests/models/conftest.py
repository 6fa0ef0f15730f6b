"""Shared inputs of the model tests: a fixed tiny batch of real digits, one torch thread."""

from __future__ import annotations

import pytest
import torch

from dgm.data.loading import load_split_tensors


@pytest.fixture(autouse=True)
def single_torch_thread():
    """Tiny models run faster (and reproducibly) on one intra-op thread, above all when the
    machine's cores are busy: OpenMP threads then spin against other processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_batch(digits_dir) -> torch.Tensor:
    """16 digits images, float (16, 1, 8, 8) in [0, 1]; the same every run."""
    return load_split_tensors(digits_dir, "train").tensors[0][:16].clone()
