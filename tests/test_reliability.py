"""Hostile-input reliability (issue 20): each case is a clear LineageLensError, never a traceback,
a silent wrong result or a half-written file."""

from __future__ import annotations

import shutil

import pytest
import torch

from lineage_lens.testing import make_tiny_model

# ------------------------------------------------------------------ 1. eval cache key by content


@pytest.fixture(scope="module")
def same_name_models(tmp_path_factory):
    """``A/model`` and ``B/model`` (different weights, same base name) and a copy of A elsewhere."""
    root = tmp_path_factory.mktemp("same_name")
    a = make_tiny_model(root / "A" / "model", "llama", seed=0)
    b = make_tiny_model(root / "B" / "model", "llama", seed=1)
    shutil.copytree(a, root / "C" / "copy_of_a")
    return a, b, root / "C" / "copy_of_a"


def test_eval_cache_keys_models_by_content_not_directory_name(same_name_models, tmp_path):
    from lineage_lens.evals._common import PromptItem, ResultCache, model_fingerprint, run_prompts
    from lineage_lens.models import load_model, model_label

    a, b, copy_a = same_name_models
    ma, mb, mc = (load_model(p, device="cpu") for p in (a, b, copy_a))
    assert model_label(ma) == model_label(mb) == "model"
    assert model_fingerprint(ma) != model_fingerprint(mb)
    assert model_fingerprint(ma) == model_fingerprint(mc)  # same content, other place: shared

    ids = ma.tokenizer("the cat sat on the mat").input_ids
    items = [PromptItem(f"k{i}", tuple(ids[: len(ids) - i])) for i in range(3)]
    path = tmp_path / "cache.jsonl"
    with ResultCache(path) as cache:
        ra = run_prompts(ma, items, cache=cache, progress=False)
        rb = run_prompts(mb, items, cache=cache, progress=False)
    fresh_b = run_prompts(mb, items, progress=False)
    assert rb == fresh_b  # B computed its own results instead of reading A's
    assert ra["k0"]["log_p_yes"] != rb["k0"]["log_p_yes"]
    assert len(ResultCache(path)) == 2 * len(items)

    # A model changed in place gets a new key too (the memoised digest follows the weights).
    before = model_fingerprint(mc)
    with torch.no_grad():
        next(mc.parameters()).mul_(2.0)
    assert model_fingerprint(mc) != before
