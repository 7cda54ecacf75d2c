"""KV-cache conformance: every cached fast path equals the plain computation, on every fixture
architecture, ungated and gated; and the guard of ``lineage_lens.kvcache`` keeps results right
when the bridge ignores its cache (as TransformerLens 4.3.0 does under transformers 5.24.0).

A new architecture is covered by adding it to ``ARCHS``.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from lineage_lens import kvcache
from lineage_lens.batching import MIN_SHARED_PREFIX
from lineage_lens.capture import collect_head_activations, encode_examples, prefix_keys
from lineage_lens.data import ProbeExample
from lineage_lens.evals import PromptItem, run_prompts
from lineage_lens.gating import TruthGate
from lineage_lens.kvcache import KVCacheWarning, check_kv_cache, install_cache_shim, kv_cache_ok
from lineage_lens.models import attn_hook_name, head_geometry, load_model
from lineage_lens.scores import TruthScores
from lineage_lens.testing import IMAGE_TOKEN, TINY_IMAGE_TOKENS, tiny_pixel_values

#: Fixture architectures (keys of the ``tiny_dirs`` fixture). Extend this list for a new one.
ARCHS = ["llama", "gqa", "qwen2", "mistral", "llava"]

WORDS = [
    "the",
    "cat",
    "is",
    "red",
    "and",
    "the",
    "dog",
    "is",
    "on",
    "the",
    "tree",
    "in",
    "the",
    "house",
    "of",
    "a",
    "big",
    "car",
]
PROMPT = "Context : the cat is on the tree . Question : where is the cat ? Answer :"


@pytest.fixture(scope="module", params=ARCHS)
def arch_model(request, tiny_dirs):
    return request.param, load_model(tiny_dirs[request.param], device="cpu")


def _gate(model, seed: int = 5) -> TruthGate:
    rng = np.random.default_rng(seed)
    shape = head_geometry(model).shape
    return TruthGate(TruthScores({"accuracy": rng.uniform(0.45, 0.95, size=shape)}), alpha=4.5)


def paired_examples(n_rows: int = 4) -> list[ProbeExample]:
    """HaluEval-shaped pairs sharing contexts long enough to be run once, plus one loner."""
    out = []
    for r in range(n_rows):
        ctx = " ".join((WORDS * 3)[r : r + 14 + 3 * r])
        for label, ans in ((1, WORDS[r % 5]), (0, " ".join(WORDS[r % 3 : r % 3 + 2 + r % 2]))):
            out.append(ProbeExample(ctx, "what is the cat ?", ans, label, str(r)))
    out.append(ProbeExample("a cat", "what is it ?", "red", 1, "short"))
    return out


def _run_with_cache_reference(model, examples) -> np.ndarray:
    """The plain computation: one ``run_with_cache`` per example, ``hook_z`` at its answer token."""
    geo = head_geometry(model)
    rows = []
    for enc in encode_examples(model.tokenizer, examples):
        _, cache = model.run_with_cache(torch.tensor([enc.input_ids]))
        rows.append(
            torch.stack(
                [cache[attn_hook_name(layer)][0, enc.position] for layer in range(geo.n_layers)]
            )
            .float()
            .numpy()
        )
    return np.stack(rows)


def _generate_inputs(model, arch: str) -> tuple[torch.Tensor, dict]:
    tok = model.tokenizer
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    if arch == "llava":
        ids = [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * TINY_IMAGE_TOKENS + ids
        return torch.tensor([[tok.bos_token_id, *ids]]), {"pixel_values": tiny_pixel_values(1)}
    return torch.tensor([[tok.bos_token_id, *ids]]), {}


def greedy_full_forward(model, tokens: torch.Tensor, kw: dict, n: int) -> torch.Tensor:
    for _ in range(n):
        logits = model(tokens, **kw)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return tokens


def prompt_items(model) -> list[PromptItem]:
    rng = np.random.default_rng(0)
    vocab = model.cfg.d_vocab
    special = set(model.tokenizer.all_special_ids)
    ordinary = [t for t in range(5, vocab) if t not in special]
    prefix = tuple(int(t) for t in rng.choice(ordinary, 24))
    return [
        PromptItem(str(i), prefix + tuple(int(t) for t in rng.choice(ordinary, n)))
        for i, n in enumerate((1, 6, 3, 9, 2))
    ]


# ------------------------------------------------------------------------------ conformance
def test_cache_check_passes(arch_model):
    _, model = arch_model
    verdict = check_kv_cache(model)
    assert verdict.ok, verdict
    assert kv_cache_ok(model)
    assert "transformers" in repr(verdict) and len(repr(verdict)) < 300


@pytest.mark.parametrize("gated", [False, True])
def test_shared_prefix_capture_equals_run_with_cache(arch_model, gated, monkeypatch):
    from lineage_lens import capture

    _, model = arch_model
    calls = []
    real = capture.run_on_prefix_cache
    monkeypatch.setattr(
        capture, "run_on_prefix_cache", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    examples = paired_examples()
    keys = prefix_keys(encode_examples(model.tokenizer, examples))
    assert sum(len(k) >= MIN_SHARED_PREFIX for k in keys) == 8 and keys[-1] == ()
    gate = _gate(model) if gated else None
    with gate.applied(model) if gate else _nullcontext():
        reference = _run_with_cache_reference(model, examples)
        full = collect_head_activations(
            model, examples, batch_size=4, share_prefix=False, dtype=torch.float32, progress=False
        )
        for batch_size in (3, 4, 16):  # groups split across batches, packed, all in one batch
            shared = collect_head_activations(
                model, examples, batch_size=batch_size, dtype=torch.float32, progress=False
            )
            np.testing.assert_allclose(shared.acts, reference, atol=1e-4)
            assert shared.labels.tolist() == [ex.label for ex in examples]
    np.testing.assert_allclose(full.acts, reference, atol=1e-4)
    assert len(calls) >= 3  # the shared path ran for every batch size


@pytest.mark.parametrize("placement", [None, "z", "fold"])
def test_cached_generate_equals_greedy_full_forwards(arch_model, placement):
    arch, model = arch_model
    tokens, kw = _generate_inputs(model, arch)
    gate = _gate(model) if placement else None
    with gate.applied(model, placement) if gate else _nullcontext(), torch.no_grad():
        generated = model.generate(
            tokens,
            max_new_tokens=6,
            do_sample=False,
            verbose=False,
            return_type="tokens",
            use_past_kv_cache=True,
            stop_at_eos=False,
            **kw,
        )
        reference = greedy_full_forward(model, tokens, kw, 6)
    assert torch.equal(generated.cpu(), reference)


@pytest.mark.parametrize("gated", [False, True])
def test_shared_prefix_logprobs_equal_full_prompts(arch_model, gated, caplog):
    _, model = arch_model
    items = prompt_items(model)
    gate = _gate(model, seed=3) if gated else None
    with caplog.at_level(logging.INFO, logger="lineage_lens.evals._common"):
        shared = run_prompts(model, items, batch_size=2, gate=gate, progress=False)
    assert "24 shared prefix tokens" in caplog.text
    full = run_prompts(model, items, batch_size=2, gate=gate, progress=False, share_prefix=False)
    for key, rec in full.items():
        assert shared[key]["log_p_yes"] == pytest.approx(rec["log_p_yes"], abs=1e-5)
        assert shared[key]["log_p_no"] == pytest.approx(rec["log_p_no"], abs=1e-5)
        assert shared[key]["answer"] == rec["answer"]


# ------------------------------------------------------------------------------ the shim
def test_shim_hands_a_cache_passed_as_cache_to_the_bridge(tiny_gqa):
    """transformers >= 5.24 calls attention with ``cache=``; the shim must fill that cache."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge
    from transformers import DynamicCache

    assert install_cache_shim() and install_cache_shim()  # idempotent
    attn = tiny_gqa.blocks[0].attn
    k = torch.randn(1, 2, 3, 8)
    v = torch.randn(1, 2, 3, 8)
    cache = DynamicCache()
    out_k, _ = AttentionBridge._update_kv_cache(attn, k, v, cache=cache)
    assert cache.get_seq_length() == 3 and torch.equal(out_k, k)
    out_k, _ = AttentionBridge._update_kv_cache(attn, k, v, cache=cache)
    assert cache.get_seq_length() == 6 and out_k.shape[2] == 6  # a second step sees the first
    # An explicit past_key_values still wins, and no cache means no change.
    other = DynamicCache()
    AttentionBridge._update_kv_cache(attn, k, v, past_key_values=other, cache=cache)
    assert other.get_seq_length() == 3 and cache.get_seq_length() == 6
    assert AttentionBridge._update_kv_cache(attn, k, v)[0] is k


# ------------------------------------------------------------------------------ the guard
@pytest.fixture
def broken_cache(monkeypatch):
    """Simulate the transformers 5.24 / TransformerLens 4.3.0 bug on any version: every
    attention bridge ignores the cache it is given. Use it with a freshly loaded model: verdicts
    are remembered per model object, so a new one has none yet."""
    from transformer_lens.model_bridge.generalized_components.attention import AttentionBridge

    monkeypatch.setattr(AttentionBridge, "_update_kv_cache", lambda self, k, v, **kw: (k, v))
    monkeypatch.setattr(kvcache, "install_cache_shim", lambda: True)  # no repair
    return AttentionBridge


@pytest.mark.parametrize("arch", ["llama", "llava"])
def test_guard_falls_back_when_the_cache_is_ignored(arch, tiny_dirs, broken_cache, caplog):
    model = load_model(tiny_dirs[arch], device="cpu")
    examples = paired_examples()
    # The bug is real: the raw cached path is wrong.
    assert not check_kv_cache(model).ok
    with pytest.warns(KVCacheWarning, match="transformers") as record:
        acts = collect_head_activations(model, examples, dtype=torch.float32, progress=False)
    assert sum(issubclass(w.category, KVCacheWarning) for w in record) == 1
    np.testing.assert_allclose(acts.acts, _run_with_cache_reference(model, examples), atol=1e-4)

    with warnings.catch_warnings():
        warnings.simplefilter("error", KVCacheWarning)  # warned once per model, not again
        items = prompt_items(model)
        with caplog.at_level(logging.INFO, logger="lineage_lens.evals._common"):
            guarded = run_prompts(model, items, batch_size=2, progress=False)
        assert "shared prefix tokens" not in caplog.text
        full = run_prompts(model, items, batch_size=2, progress=False, share_prefix=False)
        for key, rec in full.items():
            assert guarded[key]["log_p_yes"] == pytest.approx(rec["log_p_yes"], abs=1e-5)

        # Generation inside the evaluators: equal to greedy full forwards despite the bug.
        gen = run_prompts(
            model, items[:2], batch_size=1, mode="generate", max_new_tokens=4, progress=False
        )
    tok = model.tokenizer
    for it in items[:2]:
        ref = greedy_full_forward(model, torch.tensor([it.input_ids]), {}, 4)
        row = ref[0, len(it.input_ids) :].tolist()
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        assert gen[it.key]["text"] == tok.decode(row, skip_special_tokens=True)


def _nullcontext():
    import contextlib

    return contextlib.nullcontext()
