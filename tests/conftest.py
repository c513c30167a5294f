"""Shared fixtures. Keep additive: each fixture is small and documented."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def tiny_en():
    """The real tiny.en (converted once into the default per-user cache, reused across runs)."""
    from slimwhisper.models import load_model

    return load_model("tiny.en")


@pytest.fixture(scope="session")
def base_model():
    """The real multilingual base (use only from @pytest.mark.slow tests)."""
    from slimwhisper.models import load_model

    return load_model("base")


@pytest.fixture
def tiny_random():
    """A fresh tiny random Whisper with the real tiny.en processor (see slimwhisper.models.testing)."""
    from slimwhisper.models.testing import tiny_random_loaded

    return tiny_random_loaded()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory):
    """(LoadedModel, bundle dir): the tiny random model exported to an fp32 bundle (parity-checked)."""
    from slimwhisper.export.bundle import export_bundle
    from slimwhisper.export.config import ExportConfig
    from slimwhisper.models.testing import tiny_random_loaded

    loaded = tiny_random_loaded()
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(loaded, out, ExportConfig(parity_clips=1, parity_max_tokens=12, threads=1), log=lambda m: None)
    return loaded, out
