"""Guards against results that cannot mean anything (issue 24, items 3 and 4).

* huge gates: a gate beyond :func:`lineage_lens.gating.gate_limit` of the dtype is refused where
  every path passes (the TruthGate itself, when built and when applied), in the API and in the
  ``gate`` / ``eval`` commands (one line, exit 2); modest alphas still run;
* unusable logits: every evaluator refuses NaN, inf or all-equal logits with a
  :class:`~lineage_lens.errors.ModelOutputError` (:func:`lineage_lens.batching.check_logits`);
* context length: one rule (:func:`lineage_lens.batching.check_context`) in capture, attention to
  evidence, every evaluator and ``gate``: a prompt (plus the tokens to generate) longer than the
  model's ``n_ctx`` is a :class:`~lineage_lens.errors.DataError` naming its length and the limit.
"""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lineage_lens.batching import check_context, check_logits
from lineage_lens.data import HaluEvalRow
from lineage_lens.errors import ConfigError, DataError, ModelOutputError
from lineage_lens.gating import TruthGate, gate_limit
from lineage_lens.scores import TruthScores

SHORT = "Is the answer hallucinated ? Answer yes or no ."
ROWS = [
    HaluEvalRow(str(i), "Paris is the capital of France", "what is the capital of France ?", a, b)
    for i, (a, b) in enumerate([("Paris", "Rome"), ("France", "Italy")])
]
#: Scores of small spread: alpha=1e40 gives gates of ~4e36, finite in float32 (max 3.4e38).
NARROW = np.linspace(0.5, 0.501, 8).reshape(2, 4)
HUGE = (1e40, -1e40, 1e30)
LONG_WORDS = " ".join(["where is the cat"] * 6)  # 24 words (of the tiny vocabulary)


def narrow_scores() -> TruthScores:
    return TruthScores({"accuracy": NARROW}, model="tiny")


def run_main(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """``lineage-lens ARGV`` through the real entry point (errors: one line, exit 2)."""
    from lineage_lens.cli import main

    monkeypatch.setattr(sys, "argv", ["lineage-lens", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_line_error(code: int, err: str, *patterns: str) -> str:
    assert code == 2, err
    # the only other stderr output is transformers' progress bar while a model loads
    lines = [ln for ln in err.strip().splitlines() if "Loading weights" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for pattern in patterns:
        assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def short_dirs(tmp_path_factory):
    """Tiny models with a short context: a Llama with n_ctx=16, a LLaVA with n_ctx=32."""
    from lineage_lens.testing import make_tiny_model

    root = tmp_path_factory.mktemp("short_ctx")
    return {
        "llama": make_tiny_model(root / "llama", "llama", n_ctx=16),
        "llava": make_tiny_model(root / "llava", "llava", n_kv_heads=2, n_ctx=32),
    }


@pytest.fixture(scope="module")
def short_llama(short_dirs):
    from lineage_lens.models import load_model

    return load_model(short_dirs["llama"], device="cpu")


# --------------------------------------------------------------------------- huge gates
def test_gate_limit_is_finite_squared_residual_over_headroom() -> None:
    assert gate_limit(torch.float16) == pytest.approx(65504 / 1024)
    f32 = np.sqrt(np.finfo(np.float32).max / 2**14) / 1024
    assert gate_limit(torch.float32) == pytest.approx(f32) and 1e14 < f32 < 2e14
    assert gate_limit(torch.bfloat16) == gate_limit(torch.float32)


@pytest.mark.filterwarnings("ignore:.*gates are negative")
@pytest.mark.parametrize("alpha", HUGE)
@pytest.mark.parametrize("clamp_min", [0.0, None])
def test_huge_alpha_is_refused_naming_alpha_gate_limit_and_dtype(alpha, clamp_min) -> None:
    raw = 1.0 + alpha * (NARROW - NARROW.mean(axis=1, keepdims=True))
    assert np.isfinite(raw.astype(np.float32)).all()  # these gates fit float32
    with pytest.raises(ConfigError) as info:
        TruthGate(narrow_scores(), alpha=alpha, clamp_min=clamp_min)
    msg = str(info.value)
    assert f"alpha={alpha:g}" in msg
    largest = float(np.abs(raw if clamp_min is None else np.maximum(raw, 0)).max())
    assert f"magnitude {largest:.4g}" in msg
    assert f"limit {gate_limit(torch.float32):.4g}" in msg and "float32" in msg
    assert "smaller alpha" in msg and "all exactly 0" in msg


def test_sweep_gates_are_refused_too() -> None:
    from lineage_lens.sweep import GateSettings, ScoreSource, build_gates

    with pytest.raises(ConfigError, match=r"alpha=1e\+30 .*limit"):
        build_gates([ScoreSource("truth", narrow_scores())], [0.0, 2.0, 1e30], GateSettings())


def test_float16_model_has_a_far_smaller_limit(tiny_dirs) -> None:
    from lineage_lens.models import load_model

    half = load_model(tiny_dirs["llama"], device="cpu", dtype=torch.float16)
    scores = np.full((2, 4), 0.5)
    scores[:, 0] = 1.5  # center-normalised 0.75 for head 0
    gate = TruthGate(scores, alpha=200.0)  # gate 151: fine in float32, finite in float16
    ids = half.to_tokens("the cat")
    for placement in ("z", "reference", "fold"):
        with (
            pytest.raises(ConfigError, match=r"limit 63\.97 .*float16 .*run the model in float32"),
            gate.applied(half, placement=placement),
        ):
            half(ids)
    ok = TruthGate(scores, alpha=4.5)
    with ok.applied(half), torch.no_grad():
        assert torch.isfinite(half(ids)).all()


@pytest.mark.parametrize("alpha", [2.0, -0.5])
def test_modest_alpha_still_evaluates(tiny_llama, alpha) -> None:
    from lineage_lens.evals.halueval import evaluate_halueval

    gate = TruthGate(narrow_scores(), alpha=alpha)
    res = evaluate_halueval(tiny_llama, ROWS, seeds=(0,), instruction=SHORT, gate=gate)
    ex = res.examples
    assert np.isfinite(ex["log_p_yes"]).all() and (ex["log_p_yes"] != ex["log_p_no"]).all()


@pytest.fixture
def narrow_file(tmp_path):
    return narrow_scores().save(tmp_path / "narrow.npz")


@pytest.mark.parametrize("alpha", HUGE)
def test_cli_gate_and_eval_refuse_huge_alpha(
    tiny_dirs, narrow_file, tmp_path, capsys, monkeypatch, alpha
) -> None:
    pattern = rf"alpha={re.escape(f'{alpha:g}')} .*limit .*float32"
    model = str(tiny_dirs["llama"])
    gate = ["gate", "--scores", str(narrow_file), "--alpha", str(alpha), "--prompt", "the cat"]
    code, _, err = run_main([*gate, "--model", model, "--device", "cpu"], capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)
    argv = ["eval", "halueval", "--model", model, "--gate", str(narrow_file), "--alpha", str(alpha)]
    argv += ["--seeds", "0", "--limit", "1", "--out-dir", str(tmp_path / "r"), "--device", "cpu"]
    code, _, err = run_main(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)
    assert not (tmp_path / "r" / "results.csv").exists()


def test_cli_gate_modest_alpha_runs(tiny_dirs, narrow_file, capsys, monkeypatch) -> None:
    argv = ["gate", "--scores", str(narrow_file), "--alpha", "-0.5", "--prompt", "the cat"]
    argv += ["--model", str(tiny_dirs["llama"]), "--device", "cpu", "--max-new-tokens", "3"]
    code, out, err = run_main(argv, capsys, monkeypatch)
    assert code in (0, None), err
    assert "--- ungated ---" in out and "--- gated (z) ---" in out


# ------------------------------------------------------------------------ unusable logits
def test_check_logits_names_prompt_problem_and_alpha() -> None:
    good = torch.randn(3, 10)
    check_logits(good, ["a", "b", "c"])
    flat = good.clone()
    flat[1] = 0.0
    with pytest.raises(ModelOutputError, match=r"'b' are all equal .*is 0\).*1 of 3.*alpha=2"):
        check_logits(flat, ["a", "b", "c"], alpha=2.0)
    nan = good.clone()
    nan[2, 4] = float("nan")
    with pytest.raises(ModelOutputError, match=r"#2 are NaN or inf.*float32"):
        check_logits(nan)
    steps = torch.randn(2, 4, 10)  # [batch, step, vocab]: every step is checked
    steps[0, 3] = float("inf")
    with pytest.raises(ModelOutputError, match="'x' are NaN or inf"):
        check_logits(steps, ["x", "y"])


def _zero_final(x, hook):  # the final norm's output zeroed: every logit exactly 0
    return torch.zeros_like(x)


def _nan_final(x, hook):
    return x * float("nan")


@pytest.mark.parametrize(("fn", "what"), [(_zero_final, "all equal"), (_nan_final, "NaN or inf")])
@pytest.mark.parametrize("how", ["halueval", "no_prefix", "generate", "gated", "context"])
def test_evaluators_refuse_unusable_logits(tiny_llama, fn, what, how) -> None:
    from lineage_lens.evals._common import PromptItem, run_prompts
    from lineage_lens.evals.context import ContextFollowing
    from lineage_lens.evals.halueval import evaluate_halueval

    ids = tuple(tiny_llama.tokenizer("the cat sat on the mat").input_ids)
    items = [PromptItem("first", ids), PromptItem("second", ids[:-1])]
    with (
        tiny_llama.hooks(fwd_hooks=[("ln_final.hook_out", fn)]),
        pytest.raises(ModelOutputError, match=what) as info,
    ):
        if how == "halueval":  # the shared prefix's cache, then each prompt's own tokens
            evaluate_halueval(tiny_llama, ROWS, seeds=(0,), instruction=SHORT, progress=False)
        elif how == "no_prefix":
            run_prompts(tiny_llama, items, share_prefix=False, progress=False)
        elif how == "generate":
            run_prompts(tiny_llama, items, mode="generate", max_new_tokens=2, progress=False)
        elif how == "gated":
            gate = TruthGate(narrow_scores(), alpha=2.0)
            run_prompts(tiny_llama, items, gate=gate, share_prefix=False, progress=False)
        else:
            item = ("the cat sat on the mat", "where is the cat ?", "mat", "cat")
            ContextFollowing([item])(tiny_llama, None)
    msg = str(info.value)
    if how in ("no_prefix", "generate", "gated"):
        assert re.search(r"prompt '(first|second)'", msg), msg
    assert ("alpha=2" in msg) == (how == "gated")
    assert "smaller alpha" in msg if how == "gated" else "float32" in msg


# ---------------------------------------------------------------------- context length
def test_check_context_rule() -> None:
    model = SimpleNamespace(cfg=SimpleNamespace(n_ctx=8), tokenizer=None)
    check_context(model, [[1] * 8, [2] * 3])
    with pytest.raises(DataError, match=r"prompt 'b' has 9 tokens, .*n_ctx=8 \(1 of 2 prompts"):
        check_context(model, [[1] * 3, [2] * 9], ["a", "b"])
    with pytest.raises(DataError, match=r"#0 has 6 prompt tokens \+ 4 to generate = 10 tokens"):
        check_context(model, [[1] * 6], new_tokens=4)
    check_context(SimpleNamespace(cfg=SimpleNamespace(n_ctx=None)), [[1] * 10**4], new_tokens=9)


@pytest.mark.model  # builds short-context models (short_dirs)
def test_cli_gate_prompt_longer_than_context(short_dirs, narrow_file, capsys, monkeypatch):
    base = ["gate", "--scores", str(narrow_file), "--alpha", "2", "--model"]
    base += [str(short_dirs["llama"]), "--device", "cpu"]
    code, _, err = run_main([*base, "--prompt", LONG_WORDS], capsys, monkeypatch)
    assert_one_line_error(
        code, err, r"'--prompt' \('where is the cat where", r"has \d+ prompt tokens", "n_ctx=16"
    )
    # 12 prompt tokens fit alone, not with the 32 tokens to generate
    prompt = "where is the cat where is the cat where is the"
    code, _, err = run_main([*base, "--prompt", prompt], capsys, monkeypatch)
    assert_one_line_error(code, err, r"12 prompt tokens \+ 32 to generate = 44 tokens", "n_ctx=16")
    code, out, err = run_main(
        [*base, "--prompt", prompt, "--max-new-tokens", "4"], capsys, monkeypatch
    )
    assert code in (0, None) and "--- gated (z) ---" in out, err


@pytest.mark.model  # builds short-context models (short_dirs)
def test_halueval_example_longer_than_context(
    short_llama, short_dirs, tmp_path, capsys, monkeypatch
):
    from lineage_lens.evals.halueval import evaluate_halueval

    with pytest.raises(DataError, match=r"prompt '[01]:[hr]' .*has \d+ tokens, .*n_ctx=16"):
        evaluate_halueval(short_llama, ROWS, seeds=(0,), instruction=SHORT, progress=False)
    argv = ["eval", "halueval", "--model", str(short_dirs["llama"]), "--seeds", "0", "--limit"]
    argv += ["1", "--out-dir", str(tmp_path / "r"), "--device", "cpu"]
    code, _, err = run_main(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, r"has \d{3} tokens, more than the model's context n_ctx=16")
    assert not (tmp_path / "r" / "results.csv").exists()


@pytest.mark.model  # builds short-context models (short_dirs)
def test_capture_evidence_and_context_following_share_the_rule(short_llama) -> None:
    from lineage_lens.attention import evidence_attention
    from lineage_lens.capture import collect_head_activations
    from lineage_lens.data import ProbeExample
    from lineage_lens.evals.context import followed

    examples = [ProbeExample(LONG_WORDS, "where ?", "mat", 1, "ex-a")]
    with pytest.raises(
        DataError, match=r"'example 0 \(ex-a\)' .*more than the model's context n_ctx=16"
    ):
        collect_head_activations(short_llama, examples, progress=False)
    with pytest.raises(DataError, match=r"prompt #0 .*has \d+ tokens, .*n_ctx=16"):
        evidence_attention(short_llama, [LONG_WORDS], [[(0, 7)]], progress=False)
    with pytest.raises(DataError, match=r"n_ctx=16"):
        followed(short_llama, [(LONG_WORDS, "where is the cat ?", "mat", "cat")])


@pytest.mark.model  # builds short-context models (short_dirs)
def test_image_prompts_count_image_tokens_and_new_tokens(short_dirs, tmp_path) -> None:
    from PIL import Image

    from lineage_lens.evals.chair import CAPTION_PROMPT, generate_captions
    from lineage_lens.images import LLAVA_TEMPLATE, encode_image_prompt, image_inputs
    from lineage_lens.models import load_model
    from lineage_lens.testing import IMAGE_TOKEN

    model = load_model(short_dirs["llava"], device="cpu")
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(tmp_path / "im0.png")
    img_in = image_inputs(model)
    ids = encode_image_prompt(
        model.tokenizer, CAPTION_PROMPT, img_in, LLAVA_TEMPLATE, image=tmp_path / "im0.png"
    )
    n_image = ids.count(model.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    assert n_image == 4 and len(ids) + 2 <= 32 < len(ids) + 64  # the image tokens are counted
    pattern = rf"'im0' .*has {len(ids)} prompt tokens \+ 64 to generate = {len(ids) + 64} tokens"
    with pytest.raises(DataError, match=pattern + r".*n_ctx=32"):
        generate_captions(model, tmp_path, ["im0"], max_new_tokens=64, progress=False)
    captions = generate_captions(model, tmp_path, ["im0"], max_new_tokens=2, progress=False)
    assert len(captions) == 1
