"""Exactness tests of TruthGate on the tiny fp32 fixtures (placements z, fold, reference)."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from lineage_lens.errors import ConfigError, DataError, LineageLensError, ShapeMismatchError
from lineage_lens.gating import (
    FoldHandle,
    TruthGate,
    control_scores,
    normalize_scores,
)
from lineage_lens.models import head_geometry, is_language_hook
from lineage_lens.scores import TruthScores
from lineage_lens.testing import IMAGE_TOKEN, TINY_IMAGE_TOKENS, tiny_pixel_values

matplotlib.use("Agg")

PROMPT = "Context : the cat is on the tree . Question : where is the cat ? Answer :"


def _scores(shape: tuple[int, int], seed: int = 0) -> TruthScores:
    rng = np.random.default_rng(seed)
    return TruthScores({"accuracy": rng.uniform(0.45, 0.95, size=shape)}, model="ancestor")


def _inputs(model, image: bool = False) -> dict:
    """Token ids (with the LLaVA image tokens when ``image``) and the forward/generate kwargs."""
    tok = model.tokenizer
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    if image:
        ids = [tok.convert_tokens_to_ids(IMAGE_TOKEN)] * TINY_IMAGE_TOKENS + ids
        return {
            "tokens": torch.tensor([[tok.bos_token_id, *ids]]),
            "kw": {"pixel_values": tiny_pixel_values(1)},
        }
    return {"tokens": torch.tensor([[tok.bos_token_id, *ids]]), "kw": {}}


def _o_weights(model) -> list[torch.Tensor]:
    return [block.attn.o.original_component.weight.detach().clone() for block in model.blocks]


@pytest.fixture(params=["tiny_llama", "tiny_gqa", "tiny_llava"])
def any_model(request):
    model = request.getfixturevalue(request.param)
    return model, _inputs(model, image=request.param == "tiny_llava")


# ------------------------------------------------------------------------- identities
@pytest.mark.parametrize("placement", ["z", "fold", "reference"])
def test_alpha_zero_and_uniform_center_are_identity(tiny_llama, placement):
    inp = _inputs(tiny_llama)
    scores = _scores(head_geometry(tiny_llama).shape)
    base = tiny_llama(inp["tokens"])
    for gate in (
        TruthGate(scores, alpha=0.0, placement=placement),
        TruthGate.uniform_control(scores, alpha=4.5, norm="center", placement=placement),
        TruthGate(np.full((2, 4), 0.7), alpha=4.5, norm="center", placement=placement),
    ):
        assert torch.equal(gate.gates, torch.ones(2, 4))
        with gate.applied(tiny_llama):
            assert torch.equal(tiny_llama(inp["tokens"]), base)


def test_unit_gates_on_hooked_layers_are_exact(tiny_llama):
    """A z hook multiplying by exactly 1 changes nothing (the hook path itself is exact)."""
    inp = _inputs(tiny_llama)
    gate = TruthGate(_scores((2, 4)), alpha=2.0)
    base = tiny_llama(inp["tokens"])
    hooks = gate.hooks(placement="z")  # the hooks of a real gate (every layer gated) ...
    assert [name for name, _ in hooks] == [f"blocks.{layer}.attn.hook_z" for layer in range(2)]
    gate.gates.fill_(1.0)  # ... multiplying by gates of exactly 1 (they read the gates in place)
    assert torch.equal(tiny_llama.run_with_hooks(inp["tokens"], fwd_hooks=hooks), base)


# ------------------------------------------------------------------------- z vs fold
def test_z_equals_fold_and_restore_is_bit_exact(any_model):
    model, inp = any_model
    gate = TruthGate(_scores(head_geometry(model).shape, seed=3), alpha=4.5)
    before = _o_weights(model)
    w_o_before = model.W_O.detach().clone()
    base = model(inp["tokens"], **inp["kw"])
    with gate.applied(model, "z"):
        z_logits = model(inp["tokens"], **inp["kw"])
    handle = gate.fold(model)
    assert isinstance(handle, FoldHandle) and handle.active
    folded_logits = model(inp["tokens"], **inp["kw"])
    # model.W_O reflects the fold: head h's rows scaled by g[l, h]
    expected_w_o = w_o_before * gate.gates[:, :, None, None]
    torch.testing.assert_close(model.W_O.detach(), expected_w_o, rtol=0, atol=1e-7)
    handle.restore()
    handle.restore()  # idempotent
    assert not handle.active
    assert all(torch.equal(a, b) for a, b in zip(_o_weights(model), before, strict=True))
    assert torch.equal(model.W_O.detach(), w_o_before)
    assert not torch.allclose(z_logits, base, atol=1e-4)
    torch.testing.assert_close(z_logits, folded_logits, rtol=0, atol=1e-5)
    assert torch.equal(model(inp["tokens"], **inp["kw"]), base)


def test_fold_restores_after_exception(tiny_llama):
    before = _o_weights(tiny_llama)
    gate = TruthGate(_scores((2, 4)), alpha=3.0, placement="fold")
    with pytest.raises(RuntimeError, match="boom"), gate.applied(tiny_llama):
        assert not torch.equal(_o_weights(tiny_llama)[0], before[0])
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(_o_weights(tiny_llama), before, strict=True))


# ------------------------------------------------------------------ per-head semantics
def _names(layer: int) -> list[str]:
    return [
        f"blocks.{layer}.attn.hook_z",
        f"blocks.{layer}.attn.o.hook_out",
        "blocks.0.attn.o.hook_out",
    ]


def _head_contributions(model, tokens, layer):
    """Ungated z of ``layer``, its per-head contributions z_h @ W_O[l, h], and attn outputs."""
    _, cache = model.run_with_cache(tokens, names_filter=_names(layer))
    z = cache[f"blocks.{layer}.attn.hook_z"]
    contrib = torch.einsum("bphd,hdm->bphm", z, model.W_O[layer].detach())
    return cache, contrib


@pytest.mark.model  # the fixture is looked up by name
@pytest.mark.parametrize("model_name", ["tiny_llama", "tiny_gqa"])
def test_gating_one_head_scales_only_its_contribution(request, model_name):
    model = request.getfixturevalue(model_name)
    tokens = _inputs(model)["tokens"]
    layer, head, g = 1, 2, 2.5
    raw = np.zeros((2, 4))
    raw[layer, head] = 1.0
    gate = TruthGate(raw, alpha=g - 1.0, norm="raw")
    assert gate.gates[layer, head] == g and (gate.gates != 1).sum() == 1
    cache, contrib = _head_contributions(model, tokens, layer)
    out_name = f"blocks.{layer}.attn.o.hook_out"
    with gate.applied(model):
        _, gated = model.run_with_cache(tokens, names_filter=_names(layer))
    # per-head: head h's contribution times g, every other head unchanged
    bias = cache[out_name] - contrib.sum(dim=2)
    scale = torch.ones(4)
    scale[head] = g
    expected = (contrib * scale[:, None]).sum(dim=2) + bias
    torch.testing.assert_close(gated[out_name], expected, rtol=0, atol=1e-5)
    diff = gated[out_name] - cache[out_name]
    torch.testing.assert_close(diff, (g - 1.0) * contrib[:, :, head], rtol=0, atol=1e-5)
    # gated run's own per-head results: head h is g times the ungated one, the others equal
    gated_contrib = torch.einsum(
        "bphd,hdm->bphm", gated[f"blocks.{layer}.attn.hook_z"], model.W_O[layer].detach()
    )
    torch.testing.assert_close(
        gated_contrib[:, :, head], g * contrib[:, :, head], atol=1e-6, rtol=0
    )
    others = [h for h in range(4) if h != head]
    assert torch.equal(gated_contrib[:, :, others], contrib[:, :, others])
    # earlier layers untouched
    assert torch.equal(gated["blocks.0.attn.o.hook_out"], cache["blocks.0.attn.o.hook_out"])


def test_reference_scales_chunks_after_w_o(tiny_llama):
    """The published placement scales d_head-wide slices of the O projection's output."""
    tokens = _inputs(tiny_llama)["tokens"]
    layer, head, g = 1, 1, 3.0
    raw = np.zeros((2, 4))
    raw[layer, head] = 1.0
    gate = TruthGate(raw, alpha=g - 1.0, norm="raw", placement="reference")
    cache, contrib = _head_contributions(tiny_llama, tokens, layer)
    name = f"blocks.{layer}.attn.o.hook_out"
    with gate.applied(tiny_llama):
        _, gated = tiny_llama.run_with_cache(tokens, names_filter=name)
    d_head = head_geometry(tiny_llama).d_head
    expected = cache[name].clone()
    expected[..., head * d_head : (head + 1) * d_head] *= g
    torch.testing.assert_close(gated[name], expected, rtol=0, atol=1e-6)
    # which is not the per-head gating
    per_head = cache[name] + (g - 1.0) * contrib[:, :, head]
    assert not torch.allclose(gated[name], per_head, atol=1e-4)


# ------------------------------------------------------------------------ composition
def test_hook_order_composition(tiny_llama):
    tokens = _inputs(tiny_llama)["tokens"]
    gate = TruthGate(_scores((2, 4), seed=1), alpha=4.5, layers=[0])
    seen: dict[str, torch.Tensor] = {}

    def record(key):
        def fn(z, hook):
            seen[key] = z.detach().clone()

        return fn

    name = "blocks.0.attn.hook_z"
    _, cache = tiny_llama.run_with_cache(tokens, names_filter=name)
    ungated = cache[name]
    gated = ungated * gate.gates[0][:, None]
    tiny_llama.run_with_hooks(tokens, fwd_hooks=[*gate.hooks(tiny_llama), (name, record("after"))])
    tiny_llama.run_with_hooks(tokens, fwd_hooks=[(name, record("before")), *gate.hooks()])
    with gate.applied(tiny_llama):
        tiny_llama.run_with_hooks(tokens, fwd_hooks=[(name, record("inside"))])
        # run_with_hooks inside the context removes only its own hooks: the gate stays
        _, inside_cache = tiny_llama.run_with_cache(tokens, names_filter=name)
    assert torch.equal(seen["before"], ungated)
    torch.testing.assert_close(seen["after"], gated, rtol=0, atol=0)
    torch.testing.assert_close(seen["inside"], gated, rtol=0, atol=0)
    torch.testing.assert_close(inside_cache[name], gated, rtol=0, atol=0)
    _, after_cache = tiny_llama.run_with_cache(tokens, names_filter=name)
    assert torch.equal(after_cache[name], ungated)  # no hook left behind


def test_layers_subset_and_hook_names(tiny_llama):
    gate = TruthGate(_scores((2, 4)), alpha=4.5, layers=[-1])
    assert gate.layers == [1] and gate.active_layers == [1]
    assert torch.equal(gate.gates[0], torch.ones(4))
    assert [name for name, _ in gate.hooks(tiny_llama)] == ["blocks.1.attn.hook_z"]
    assert gate.hook_names("reference") == ["blocks.1.attn.o.hook_out"]
    assert gate.hook_names("fold") == []


# ----------------------------------------------------------------------------- transfer
def test_transfer_validates_shapes(tiny_llama):
    gate = TruthGate(_scores((3, 4)), alpha=1.0)
    for call in (
        lambda: gate.hooks(tiny_llama),
        lambda: gate.fold(tiny_llama),
        lambda: gate.applied(tiny_llama).__enter__(),
    ):
        with pytest.raises(ShapeMismatchError, match=r"\(2, 4\)") as info:
            call()
        assert "(3, 4)" in str(info.value) and "ancestor" in str(info.value)


def test_ancestor_gate_on_llava_gates_language_blocks_only(tiny_llama, tiny_llava):
    """Scores of the (same-geometry) text model gate the LLaVA language model, not its vision."""
    scores = _scores(head_geometry(tiny_llama).shape, seed=7)
    gate = TruthGate(scores, alpha=4.5)
    inp = _inputs(tiny_llava, image=True)
    names = gate.hook_names()
    assert names and all(is_language_hook(n) for n in names)
    vision = [n for n in tiny_llava.hook_dict if n.startswith("vision_encoder.")]
    assert vision
    vis_name = vision[-1]
    before = _o_weights(tiny_llava)
    _, base = tiny_llava.run_with_cache(inp["tokens"], names_filter=vis_name, **inp["kw"])
    for placement in ("z", "fold"):
        with gate.applied(tiny_llava, placement):
            logits, cache = tiny_llava.run_with_cache(
                inp["tokens"], names_filter=vis_name, **inp["kw"]
            )
        assert torch.equal(cache[vis_name], base[vis_name])
        assert torch.isfinite(logits).all()
    assert all(torch.equal(a, b) for a, b in zip(_o_weights(tiny_llava), before, strict=True))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"scores": np.array([[0.5, np.nan], [0.5, 0.6]])},
            DataError,
            "non-finite.*layer 0, head 1",
        ),
        ({"scores": np.array([[0.5, 0.6], [np.inf, 0.6]])}, DataError, "NaN or inf"),
        ({"alpha": float("nan")}, ConfigError, "alpha must be finite"),
        ({"alpha": math.inf}, ConfigError, "alpha must be finite"),
        ({"alpha": "big"}, ConfigError, "alpha must be a real number"),
        ({"norm": "zscore"}, ConfigError, "unknown norm 'zscore'.*center, minmax, raw"),
        ({"placement": "resid"}, ConfigError, "unknown placement"),
        ({"scores": np.zeros(4)}, ShapeMismatchError, r"\(n_layers, n_heads\)"),
        ({"layers": [5]}, ConfigError, "layer 5 is out of range"),
        ({"clamp_min": float("nan")}, ConfigError, "clamp_min must be finite"),
        ({"metric": "f2"}, ConfigError, "metric 'f2'"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = {"scores": _scores((2, 2)), "alpha": 1.0} | kwargs
    scores = args.pop("scores")
    with pytest.raises(error, match=match) as info:
        TruthGate(scores, **args)
    assert isinstance(info.value, LineageLensError)


def test_fold_has_no_hooks():
    with pytest.raises(ConfigError, match="no hooks"):
        TruthGate(_scores((2, 4)), alpha=1.0).hooks(placement="fold")


def test_negative_gates_warn_or_clamp():
    scores = _scores((4, 8), seed=2)
    with pytest.warns(UserWarning, match=r"(\d+) of 32 gates are negative") as rec:
        loose = TruthGate(scores, alpha=12.0, clamp_min=None)
    n_neg = int((loose.gates < 0).sum())
    assert n_neg > 0 and f"{n_neg} of 32" in str(rec[0].message)
    clamped = TruthGate(scores, alpha=12.0)
    assert clamped.n_clamped == n_neg and float(clamped.gates.min()) == 0.0
    np.testing.assert_array_equal(clamped.raw_gates, loose.raw_gates)


# ------------------------------------------------------------------- norms and controls
def test_normalizations():
    s = np.array([[0.5, 0.7, 0.9], [0.6, 0.6, 0.6]])
    np.testing.assert_allclose(normalize_scores(s, "center")[0], [-0.2, 0.0, 0.2], atol=1e-12)
    np.testing.assert_allclose(normalize_scores(s, "minmax")[0], [0.0, 0.5, 1.0], atol=1e-7)
    np.testing.assert_array_equal(normalize_scores(s, "raw"), s)
    for norm in ("center", "minmax"):
        assert np.all(normalize_scores(s, norm)[1] == 0.0)  # constant layer: exactly g = 1
    gate = TruthGate(s, alpha=2.0, norm="center")
    np.testing.assert_allclose(gate.gates[0].numpy(), [0.6, 1.0, 1.4], atol=1e-6)


def test_controls():
    scores = _scores((3, 5), seed=4)
    s = scores.accuracy
    rnd = control_scores(scores, "random", seed=1).accuracy
    assert np.array_equal(np.sort(rnd.ravel()), np.sort(s.ravel())) and not np.array_equal(rnd, s)
    assert np.array_equal(rnd, control_scores(scores, "random", seed=1).accuracy)
    assert not np.array_equal(rnd, control_scores(scores, "random", seed=2).accuracy)
    inv = control_scores(scores, "inverse").accuracy
    np.testing.assert_allclose(
        normalize_scores(inv, "center"), -normalize_scores(s, "center"), atol=1e-12
    )
    gate = TruthGate(scores, alpha=4.5, layers=[0, 2])
    assert torch.equal(gate.control("uniform").gates, torch.ones(3, 5))
    ctrl = gate.control("random", seed=3)
    assert ctrl.params() == gate.params() and ctrl.scores.meta["control"] == "random"
    assert torch.equal(ctrl.gates[1], torch.ones(5))
    assert torch.equal(
        TruthGate.random_control(scores, seed=3, alpha=4.5, layers=[0, 2]).gates, ctrl.gates
    )
    np.testing.assert_allclose(
        TruthGate.inverse_control(scores, alpha=1.0, clamp_min=None).gates.numpy() - 1.0,
        -(TruthGate(scores, alpha=1.0, clamp_min=None).gates.numpy() - 1.0),
        atol=1e-6,
    )
    with pytest.raises(ConfigError, match="unknown control kind"):
        control_scores(scores, "shuffle")  # type: ignore[arg-type]


def test_frame_heatmap_repr():
    gate = TruthGate(_scores((2, 3)), alpha=9.0, layers=[1])
    frame = gate.to_frame()
    assert list(frame.columns) == [
        "layer",
        "head",
        "score",
        "normalized",
        "raw_gate",
        "gate",
        "gated",
        "clamped",
    ]
    assert len(frame) == 6 and frame["gated"].tolist() == [False] * 3 + [True] * 3
    np.testing.assert_allclose(frame["gate"], gate.gates.numpy().ravel())
    ax = gate.heatmap()
    assert ax.get_xlabel() == "head"
    html = gate._repr_html_()
    assert "alpha" in html and "9" in html and "clamped" in html
    assert "alpha=9" in repr(gate) and "alpha=9" in gate.summary()


# -------------------------------------------------------------------------------- CLI
def test_cli_gate(tiny_dirs, tmp_path):
    from lineage_lens.cli import app

    path = _scores((2, 4)).save(tmp_path / "scores.npz")
    runner = CliRunner()
    args = ["gate", "--scores", str(path), "--alpha", "4.5", "--model", str(tiny_dirs["llama"])]
    result = runner.invoke(
        app, [*args, "--prompt", "the cat is", "--max-new-tokens", "3", "--layers", "0-1"]
    )
    assert result.exit_code == 0, result.output
    assert "--- ungated ---" in result.output and "--- gated (z) ---" in result.output
    assert "alpha=4.5" in result.output
    bad = _scores((3, 4)).save(tmp_path / "bad.npz")
    args[2] = str(bad)
    result = runner.invoke(app, [*args, "--prompt", "the cat"])
    assert isinstance(result.exception, ShapeMismatchError)
    result = runner.invoke(app, [*args, "--prompt", "x", "--layers", "1-x"])
    assert isinstance(result.exception, ConfigError)


@pytest.mark.slow
def test_smollm2_z_equals_fold():
    from lineage_lens.models import load_model

    model = load_model("smollm2-135m-instruct", device="cpu")
    gate = TruthGate(_scores(head_geometry(model).shape), alpha=4.5)
    tokens = model.to_tokens("The capital of France is")
    with gate.applied(model, "z"):
        z_logits = model(tokens)
    with gate.applied(model, "fold"):
        fold_logits = model(tokens)
    torch.testing.assert_close(z_logits, fold_logits, rtol=0, atol=1e-4)
