"""Shared fixtures. Host libraries keep global state (pyhf's backend); restore it after each test."""

from __future__ import annotations

import os

# NB: quiet TensorFlow's C++ start-up logging in the test process only; tamm itself never sets
# TensorFlow environment variables.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# NB: zfit warns on import that it hides TensorFlow warnings unless this variable is set.
os.environ.setdefault("ZFIT_DISABLE_TF_WARNINGS", "1")

import pytest


@pytest.fixture(autouse=True)
def _restore_pyhf_backend():
    import pyhf

    backend, optimizer = pyhf.get_backend()
    yield
    pyhf.set_backend(backend, optimizer)


@pytest.fixture(scope="session")
def gaussian_toy():
    from tamm.datasets import GaussianToy

    return GaussianToy()
