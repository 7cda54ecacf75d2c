"""The library gating sweep (lineage_lens.sweep) on fake evaluators: no model is built.

A fake evaluator returns fixed per-example values for each setting (keyed by the gate's scores
and alpha), so every number the sweep reports can be computed by hand: the grid of sources x
alphas, one ungated evaluation, the paired change against the ungated model, and the change
against the random control averaged over its seeds (example by example for a rate, AUROC by
AUROC for an AUROC).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from lineage_lens.errors import ConfigError, DataError
from lineage_lens.gating import TruthGate, control_scores
from lineage_lens.scores import TruthScores
from lineage_lens.stats import paired_auroc_delta, paired_bootstrap_delta
from lineage_lens.sweep import (
    CONTROL,
    UNGATED,
    GateSettings,
    Outcome,
    PerExample,
    ScoreSource,
    Setting,
    build_gates,
    change_columns,
    evaluate_settings,
    gating_sweep,
    sweep_frame,
    transfer_sources,
)

N = 40
RESAMPLES = 200
#: sklearn's AUROC is slow; a few resamples check the pairing as well.
AUROC_RESAMPLES = 20
SEEDS = (0, 1, 2)


def _scores(model: str, seed: int) -> TruthScores:
    rng = np.random.default_rng(seed)
    return TruthScores({"accuracy": rng.random((2, 3)), "auroc": rng.random((2, 3))}, model=model)


INHERITED = _scores("ancestor", 0)
OWN = _scores("descendant", 1)


def _key(gate: TruthGate | None) -> tuple[str, int | None, float]:
    """Which setting a gate is: its scores' model (``control`` for a control) and seed, alpha."""
    if gate is None:
        return (UNGATED, None, 0.0)
    meta = gate.scores.meta
    if meta.get("control"):
        return (CONTROL, meta.get("control_seed"), gate.alpha)
    return (gate.scores.model, None, gate.alpha)


class FakeRates:
    """Per-example 0/1 outcomes, a fixed random vector per setting; records every call."""

    task = "fake"

    def __init__(self, n: int = N) -> None:
        self.n = n
        self.calls: list[tuple[str, int | None, float]] = []

    def values(self, key: tuple[str, int | None, float]) -> np.ndarray:
        name, seed, alpha = key
        code = sum(map(ord, name)) + 100 * (seed or 0) + int(alpha * 10)
        return (np.random.default_rng(code).random(self.n) < 0.5).astype(float)

    def __call__(self, model: object, gate: TruthGate | None) -> Outcome:
        key = _key(gate)
        self.calls.append(key)
        v = self.values(key)
        halves = [{"half": h, "rate": float(v[h::2].mean())} for h in (0, 1)]
        return Outcome({"n": self.n, "rate": float(v.mean())}, {"rate": PerExample.mean(v)}, halves)


class FakeMargins(FakeRates):
    """A per-example score and fixed labels: the paired statistic is an AUROC."""

    truth = np.arange(N) % 3 == 0

    def __call__(self, model: object, gate: TruthGate | None) -> Outcome:
        key = _key(gate)
        self.calls.append(key)
        score = self.values(key) + np.random.default_rng(len(self.calls)).normal(0, 0.1, self.n)
        score = np.where(self.truth, score + 0.3, score)
        auroc = float(roc_auc_score(self.truth, score))
        return Outcome({"auroc": auroc}, {"auroc": PerExample.auroc(self.truth, score)})


def test_grid_of_sources_by_alphas_and_ungated_evaluated_once() -> None:
    sources = transfer_sources(INHERITED, OWN, control_seeds=SEEDS)
    assert [(s.name, s.control_seed) for s in sources] == [
        ("inherited", None),
        ("own", None),
        *((CONTROL, s) for s in SEEDS),
    ]
    fake = FakeRates()
    alphas = (0.0, 1.0, 4.0)
    frame = gating_sweep(None, fake, sources, alphas, n_resamples=RESAMPLES)  # type: ignore[arg-type]
    assert len(frame) == 1 + len(sources) * len(alphas)
    assert frame.iloc[0][["scores", "alpha"]].tolist() == [UNGATED, 0.0]
    grid = list(
        zip(frame["scores"][1:], frame["control_seed"][1:], frame["alpha"][1:], strict=True)
    )
    expected = [(s.name, s.control_seed, a) for s in sources for a in alphas]
    assert [(n, None if math.isnan(c) else c, a) for n, c, a in grid] == expected
    # one ungated evaluation, alpha 0 reuses it; every other setting once
    assert fake.calls.count((UNGATED, None, 0.0)) == 1
    assert len(fake.calls) == 1 + len(sources) * 2
    zero = frame[(frame["alpha"] == 0) & (frame["scores"] != UNGATED)]
    assert (zero["rate"] == frame.loc[0, "rate"]).all() and (zero["rate_delta"] == 0).all()
    delta, vs = change_columns("rate")
    assert list(frame.columns) == [
        "scores",
        "alpha",
        "control_seed",
        "n",
        "rate",
        *delta,
        *vs,
    ]
    assert frame.loc[0, list(delta + vs)].isna().all()


def test_paired_changes_equal_a_hand_computation() -> None:
    sources = transfer_sources(INHERITED, OWN, control_seeds=SEEDS)
    fake = FakeRates()
    frame = gating_sweep(None, fake, sources, (2.0,), n_resamples=RESAMPLES)  # type: ignore[arg-type]
    base = fake.values((UNGATED, None, 0.0))
    inherited = fake.values(("ancestor", None, 2.0))
    controls = [fake.values((CONTROL, s, 2.0)) for s in SEEDS]
    mean_control = np.mean(controls, axis=0)  # the control averaged over its seeds, per example

    row = frame[frame["scores"] == "inherited"].iloc[0]
    hand = paired_bootstrap_delta(np.mean, base, inherited, n_resamples=RESAMPLES, seed=0)
    assert row["rate_delta"] == pytest.approx(inherited.mean() - base.mean(), abs=1e-12)
    assert tuple(row[list(change_columns("rate")[0])]) == pytest.approx(hand, abs=1e-12)
    vs = paired_bootstrap_delta(np.mean, mean_control, inherited, n_resamples=RESAMPLES, seed=0)
    assert row["rate_vs_control"] == pytest.approx(
        inherited.mean() - np.mean([c.mean() for c in controls]), abs=1e-12
    )
    assert tuple(row[list(change_columns("rate")[1])]) == pytest.approx(vs, abs=1e-12)
    # each control seed's own change vs ungated; no transfer test on own or control rows
    ctrl = frame[frame["scores"] == CONTROL]
    assert ctrl["rate_delta"].tolist() == pytest.approx([c.mean() - base.mean() for c in controls])
    assert frame.loc[frame["scores"] != "inherited", "rate_vs_control"].isna().all()
    # pooled: every control row carries the change of the seed-averaged control
    pooled = gating_sweep(
        None,  # type: ignore[arg-type]
        FakeRates(),
        sources,
        (2.0,),
        pool_controls=True,
        n_resamples=RESAMPLES,
    )
    hand_pooled = paired_bootstrap_delta(np.mean, base, mean_control, n_resamples=RESAMPLES, seed=0)
    for _, r in pooled[pooled["scores"] == CONTROL].iterrows():
        assert tuple(r[list(change_columns("rate")[0])]) == pytest.approx(hand_pooled, abs=1e-12)


def test_auroc_change_vs_control_averages_the_controls_aurocs() -> None:
    sources = transfer_sources(INHERITED, control_seeds=(0, 1))
    fake = FakeMargins()
    settings = evaluate_settings(None, fake, sources, (3.0,))  # type: ignore[arg-type]
    assert [s.scores for s in settings] == [UNGATED, "inherited", CONTROL, CONTROL]
    frame = sweep_frame(settings, n_resamples=AUROC_RESAMPLES)
    score = {s.scores + str(s.control_seed): s.outcome.paired["auroc"].columns[0] for s in settings}
    auroc = {k: roc_auc_score(fake.truth, v) for k, v in score.items()}
    row = frame[frame["scores"] == "inherited"].iloc[0]
    assert row["auroc_delta"] == pytest.approx(auroc["inheritedNone"] - auroc["noneNone"])
    mean_control = (auroc[f"{CONTROL}0"] + auroc[f"{CONTROL}1"]) / 2
    assert row["auroc_vs_control"] == pytest.approx(auroc["inheritedNone"] - mean_control)
    hand = paired_auroc_delta(
        fake.truth,
        np.stack([score[f"{CONTROL}0"], score[f"{CONTROL}1"]]),
        score["inheritedNone"],
        n_resamples=AUROC_RESAMPLES,
    )
    assert tuple(row[list(change_columns("auroc")[1])]) == pytest.approx(hand, abs=1e-12)


def test_rows_per_group_repeat_the_setting_and_its_changes() -> None:
    sources = [ScoreSource("own", OWN)]
    frame = gating_sweep(None, FakeRates(), sources, (1.0, 2.0), rows="groups", n_resamples=50)  # type: ignore[arg-type]
    assert len(frame) == 2 * (1 + 2)
    assert frame["half"].tolist() == [0, 1] * 3
    for _, sub in frame.groupby(["scores", "alpha"]):
        assert sub["rate_delta"].nunique(dropna=False) == 1


def test_gate_settings_reach_the_gates_and_controls_gate_by_the_chosen_metric() -> None:
    sources = transfer_sources(INHERITED, control_seeds=(0,), metric="auroc")
    gates = build_gates(sources, (0.0, 2.0), GateSettings(norm="minmax", metric="auroc"))
    assert set(gates) == {("inherited", None, 2.0), (CONTROL, 0, 2.0)}  # alpha 0: no gate
    inherited, control = gates["inherited", None, 2.0], gates[CONTROL, 0, 2.0]
    assert inherited.norm == "minmax" and inherited.metric == "auroc"
    expected = TruthGate(INHERITED, alpha=2.0, norm="minmax", metric="auroc")
    np.testing.assert_array_equal(inherited.normalized, expected.normalized)
    permuted = control_scores(INHERITED, "random", seed=0, metric="auroc").accuracy
    np.testing.assert_array_equal(
        np.sort(permuted.ravel()), np.sort(INHERITED.get("auroc").ravel())
    )
    np.testing.assert_array_equal(
        control.normalized, TruthGate(permuted, alpha=2.0, norm="minmax").normalized
    )


@pytest.mark.parametrize(
    ("alphas", "pattern"),
    [
        ((), "at least one alpha"),
        ((1.0, 1.0), "repeat a value"),
        ((1.0, math.nan), "finite numbers"),
        ((math.inf,), "finite numbers"),
        ((True,), "finite numbers"),
        (("2",), "finite numbers"),
    ],
)
def test_bad_alphas_are_config_errors_before_any_evaluation(alphas, pattern) -> None:
    fake = FakeRates()
    with pytest.raises(ConfigError, match=pattern):
        gating_sweep(None, fake, [ScoreSource("own", OWN)], alphas)  # type: ignore[arg-type]
    assert fake.calls == []


def test_bad_sources_and_settings_are_config_errors_before_any_evaluation() -> None:
    fake = FakeRates()
    bad_sources = [
        ([OWN], "ScoreSource objects"),
        ([ScoreSource(UNGATED, OWN)], "ungated row's"),
        ([ScoreSource("own", OWN), ScoreSource("own", INHERITED)], "repeat a"),
    ]
    for sources, pattern in bad_sources:
        with pytest.raises(ConfigError, match=pattern):
            gating_sweep(None, fake, sources, (1.0,))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="norm"):
        gating_sweep(None, fake, [ScoreSource("own", OWN)], (1.0,), gate=GateSettings(norm="zz"))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="rows"):
        gating_sweep(None, fake, [ScoreSource("own", OWN)], (1.0,), rows="each")  # type: ignore[arg-type]
    assert fake.calls == []
    with pytest.raises(ConfigError, match="ungated"):
        sweep_frame([Setting("own", None, 1.0, fake(None, None))])


def test_settings_on_different_examples_cannot_be_paired() -> None:
    class Shrinking(FakeRates):
        def __call__(self, model: object, gate: TruthGate | None) -> Outcome:
            self.n = N if gate is None else N - 1
            return super().__call__(model, gate)

    with pytest.raises(DataError, match="same examples"):
        gating_sweep(None, Shrinking(), [ScoreSource("own", OWN)], (1.0,))  # type: ignore[arg-type]


def test_frame_is_tidy_for_pandas() -> None:
    frame = gating_sweep(None, FakeRates(), [ScoreSource("own", OWN)], (1.0,), n_resamples=50)  # type: ignore[arg-type]
    assert isinstance(frame, pd.DataFrame) and frame.index.tolist() == [0, 1]
    assert frame["scores"].tolist() == [UNGATED, "own"]


def test_the_evaluator_protocol_is_the_sweeps():
    """The sweep owns its protocol (it imports nothing from lineage_lens.evals); the evaluations
    give the same objects under their old names."""
    from lineage_lens import sweep
    from lineage_lens.evals import outcomes

    for name in ("Evaluator", "Outcome", "PerExample"):
        assert getattr(outcomes, name) is getattr(sweep, name) and name in sweep.__all__
    assert Outcome.__module__ == "lineage_lens.sweep"
