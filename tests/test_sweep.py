"""The library gating sweep (lineage_lens.sweep) on fake evaluators: no model is built (but in
the last test, a HaluEval sweep on the tiny model resuming from its out_dir's cache).

A fake evaluator returns fixed per-example values for each setting (keyed by the gate's scores
and alpha), so every number the sweep reports can be computed by hand: the grid of sources x
alphas, one ungated evaluation, the paired change against the ungated model, and the change
against the random control averaged over its seeds (example by example for a rate, AUROC by
AUROC for an AUROC).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

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
    TRUTH,
    UNGATED,
    GateSettings,
    Outcome,
    PerExample,
    ScoreSource,
    Setting,
    build_gates,
    change_columns,
    evaluate_settings,
    gate_sources,
    gating_sweep,
    plot_sweep,
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
    """The sweep owns its protocol and imports nothing from lineage_lens.evals (it is below it);
    the evaluations build the sweep's objects."""
    import ast
    from pathlib import Path

    from lineage_lens import sweep
    from lineage_lens.evals import halueval, pope

    tree = ast.parse(Path(sweep.__file__).read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("lineage_lens.evals")]
    for name in ("Evaluator", "Outcome", "PerExample"):
        assert name in sweep.__all__
    assert (
        halueval.Outcome is pope.Outcome is Outcome and Outcome.__module__ == "lineage_lens.sweep"
    )


# --------------------------------------------------------------------------------------------
# The sources of `lineage-lens eval`, the result files of out_dir and the plot
# --------------------------------------------------------------------------------------------


def test_gate_sources_are_the_truth_scores_then_each_control_kind() -> None:
    sources = gate_sources(INHERITED, ["random", "inverse"], control_seed=3)
    assert [(s.name, s.control_seed) for s in sources] == [
        (TRUTH, None),
        ("random", None),
        ("inverse", None),
    ]
    assert sources[0].scores is INHERITED
    expected = control_scores(INHERITED, "random", seed=3).accuracy
    np.testing.assert_array_equal(sources[1].scores.accuracy, expected)
    assert gate_sources(None) == []
    with pytest.raises(ConfigError, match="need Truth Scores"):
        gate_sources(None, ["random"])
    with pytest.raises(ConfigError, match="repeat a kind"):
        gate_sources(INHERITED, ["random", "random"])


@dataclass(frozen=True)
class CachedRates:
    """A dataclass evaluator with a ``cache`` field, as the library's: its per-example values
    are computed only for settings its cache file does not hold yet (``computed`` counts
    them)."""

    task = "cached"
    computed: list = field(default_factory=list, compare=False)
    cache: str | Path | None = None

    def __call__(self, model: object, gate: TruthGate | None) -> Outcome:
        key = "|".join(map(str, _key(gate)))
        store = {} if self.cache is None or not Path(self.cache).is_file() else None
        if store is None:
            lines = Path(self.cache).read_text().splitlines()  # type: ignore[arg-type]
            store = dict(json.loads(line) for line in lines)
        if key not in store:
            self.computed.append(key)
            store[key] = FakeRates().values(_key(gate)).tolist()
            if self.cache is not None:
                with open(self.cache, "a") as fh:
                    fh.write(json.dumps([key, store[key]]) + "\n")
        v = np.asarray(store[key])
        return Outcome({"n": len(v), "rate": float(v.mean())}, {"rate": PerExample.mean(v)})


def test_out_dir_writes_the_results_and_gives_the_evaluator_a_resumable_cache(tmp_path) -> None:
    sources = transfer_sources(INHERITED, control_seeds=(0, 1))
    fake = CachedRates()
    kw = {"n_resamples": 50, "out_dir": tmp_path}
    frame = gating_sweep(None, fake, sources, (2.0,), **kw)  # type: ignore[arg-type]
    # the frame is the one without out_dir, written as results.csv
    plain = gating_sweep(None, CachedRates(), sources, (2.0,), n_resamples=50)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(frame, plain)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results.csv"), frame)
    details = json.loads((tmp_path / "results.json").read_text())
    assert details["task"] == "cached"
    assert [(s["scores"], s["control_seed"], s["alpha"]) for s in details["settings"]] == [
        (UNGATED, None, 0.0),
        ("inherited", None, 2.0),
        (CONTROL, 0, 2.0),
        (CONTROL, 1, 2.0),
    ]
    first = details["settings"][0]
    assert first["summary"] == {"n": N, "rate": frame.loc[0, "rate"]} and first["wall_s"] > 0
    assert set(first) == {
        "scores",
        "control_seed",
        "alpha",
        "wall_s",
        "summary",
        "groups",
        "config",
    }
    assert (tmp_path / "sweep.png").stat().st_size > 0
    # the evaluator's cache was the file cache.jsonl: run again, nothing is computed again
    assert len(fake.computed) == 4 and (tmp_path / "cache.jsonl").is_file()
    again = CachedRates()
    pd.testing.assert_frame_equal(gating_sweep(None, again, sources, (2.0,), **kw), frame)  # type: ignore[arg-type]
    assert again.computed == []


def test_out_dir_keeps_an_evaluators_own_cache_and_needs_a_folder(tmp_path) -> None:
    own = tmp_path / "own.jsonl"
    sources = [ScoreSource("own", OWN)]
    gating_sweep(None, CachedRates(cache=own), sources, (1.0,), out_dir=tmp_path / "a")  # type: ignore[arg-type]
    assert own.is_file() and not (tmp_path / "a" / "cache.jsonl").exists()

    # an evaluator that is no dataclass gets no cache; without a task results.json has none
    def no_task(model: object, gate: TruthGate | None) -> Outcome:
        return FakeRates()(model, gate)

    gating_sweep(None, no_task, sources, (1.0,), n_resamples=20, out_dir=tmp_path / "b")  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [
        "results.csv",
        "results.json",
        "sweep.png",
    ]
    assert "task" not in json.loads((tmp_path / "b" / "results.json").read_text())
    (tmp_path / "file").write_text("x")
    fake = FakeRates()
    with pytest.raises(ConfigError, match="is a file"):
        gating_sweep(None, fake, sources, (1.0,), out_dir=tmp_path / "file")  # type: ignore[arg-type]
    assert fake.calls == []


def test_plot_sweep_draws_each_source_over_alpha_and_the_ungated_line(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sources = transfer_sources(INHERITED, OWN, control_seeds=SEEDS)
    frame = gating_sweep(None, FakeRates(), sources, (1.0, 2.0), n_resamples=20)  # type: ignore[arg-type]
    frame["rate_std"] = 0.1
    ax = plot_sweep(frame)
    _, labels = ax.get_legend_handles_labels()
    assert sorted(labels) == sorted(["inherited", "own", CONTROL, "ungated"])
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("alpha", "rate")  # the paired statistic
    # the control's seeds averaged at each alpha; error bars from rate_std
    control = ax.containers[2]
    x, y = control.lines[0].get_data()
    at = frame[frame["scores"] == CONTROL].groupby("alpha")["rate"].mean()
    np.testing.assert_allclose(np.asarray(x, dtype=float), at.index.to_numpy(dtype=float))
    np.testing.assert_allclose(np.asarray(y, dtype=float), at.to_numpy(dtype=float))
    assert control.has_yerr
    # one colour per source, as across the project's figures (inherited blue, control red)
    from matplotlib.colors import to_hex

    colours = {c.get_label(): to_hex(c.lines[0].get_color()) for c in ax.containers}
    assert colours["inherited"] == to_hex("C0") and colours[CONTROL] == to_hex("C3")
    assert colours["own"] == to_hex("C1")
    (dashed,) = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert dashed.get_ydata()[0] == pytest.approx(frame.loc[0, "rate"])
    plt.close(ax.figure)
    plot_sweep(frame, tmp_path / "s.png", metric="n")
    assert (tmp_path / "s.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="'nope'"):
        plot_sweep(frame, metric="nope")


# --------------------------------------------------------------------------------------------
# A library evaluator on a tiny model: the result files and resuming from cache.jsonl
# --------------------------------------------------------------------------------------------


def test_halueval_sweep_resumes_from_the_out_dir_cache_without_forward_passes(
    tiny_llama, tmp_path
) -> None:
    from lineage_lens.data import HaluEvalRow
    from lineage_lens.evals import HaluEvalJudgement

    rows = [
        HaluEvalRow(str(i), "Paris is the capital of France", "what is the capital ?", a, b)
        for i, (a, b) in enumerate([("Paris", "Rome"), ("France", "Italy")])
    ]
    short = "Is the answer hallucinated ? Answer yes or no ."
    evaluator = HaluEvalJudgement(rows=rows, seeds=(0, 1), instruction=short, progress=False)
    scores = TruthScores({"accuracy": np.random.default_rng(0).random((2, 4))}, model="tiny")
    sources = gate_sources(scores, ["random"])
    kw = {"control": "random", "versus_control": (TRUTH,), "n_resamples": 50, "out_dir": tmp_path}
    frame = gating_sweep(tiny_llama, evaluator, sources, (3.0,), **kw)
    assert list(zip(frame["scores"], frame["alpha"], strict=True)) == [
        (UNGATED, 0.0),
        (TRUTH, 3.0),
        ("random", 3.0),
    ]
    assert (frame["n"] == 4).all() and {"accuracy", "accuracy_std", "f1"} <= set(frame.columns)
    assert "wall_s" not in frame.columns and "task" not in frame.columns
    # the paired AUROC changes: vs ungated on the gated rows, vs the control on the truth row
    assert frame["auroc_delta"].isna().tolist() == [True, False, False]
    assert frame["auroc_vs_control"].notna().tolist() == [False, True, False]
    details = json.loads((tmp_path / "results.json").read_text())
    assert details["task"] == "halueval"
    assert [len(s["groups"]) for s in details["settings"]] == [2, 2, 2]
    assert details["settings"][1]["config"]["gate"]["alpha"] == 3.0
    n_cached = len((tmp_path / "cache.jsonl").read_text().splitlines())
    assert n_cached > 0

    forwards = []
    with tiny_llama.hooks(fwd_hooks=[("ln_final.hook_out", lambda x, hook: forwards.append(1))]):
        again = gating_sweep(tiny_llama, evaluator, sources, (3.0,), **kw)
    assert forwards == [] and len((tmp_path / "cache.jsonl").read_text().splitlines()) == n_cached
    pd.testing.assert_frame_equal(again, frame)
