"""Shared pytest setup: `gpu` tests skip themselves where CUDA is absent (torchtune's gpu_test idea)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Every tensor in the suite is tiny: one thread is faster, and two threads thrash OpenMP on a
    shared 2-core machine (measured: tens of times slower per op while another process uses the other core)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (gpu marker); none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def clean_accelerate_state():
    """accelerate's global state reset before and after a test, and the torch thread count restored."""
    from _accelerate import reset_accelerate

    before = torch.get_num_threads()
    reset_accelerate()
    yield
    reset_accelerate()
    torch.set_num_threads(before)
