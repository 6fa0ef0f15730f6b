"""Pure helpers of batch generation: per-batch seeds and the grid path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dgm.generation.batch import grid_path
from dgm.models.generator import batch_seed


def test_batch_seed_is_pinned():
    """Generated files are a function of (seed, batch_size): the derivation must not drift."""
    assert batch_seed(0, 0) == 7896617691693857887
    assert batch_seed(0, 1) == 2918264622725855778
    assert batch_seed(7, 0) == 8460147692890830636
    assert batch_seed(123, 5) == 9108532931023973645


def test_batch_seed_is_seed_sequence_state_halved():
    for seed, index in [(0, 0), (7, 3), (2**31, 10**6)]:
        state = np.random.SeedSequence([seed, index]).generate_state(1, dtype=np.uint64)[0]
        assert batch_seed(seed, index) == int(state) >> 1


def test_batch_seeds_distinct_across_indices_and_seeds():
    table = {(s, i): batch_seed(s, i) for s in range(20) for i in range(200)}
    assert len(set(table.values())) == len(table)


def test_batch_seed_stable_across_calls():
    assert [batch_seed(42, i) for i in range(50)] == [batch_seed(42, i) for i in range(50)]


def test_batch_seed_is_a_valid_torch_seed():
    for index in range(100):
        seed = batch_seed(99, index)
        assert type(seed) is int and 0 <= seed < 2**63
        torch.Generator().manual_seed(seed)  # accepted without overflow


def test_batch_seed_streams_differ():
    a = torch.randn(64, generator=torch.Generator().manual_seed(batch_seed(1, 0)))
    b = torch.randn(64, generator=torch.Generator().manual_seed(batch_seed(1, 1)))
    assert not torch.equal(a, b)
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 0.5


@pytest.mark.parametrize(
    ("output", "grid"),
    [
        ("samples.parquet", "samples.png"),
        ("out/run.1.parquet", "out/run.1.png"),
        ("samples", "samples.png"),
    ],
)
def test_grid_path(output, grid):
    assert grid_path(Path(output)) == Path(grid)


def test_grid_path_never_equals_output():
    output = Path("samples.png")
    assert grid_path(output) != output
