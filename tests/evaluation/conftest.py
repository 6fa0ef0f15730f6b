"""The evaluation tests run on one torch thread (see ``single_torch_thread``)."""

import pytest


@pytest.fixture(autouse=True)
def _one_thread(single_torch_thread):
    yield
