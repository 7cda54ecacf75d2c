"""HaluEval evaluation: metrics, parsing, probe/eval separation, both scoring modes, gating."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lineage_lens.data import HaluEvalRow, load_halueval_qa, split_probe_eval
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals import EvalResult, ResultCache, parse_yes_no, yes_no_token_ids
from lineage_lens.evals.halueval import (
    HaluEvalJudgement,
    eval_rows,
    evaluate_halueval,
    shown_answers,
)
from lineage_lens.gating import TruthGate
from lineage_lens.stats import binary_metrics

SHORT = "Is the answer hallucinated ? Answer yes or no ."
ROWS = [
    HaluEvalRow(str(i), "Paris is the capital of France", "what is the capital of France ?", a, b)
    for i, (a, b) in enumerate([("Paris", "Rome"), ("France", "Italy"), ("the city", "a river")])
]


def test_binary_metrics_hand_computed() -> None:
    truth = [True, True, False, False, True]
    pred = [True, False, False, True, None]
    m = binary_metrics(truth, pred)
    assert m["n"] == 5 and m["n_unparsed"] == 1
    assert m["accuracy"] == 0.5 and m["accuracy_all"] == 2 / 5
    assert m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == 0.5
    assert m["yes_ratio"] == 0.5
    none = binary_metrics([True, False], [None, None])
    assert none["n_unparsed"] == 2 and math.isnan(none["accuracy"]) and none["accuracy_all"] == 0


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Yes", "yes"),
        (" no.", "no"),
        ("No, it is not", "no"),
        ("YES!", "yes"),
        ("Nothing to say", None),
        ("Yes and no", None),
        ("", None),
    ],
)
def test_parse_yes_no(text: str, answer: str | None) -> None:
    assert parse_yes_no(text) == answer


def test_eval_rows_exclude_probing_rows() -> None:
    all_rows = load_halueval_qa()
    probe, rest = split_probe_eval(all_rows, n_probe=292, seed=0)
    rows = eval_rows()
    assert [r.row_id for r in rows] == [r.row_id for r in rest]
    assert not {r.row_id for r in rows} & {r.row_id for r in probe}
    with pytest.raises(DataError, match="used for probing"):
        eval_rows(all_rows[:5], exclude_ids=[r.row_id for r in all_rows[:2]])


def test_seed_picks_answers_reproducibly() -> None:
    a, b = shown_answers(list(range(200)), 0), shown_answers(list(range(200)), 0)
    assert (a == b).all() and 70 < a.sum() < 130
    assert not (shown_answers(list(range(200)), 1) == a).all()


def test_yes_no_tokens_of_tiny_tokenizer(tiny_llama) -> None:
    yes, no = yes_no_token_ids(tiny_llama.tokenizer)
    tok = tiny_llama.tokenizer
    assert {tok.decode([i]) for i in yes} == {"Yes", "yes"}
    assert {tok.decode([i]) for i in no} == {"No", "no"}


def test_logprob_mode_matches_unbatched_forward(tiny_llama) -> None:
    res = evaluate_halueval(
        tiny_llama, ROWS, seeds=(0, 1), instruction=SHORT, batch_size=2, progress=False
    )
    assert isinstance(res, EvalResult)
    assert list(res.metrics["seed"]) == [0, 1] and (res.metrics["n"] == 3).all()
    assert (res.metrics["n_unparsed"] == 0).all()
    ex = res.examples
    assert set(ex["answer"]) <= {"yes", "no"}
    assert ((ex["log_p_yes"] > ex["log_p_no"]) == (ex["answer"] == "yes")).all()
    # the batched, left-padded score equals an unpadded forward of the same prompt
    from lineage_lens.evals import encode_chat
    from lineage_lens.evals.halueval import HALUEVAL_SYSTEM, halueval_user_message

    row = ex.iloc[0]
    src = ROWS[int(row["row_id"])]
    answer = src.hallucinated_answer if row["hallucinated"] else src.right_answer
    ids = encode_chat(
        tiny_llama.tokenizer,
        halueval_user_message(src.knowledge, src.question, answer, SHORT),
        system=HALUEVAL_SYSTEM,
    )
    import torch

    with torch.no_grad():
        logp = torch.log_softmax(tiny_llama(torch.tensor([ids]))[0, -1].float(), -1)
    yes, _ = yes_no_token_ids(tiny_llama.tokenizer)
    assert float(logp[yes].max()) == pytest.approx(row["log_p_yes"], abs=1e-4)
    s = res.summary()
    assert s["n"] == 6 and s["accuracy_std"] >= 0
    assert "halueval" in res.summary_text()


def test_generate_mode_counts_unparsed(tiny_llama, tmp_path) -> None:
    res = evaluate_halueval(
        tiny_llama,
        ROWS,
        seeds=(0,),
        mode="generate",
        instruction=SHORT,
        max_new_tokens=3,
        progress=False,
    )
    ex = res.examples
    parsed = ex["text"].map(parse_yes_no)
    assert int(res.metrics["n_unparsed"].iloc[0]) == int(parsed.isna().sum())
    # unparsed outputs are never mapped to "No"
    assert (ex.loc[parsed.isna(), "answer"].isna()).all()
    path = res.save(tmp_path / "r.json")
    back = EvalResult.load(path)
    assert back.metrics.equals(res.metrics) or np.allclose(
        back.metrics.fillna(-1).to_numpy(float), res.metrics.fillna(-1).to_numpy(float)
    )


def test_cache_resumes_and_gate_changes_scores(tiny_llama, tmp_path) -> None:
    cache = tmp_path / "cache.jsonl"
    first = evaluate_halueval(
        tiny_llama, ROWS, seeds=(0,), instruction=SHORT, cache=cache, progress=False
    )
    n_lines = len(cache.read_text().splitlines())
    assert n_lines == 3
    again = evaluate_halueval(
        tiny_llama, ROWS, seeds=(0,), instruction=SHORT, cache=cache, progress=False
    )
    assert len(cache.read_text().splitlines()) == n_lines
    assert again.examples["log_p_yes"].tolist() == first.examples["log_p_yes"].tolist()
    scores = np.random.default_rng(0).random((2, 4))
    gate = TruthGate(scores, alpha=4.0)
    gated = evaluate_halueval(
        tiny_llama, ROWS, seeds=(0,), instruction=SHORT, gate=gate, cache=cache, progress=False
    )
    assert len(cache.read_text().splitlines()) == 2 * n_lines  # a new setting
    assert not np.allclose(gated.examples["log_p_yes"], first.examples["log_p_yes"])
    assert gated.config["gate"]["alpha"] == 4.0
    # a truncated last line (interrupted run) is ignored
    with open(cache, "a") as fh:
        fh.write('{"key": "x", "rec')
    assert len(ResultCache(cache)) == 2 * n_lines


def test_binary_metrics_auroc_is_threshold_free() -> None:
    from sklearn.metrics import roc_auc_score

    truth = [True, False, True, False, True, False]
    margin = [-0.5, -2.0, -0.1, -1.5, -3.0, -0.9]  # every answer "No", yet ranked well
    m = binary_metrics(truth, [False] * 6, margin)
    assert m["yes_ratio"] == 0 and m["auroc"] == pytest.approx(roc_auc_score(truth, margin))
    assert math.isnan(binary_metrics([True, True], [True, False], [0.1, 0.2])["auroc"])
    assert "auroc" not in binary_metrics(truth, [False] * 6)
    with pytest.raises(Exception, match="score has shape"):
        binary_metrics(truth, [False] * 6, margin[:3])


def test_shared_prefix_length_and_summary(tiny_gqa) -> None:
    """The shared-prefix path itself is checked on every architecture in test_kv_cache.py."""
    from lineage_lens.batching import shared_prefix_length

    assert shared_prefix_length([(1, 2, 3), (1, 2, 4, 5), (1, 2, 3, 9)]) == 2
    assert shared_prefix_length([(1, 2), (1, 2, 3)]) == 1  # one own token is always left
    res = evaluate_halueval(tiny_gqa, ROWS, seeds=(0,), instruction=SHORT, progress=False)
    assert "auroc" in res.summary()


def test_paired_auroc_delta() -> None:
    from sklearn.metrics import roc_auc_score

    from lineage_lens.stats import paired_auroc_delta

    rng = np.random.default_rng(0)
    y = rng.random(200) > 0.5
    base = rng.normal(size=200) + 0.3 * y
    better = base + 1.5 * y  # separates the classes much better
    delta, lo, hi = paired_auroc_delta(y, base, better, n_resamples=300)
    assert delta == pytest.approx(roc_auc_score(y, better) - roc_auc_score(y, base))
    assert 0 < lo < delta < hi
    same = paired_auroc_delta(y, base, base, n_resamples=50)
    assert same == (0.0, 0.0, 0.0)
    with pytest.raises(DataError, match="both classes"):
        paired_auroc_delta(np.ones(5, bool), base[:5], base[:5])
    with pytest.raises(Exception, match="one length"):
        paired_auroc_delta(y, base, base[:10])
    # several base settings (a control over seeds): their AUROCs are averaged
    controls = np.stack([rng.normal(size=200) for _ in range(3)])
    delta, lo, hi = paired_auroc_delta(y, controls, better, n_resamples=300)
    mean_control = np.mean([roc_auc_score(y, c) for c in controls])
    assert delta == pytest.approx(roc_auc_score(y, better) - mean_control)
    assert lo < delta < hi
    with pytest.raises(Exception, match="one length"):
        paired_auroc_delta(y, controls[:, :10], better)


def test_paired_bootstrap_delta_of_a_mean_and_a_ratio() -> None:
    from lineage_lens.stats import paired_bootstrap_delta

    rng = np.random.default_rng(0)
    base = (rng.random(300) < 0.5).astype(float)
    better = np.where(rng.random(300) < 0.3, 1.0, base)  # flips about 15 % of items to correct
    delta, lo, hi = paired_bootstrap_delta(np.mean, base, better, n_resamples=500)
    assert delta == pytest.approx(better.mean() - base.mean())
    assert 0 < lo < delta < hi
    # the pairing matters: the paired interval is narrower than one of independent samples
    assert hi - lo < 2 * 1.96 * np.sqrt(0.25 / 300 * 2)
    # a ratio of sums over columns (CHAIR_i: hallucinated / mentioned objects per caption)
    h, m = rng.integers(0, 3, 50), rng.integers(3, 6, 50)
    ratio = lambda hh, mm: hh.sum() / mm.sum()  # noqa: E731
    d, lo, hi = paired_bootstrap_delta(ratio, (h, m), (np.zeros(50), m), n_resamples=300)
    assert d == pytest.approx(-h.sum() / m.sum()) and lo <= d <= hi < 0
    assert paired_bootstrap_delta(np.mean, base, base) == (0.0, 0.0, 0.0)
    with pytest.raises(ConfigError, match="one length"):
        paired_bootstrap_delta(np.mean, base, better[:10])
    with pytest.raises(ConfigError, match="as many"):
        paired_bootstrap_delta(ratio, (h, m), h)


def test_proportion_ci_is_wilsons() -> None:
    from lineage_lens.stats import proportion_ci

    p, lo, hi = proportion_ci(30, 100)
    # Wilson's interval at 95 %: centre (k + z^2/2) / (n + z^2)
    z = 1.959964
    centre = (30 + z**2 / 2) / (100 + z**2)
    half = z / (100 + z**2) * np.sqrt(30 * 70 / 100 + z**2 / 4)
    assert p == 0.3 and lo == pytest.approx(centre - half, abs=1e-5)
    assert hi == pytest.approx(centre + half, abs=1e-5)
    assert proportion_ci(0, 10)[1] == 0.0
    with pytest.raises(DataError, match="successes"):
        proportion_ci(11, 10)


# ------------------------------------------------------------------ the evaluator class
def test_evaluate_halueval_is_the_class_evaluate(tiny_llama) -> None:
    options = {"seeds": [0, 1], "instruction": SHORT, "progress": False}
    gate = TruthGate(np.random.default_rng(3).random((2, 4)), alpha=2.0)
    judgement = HaluEvalJudgement(rows=ROWS, **options)
    assert judgement.seeds == (0, 1) and isinstance(judgement.rows, tuple)
    for g in (None, gate):
        by_function = evaluate_halueval(tiny_llama, ROWS, gate=g, **options)
        by_class = judgement.evaluate(tiny_llama, g)
        pd.testing.assert_frame_equal(by_function.metrics, by_class.metrics)
        pd.testing.assert_frame_equal(by_function.examples, by_class.examples)
        assert by_function.config == by_class.config
    # the sweep evaluator: the same result as its summary, one group per seed
    outcome = judgement(tiny_llama, gate)
    pd.testing.assert_series_equal(pd.Series(outcome.metrics), pd.Series(by_function.summary()))
    assert len(outcome.groups) == 2 and set(outcome.paired) == {"auroc"}


def test_evaluate_halueval_unknown_option_names_it_and_the_fields() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown option 'sedes'.*HaluEvalJudgement: rows, seeds"
    ):
        evaluate_halueval(None, ROWS, sedes=(0,))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"mode": "guess"}, "mode must be 'logprob' or 'generate', got 'guess'"),
        ({"seeds": ()}, "at least one seed"),
        ({"seeds": (0, -1)}, "a seed must be an integer from 0"),
        ({"seeds": 0}, "seeds must be a sequence"),
        ({"limit": 0}, "limit must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "batch_size must be an integer >= 1"),
        ({"n_probe": 0}, "n_probe must be"),
        ({"max_new_tokens": 0}, "max_new_tokens must be"),
        ({"split_seed": -2}, "split_seed must be"),
    ],
)
def test_bad_halueval_options_fail_when_the_evaluator_is_made(options, pattern) -> None:
    with pytest.raises(ConfigError, match=pattern):
        HaluEvalJudgement(rows=ROWS, **options)
    with pytest.raises(ConfigError, match=pattern):  # the function: before any model work
        evaluate_halueval(None, ROWS, **options)  # type: ignore[arg-type]
