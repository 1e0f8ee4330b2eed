"""A tiny CPU config for the loop tests (tests/conftest.py has the data and the finished runs); each test sees
only the built-in metrics."""

import pytest

from apis.active import strategies
from apis.config import load_config


@pytest.fixture(autouse=True)
def metric_registry(monkeypatch):
    """A copy of the metric registry for each test: metrics a test registers are gone after it."""
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))


@pytest.fixture
def tiny_config(synth_dir, tmp_path, tiny_overrides):
    def make(name="run", *extra):
        return load_config(None, tiny_overrides(synth_dir, tmp_path / name, *extra))
    return make
