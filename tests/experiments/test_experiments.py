"""The test profile of every experiment regenerates its figures, and each CSV holds the plotted
numbers (recomputed here with the library functions the figures are drawn from).

The zoo's tiny family is built once into the zoo cache (``$LINEAGE_LENS_CACHE/zoo``, shared with
tests/zoo/test_zoo.py) and scored once per process (``experiments.zoo_family.zoo_lineage`` is cached)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from experiments import (
    cka,
    evidence,
    gating,
    heatmaps,
    inheritance,
    mllm_conditions,
    mllm_family,
    mllm_gating,
    real_family,
    weight_drift,
)
from experiments.run_all import EXPERIMENTS, run_all
from experiments.zoo_family import ANCESTOR, DESCENDANTS, MEMBERS, zoo_lineage
from lineage_lens.cka import head_cka
from lineage_lens.lineage import compare_scores, published_cross_dataset_scores
from lineage_lens.weights import weight_drift as library_weight_drift

#: Builds or loads models: the model tier (make test-fast skips it).
# One xdist worker runs this module (make test: --dist loadfile): every test shares the module's
# run_all("test"), whose real-lineage report holds a lock on its cache folder while it runs.
pytestmark = pytest.mark.model

FIGURE_NAMES = (
    "inheritance_published",
    "inheritance_zoo",
    "heatmaps_published",
    "heatmaps_zoo",
    "weight_drift_layers",
    "weight_drift_family",
    "weight_drift_scatter",
    "cka_zoo",
    "evidence_zoo",
    "evidence_image_zoo",
    "gating_zoo",
    "mllm_gating",
    "mllm_conditions",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    return run_all("test", figures=root / "figures", report_dir=root / "run"), root


def test_test_profile_regenerates_figures_and_report(report):
    path, root = report
    for name in FIGURE_NAMES:
        assert (root / "figures" / f"{name}.png").stat().st_size > 1000, name
        assert len(pd.read_csv(root / "figures" / f"{name}.csv")) > 0, name
    text = path.read_text()
    titles = (
        "Fig. 1",
        "Fig. 1 a, b, d",
        "heatmaps",
        "Weight drift",
        "CKA",
        "evidence",
        "Gating",
        "POPE and CHAIR",
        "real lineage",
    )
    for title in titles:
        assert title in text
    for name in FIGURE_NAMES:
        assert f"{name}.png" in text and f"{name}.csv" in text
    assert "nan" not in text.lower().replace("nano", "")


def test_inheritance_csv_holds_the_plotted_correlations(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "inheritance_published.csv")
    assert set(frame["set"]) == set("abcde")
    row = frame[(frame["set"] == "d") & (frame["model"] == "LLaVA-1.5-7B")].iloc[0]
    scores = published_cross_dataset_scores("d")
    expected = compare_scores(
        scores["Vicuna-7B"], scores["LLaVA-1.5-7B"], n_resamples=200, n_permutations=200
    )
    assert row["pearson"] == pytest.approx(expected.pearson.r, abs=1e-6)
    assert row["pearson_ci_low"] <= row["pearson"] <= row["pearson_ci_high"]


def test_zoo_inheritance_csv_holds_the_plotted_correlations(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "inheritance_zoo.csv")
    assert len(frame) == len(MEMBERS) * (len(MEMBERS) - 1) // 2
    scores = zoo_lineage("test").scores
    row = frame[(frame["a"] == ANCESTOR) & (frame["b"] == "instruct")].iloc[0]
    expected = compare_scores(
        scores[ANCESTOR], scores["instruct"], n_resamples=200, n_permutations=200, seed=0
    )
    assert row["pearson"] == pytest.approx(expected.pearson.r, abs=1e-5)
    assert row["spearman"] == pytest.approx(expected.spearman.r, abs=1e-5)
    assert row["pearson_ci_low"] == pytest.approx(expected.pearson.ci_low, abs=1e-5)
    assert row["pearson_p_perm"] == pytest.approx(expected.pearson.p_permutation, abs=1e-5)


def test_heatmap_csvs_hold_the_plotted_arrays(report):
    _, root = report
    published = pd.read_csv(root / "figures" / "heatmaps_published.csv")
    zoo = pd.read_csv(root / "figures" / "heatmaps_zoo.csv")
    expected = {**heatmaps.published_lineage(), **zoo_lineage("test").scores}
    for name, scores in expected.items():
        frame = published if name in set(published["model"]) else zoo
        sub = frame[frame["model"] == name].sort_values(["layer", "head"])
        np.testing.assert_allclose(
            sub["accuracy"].to_numpy().reshape(scores.shape), scores.accuracy, atol=1e-5
        )


def test_weight_drift_csv_holds_the_plotted_drift(report):
    _, root = report
    layers = pd.read_csv(root / "figures" / "weight_drift_layers.csv")
    lineage = zoo_lineage("test")
    drift = library_weight_drift(lineage.path(ANCESTOR), lineage.path("vlm"))
    sub = layers[layers["descendant"] == "vlm"].sort_values("layer")
    for p in ("q", "k", "v", "o"):
        np.testing.assert_allclose(sub[p], drift.heads[f"{p}_rel"].mean(axis=1), rtol=1e-5)
    family = pd.read_csv(root / "figures" / "weight_drift_family.csv")
    within = family[(family["group"] == "within-family") & (family["projection"] == "o")]
    desc = layers[layers["descendant"].isin(["instruct", "vlm"])]["o"].mean()
    assert within["rel"].iloc[0] == pytest.approx(desc, rel=1e-5)
    scatter = pd.read_csv(root / "figures" / "weight_drift_scatter.csv")
    vlm = scatter[scatter["descendant"] == "vlm"].sort_values(["layer", "head"])
    np.testing.assert_allclose(vlm["qk_rel"], drift.heads["qk_rel"].ravel(), rtol=1e-5)
    delta = np.abs(lineage.scores["vlm"].accuracy - lineage.scores[ANCESTOR].accuracy)
    np.testing.assert_allclose(vlm["abs_delta_score"], delta.ravel(), atol=1e-5)


def test_cka_csv_holds_the_plotted_similarities(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "cka_zoo.csv")
    lineage = zoo_lineage("test")
    expected = head_cka(lineage.acts[ANCESTOR], lineage.acts["control"], progress=False)
    sub = frame[frame["member"] == "control"].sort_values(["layer", "head"])
    np.testing.assert_allclose(
        sub["cka"].to_numpy().reshape(expected.shape), expected.values, rtol=1e-4, atol=1e-6
    )
    assert ((frame["cka"] >= -1e-9) & (frame["cka"] <= 1 + 1e-9)).all()


def test_evidence_csv_holds_the_plotted_attention(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "evidence_zoo.csv")
    lineage = zoo_lineage("test")
    for name in MEMBERS:
        sub = frame[frame["member"] == name].sort_values(["layer", "head"])
        np.testing.assert_allclose(
            sub["truth_score"], lineage.scores[name].accuracy.ravel(), atol=1e-6
        )
        top = sub[sub["group"] == f"top-{evidence.K}"]
        assert len(top) == evidence.K
        rest = sub[sub["group"] != f"top-{evidence.K}"]
        assert top["truth_score"].min() >= rest["truth_score"].max()
        assert ((sub["attention"] >= 0) & (sub["attention"] <= 1 + 1e-6)).all()
    # the plotted attention is evidence_attention's per-head mean (recomputed for one member)
    prompts, spans, ends = evidence.evidence_inputs("test")
    from lineage_lens.attention import evidence_attention
    from lineage_lens.models import load_model

    att = evidence_attention(
        load_model(lineage.path("vlm")), prompts, spans, query_char_ends=ends, progress=False
    )
    sub = frame[frame["member"] == "vlm"].sort_values(["layer", "head"])
    np.testing.assert_allclose(sub["attention"], att.values.ravel(), rtol=1e-4, atol=1e-6)


def test_gating_csv_holds_the_plotted_rates(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "gating_zoo.csv")
    assert set(frame["alpha"]) == set(gating.ALPHAS["test"])
    assert frame["context_following"].between(0, 1).all()
    at_zero = frame[frame["alpha"] == 0].groupby("member")["context_following"].nunique()
    assert (at_zero == 1).all()  # alpha = 0 is the ungated model whatever the scores
    from lineage_lens.gating import TruthGate
    from lineage_lens.models import load_model
    from lineage_lens.zoo.world import heldout_counterfactual_items

    lineage = zoo_lineage("test")
    items = heldout_counterfactual_items(lineage.zoo.world(ANCESTOR), gating.N_EVAL["test"], 1)
    model = load_model(lineage.path("instruct"))
    alpha = max(gating.ALPHAS["test"])
    with TruthGate(lineage.scores[ANCESTOR], alpha=alpha).applied(model):
        rate = gating.context_following(model, items)
    row = frame[
        (frame["member"] == "instruct")
        & (frame["scores"] == "inherited")
        & (frame["alpha"] == alpha)
    ]
    assert row["context_following"].iloc[0] == pytest.approx(rate)
    # intervals: Wilson around every rate; paired changes equal the differences of the rates
    from lineage_lens.stats import proportion_ci

    assert (frame["ci_low"] <= frame["context_following"]).all()
    assert (frame["context_following"] <= frame["ci_high"]).all()
    r = frame.iloc[-1]
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(
        proportion_ci(round(r["context_following"] * r["n"]), int(r["n"]))[1:]
    )
    key = ["member", "scores", "control_seed"]
    ungated = frame[frame["alpha"] == 0].set_index(key)["context_following"]
    expected = (
        frame["context_following"]
        - ungated.reindex(pd.MultiIndex.from_frame(frame[key])).to_numpy()
    )
    np.testing.assert_allclose(frame["delta_vs_ungated"], expected, atol=1e-6)
    assert (frame["delta_ci_low"] <= frame["delta_vs_ungated"] + 1e-9).all()
    assert (frame["delta_vs_ungated"] <= frame["delta_ci_high"] + 1e-9).all()
    controls = frame[frame["scores"] == "random control"]
    assert set(controls["control_seed"]) == set(gating.CONTROL_SEEDS["test"])
    inherited = frame[frame["scores"] == "inherited"]
    assert set(inherited["member"]) == set(DESCENDANTS)
    for r in inherited.itertuples():
        same = controls[(controls["member"] == r.member) & (controls["alpha"] == r.alpha)]
        assert r.delta_vs_control == pytest.approx(
            r.context_following - same["context_following"].mean(), abs=1e-6
        )
        assert r.delta_vs_control_ci_low <= r.delta_vs_control + 1e-9


def test_every_module_is_in_run_all_and_exposes_run():
    for module in (
        inheritance,
        mllm_conditions,
        heatmaps,
        weight_drift,
        cka,
        evidence,
        gating,
        mllm_gating,
        real_family,
    ):
        assert module in EXPERIMENTS and callable(module.run)


def test_real_family_csvs_hold_the_plotted_numbers(report):
    """SmolLM2 and a 2-step smollm2-ft: scores, drift and HaluEval judgements as the library gives."""
    path, root = report
    fam = real_family.real_family("test")
    frame = pd.read_csv(root / "figures" / "real_family_scores.csv")
    for name, scores in fam.scores.items():
        np.testing.assert_allclose(frame[name], scores.accuracy.ravel(), atol=1e-6)
        assert scores.n == 2 * real_family.PLANS["test"].n_probe
    assert (root / "figures" / "real_family.png").stat().st_size > 1000
    drift = pd.read_csv(root / "figures" / "real_family_drift.csv")
    lib = library_weight_drift(fam.paths[real_family.ANCESTOR], fam.paths["smollm2-ft"])
    np.testing.assert_allclose(drift["o"], lib.heads["o_rel"].mean(axis=1), rtol=1e-5, atol=1e-9)
    assert (drift[["q", "k", "v", "o"]] > 0).to_numpy().any()  # two steps moved some weights
    gating_rows = pd.read_csv(root / "figures" / "real_family_gating.csv")
    conditions = set(zip(gating_rows["model"], gating_rows["scores"], strict=True))
    assert conditions == {
        ("smollm2", "none"),
        ("smollm2", "own"),
        ("smollm2-ft", "none"),
        ("smollm2-ft", "inherited"),
        ("smollm2-ft", "own"),
        ("smollm2-ft", "random control"),
    }
    assert (gating_rows["n"] == real_family.PLANS["test"].eval_rows).all()
    ungated = gating_rows["scores"] == "none"
    assert gating_rows.loc[ungated, "auroc_delta"].isna().all()
    gated = gating_rows[~ungated]
    assert (gated["auroc_delta_ci_low"] <= gated["auroc_delta"] + 1e-9).all()
    assert (gated["auroc_delta"] <= gated["auroc_delta_ci_high"] + 1e-9).all()
    for (model, source), sub in gated.groupby(["model", "scores"]):
        base = gating_rows[(gating_rows["model"] == model) & ungated]
        assert sub["auroc_delta"].iloc[0] == pytest.approx(
            sub["auroc"].mean() - base["auroc"].iloc[0], abs=1e-6
        ), (model, source)  # one seed: the pooled distinct prompts are that seed's
    # the random control runs once per permutation seed; the transfer test compares the
    # inherited gate with the control's mean AUROC
    control = gating_rows[gating_rows["scores"] == "random control"]
    assert sorted(control["control_seed"]) == list(real_family.PLANS["test"].control_seeds)
    assert gating_rows.loc[gating_rows["scores"] != "random control", "control_seed"].isna().all()
    inherited = gating_rows[gating_rows["scores"] == "inherited"].iloc[0]
    assert inherited["auroc_vs_control"] == pytest.approx(
        inherited["auroc"] - control["auroc"].mean(), abs=1e-6
    )
    assert inherited["auroc_vs_control_ci_low"] <= inherited["auroc_vs_control"] + 1e-9
    assert inherited["auroc_vs_control"] <= inherited["auroc_vs_control_ci_high"] + 1e-9
    assert gating_rows.loc[gating_rows["scores"] != "inherited", "auroc_vs_control"].isna().all()
    # the ungated ancestor's row is evaluate_halueval's on the same rows
    from lineage_lens.evals.halueval import evaluate_halueval
    from lineage_lens.models import load_model

    res = evaluate_halueval(
        load_model(fam.paths["smollm2"]),
        seeds=(0,),
        exclude_ids=fam.probe_ids,
        limit=real_family.PLANS["test"].eval_rows,
        progress=False,
    )
    row = gating_rows[(gating_rows["model"] == "smollm2") & (gating_rows["scores"] == "none")]
    assert row["accuracy"].iloc[0] == pytest.approx(res.metrics["accuracy"].iloc[0])
    assert row["auroc"].iloc[0] == pytest.approx(res.metrics["auroc"].iloc[0], abs=1e-6)
    assert "real_family.png" in path.read_text()


def test_mllm_gating_csv_holds_the_plotted_metrics(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "mllm_gating.csv")
    plan = mllm_gating.PLANS["test"]
    controls = ["random control"] * len(plan.control_seeds)
    sources = ["inherited", "own", mllm_gating.OWN_IMAGE, *controls]
    assert list(frame["scores"]) == ["none"] + sources * len(plan.alphas)
    assert list(frame["paper_scores"].iloc[:4]) == [
        "ungated",
        "TruthProbe_LLM",
        "TruthProbe_MLLM, text-only",
        "TruthProbe_MLLM",
    ]
    # intervals hold their numbers; paired changes are the differences of the plotted numbers
    for col in ("pope_accuracy", "pope_adversarial_accuracy", "chair_i"):
        assert (frame[f"{col}_ci_low"] <= frame[col] + 1e-9).all(), col
        assert (frame[col] <= frame[f"{col}_ci_high"] + 1e-9).all(), col
    none, gated = frame.iloc[0], frame.iloc[1:]
    # (the CSV keeps 6 significant digits)
    delta = gated["pope_accuracy"] - none["pope_accuracy"]
    np.testing.assert_allclose(gated["pope_delta"], delta, atol=1e-5)
    np.testing.assert_allclose(
        gated["chair_i_delta"], gated["chair_i"] - none["chair_i"], atol=1e-5
    )
    assert (gated["pope_delta_ci_low"] <= gated["pope_delta"] + 1e-9).all()
    assert (gated["chair_i_delta"] <= gated["chair_i_delta_ci_high"] + 1e-9).all()
    for r in gated[gated["scores"].isin(mllm_gating.VERSUS_CONTROL)].itertuples():
        same = gated[(gated["scores"] == "random control") & (gated["alpha"] == r.alpha)]
        assert r.pope_vs_control == pytest.approx(
            r.pope_accuracy - same["pope_accuracy"].mean(), abs=1e-5
        )
    assert gated.loc[gated["scores"] == "own", "pope_vs_control"].isna().all()
    # TruthProbe_MLLM: the VLM's own image-context scores, not its text-only ones
    fam = mllm_gating.family("test")
    lin = mllm_family.mllm_lineage("test")
    assert fam.scores[mllm_gating.OWN_IMAGE] is lin.sets["d"]
    assert fam.scores["own"] is lin.sets["a"]
    assert fam.scores["inherited"] is lin.text[lin.ancestor]
    for col in ("chair_s", "chair_i", "recall", "pope_adversarial_accuracy"):
        assert frame[col].between(0, 1).all(), col
    assert (frame["n"] == plan.chair_limit).all()
    # the ungated row is evaluate_pope's on the same questions
    from lineage_lens.evals.pope import evaluate_pope
    from lineage_lens.models import load_model
    from lineage_lens.zoo.train import VLM_PROMPT

    eval_dir = fam.path / "eval"
    res = evaluate_pope(
        load_model(fam.path),
        eval_dir / "images",
        [eval_dir / "pope_adversarial.json"],
        prompt_template=VLM_PROMPT,
        limit=plan.pope_limit,
        progress=False,
    )
    none = frame[frame["scores"] == "none"].iloc[0]
    assert none["pope_adversarial_accuracy"] == pytest.approx(res.metrics["accuracy"].iloc[0])
    assert none["pope_adversarial_auroc"] == pytest.approx(res.metrics["auroc"].iloc[0], abs=1e-6)


def test_evidence_image_csv_and_cell_share(report):
    from lineage_lens.attention import EvidenceAttention

    _, root = report
    frame = pd.read_csv(root / "figures" / "evidence_image_zoo.csv")
    lineage = zoo_lineage("test")
    np.testing.assert_allclose(
        frame["truth_score_own"], lineage.scores["vlm"].accuracy.ravel(), atol=1e-6
    )
    np.testing.assert_allclose(
        frame["truth_score_inherited"], lineage.scores[ANCESTOR].accuracy.ravel(), atol=1e-6
    )
    assert frame["object_cell_share"].between(0, 1).all()
    # all of one head's image attention on cell 3 (bottom right: patches rows 2-3, cols 2-3)
    grid = np.zeros((2, 1, 2, 4, 4))
    grid[:, 0, 0, 2:, 2:] = 0.1
    grid[:, 0, 1, 0, 0] = 0.2  # the other head looks at cell 0 only
    att = EvidenceAttention(
        values=np.zeros((1, 2)),
        per_example=np.zeros((2, 1, 2)),
        n_evidence_tokens=np.full(2, 16),
        query_positions=np.zeros(2, dtype=int),
        image_attention=grid.reshape(2, 1, 2, 16),
        image_grid=(4, 4),
    )
    share = evidence.cell_share(att, np.array([3, 0]))
    np.testing.assert_allclose(share[0, 0], [1.0, 0.0])
    np.testing.assert_allclose(share[1, 0], [0.0, 1.0])


def test_mllm_conditions_csv_holds_the_plotted_correlations(report):
    _, root = report
    frame = pd.read_csv(root / "figures" / "mllm_conditions.csv")
    assert list(frame.columns) == [
        "set",
        "condition",
        "probing_data",
        "mllm",
        "reference",
        "role",
        "n_examples",
        "mllm_mean_score",
        "mllm_median_score",
        "mllm_max_score",
        "reference_mean_score",
        "reference_max_score",
        "pearson",
        "pearson_ci_low",
        "pearson_ci_high",
        "pearson_p_perm",
        "spearman",
        "spearman_ci_low",
        "spearman_ci_high",
        "spearman_p_perm",
        "top10_overlap",
        "top10_expected",
        "top10_p",
    ]
    assert list(zip(frame["set"], frame["reference"], strict=True)) == [
        (s, ref) for s in "abd" for ref in (ANCESTOR, "control")
    ]
    assert list(frame["role"][:2]) == ["ancestor", "control"]
    assert list(frame["condition"][::2]) == ["text_only", "black_image", "image"]
    lin = mllm_family.mllm_lineage("test")
    lineage = zoo_lineage("test")
    assert (frame["n_examples"] == 2 * lineage.n_items).all()
    # set a is the VLM's text-only scores of the zoo lineage; set d its image-context scores
    assert lin.sets["a"] is lineage.scores["vlm"]
    assert lin.sets["d"].n == 2 * mllm_family.PLANS["test"].n_scenes
    for s, ref in (("d", ANCESTOR), ("b", "control")):
        row = frame[(frame["set"] == s) & (frame["reference"] == ref)].iloc[0]
        expected = compare_scores(
            lineage.scores[ref],
            lin.sets[s],
            ks=[10],
            n_resamples=200,
            n_permutations=200,
            seed=0,
        )
        assert row["pearson"] == pytest.approx(expected.pearson.r, abs=1e-5)
        assert row["pearson_ci_low"] == pytest.approx(expected.pearson.ci_low, abs=1e-5)
        assert row["spearman_p_perm"] == pytest.approx(expected.spearman.p_permutation, abs=1e-5)
        assert row["mllm_mean_score"] == pytest.approx(lin.sets[s].accuracy.mean())
        top = expected.topk.iloc[0]
        assert row["top10_overlap"] == top["overlap"]
        assert row["top10_p"] == pytest.approx(top["p_value"], rel=1e-5)
    assert (frame["pearson_ci_low"] <= frame["pearson"] + 1e-9).all()
    assert (frame["pearson"] <= frame["pearson_ci_high"] + 1e-9).all()
    assert frame[["mllm_mean_score", "mllm_max_score"]].stack().between(0, 1).all()


@pytest.mark.model
def test_real_mllm_lineage_scores_every_set_as_the_library_does(monkeypatch):
    """SmolLM2 -> a 2-step smollm2-vlm (its own zoo folder): set b is score_model's on black
    images, set d one example per caption of the plan, the control SmolLM2's untrained twin; a
    second call reads every score from the content-keyed cache."""
    from experiments import score_cache
    from lineage_lens.data import load_probe_examples
    from lineage_lens.models import load_model
    from lineage_lens.pipeline import score_model
    from lineage_lens.zoo import default_zoo_dir
    from lineage_lens.zoo.train import VLM_CONTEXT_PROBE_TEMPLATE

    plan = mllm_family.Plan(n_text=6, n_scenes=8, scene_kinds=("caption",))
    recipe = {"n_scenes": 16, "align_steps": 2, "e2e_steps": 2, "n_eval_scenes": 4}
    zoo_dir = default_zoo_dir().with_name("zoo-real-test")
    lin = mllm_family.real_lineage(plan, zoo_dir=zoo_dir, overrides=recipe)
    assert (lin.ancestor, lin.mllm, lin.control) == (
        "smollm2",
        "smollm2-vlm",
        "smollm2 random init",
    )
    assert lin.path.parent == zoo_dir
    for scores in (*lin.text.values(), *lin.sets.values()):
        assert scores.shape == (30, 9)
    assert lin.sets["a"].n == lin.sets["b"].n == lin.text["smollm2"].n == 12
    assert lin.sets["d"].n == 16
    assert not np.allclose(lin.text["smollm2"].accuracy, lin.text[lin.control].accuracy)
    examples = load_probe_examples("halueval", n_probe=6, split_seed=0)
    expected, _ = score_model(
        load_model(lin.path),
        examples,
        condition="black_image",
        prompt_template=VLM_CONTEXT_PROBE_TEMPLATE,
        progress=False,
    )
    np.testing.assert_allclose(lin.sets["b"].accuracy, expected.accuracy)

    def no_model(*args, **kwargs):
        raise AssertionError("a cached score was recomputed")

    monkeypatch.setattr(score_cache, "load_model", no_model)
    monkeypatch.setattr(score_cache, "random_init_model", no_model)
    again = mllm_family.real_lineage(plan, zoo_dir=zoo_dir, overrides=recipe)
    for s in "abd":
        np.testing.assert_array_equal(again.sets[s].accuracy, lin.sets[s].accuracy)
    np.testing.assert_array_equal(again.text[lin.control].accuracy, lin.text[lin.control].accuracy)


def test_results_document_is_assembled_from_the_generated_sections(report):
    """Each analysis leaves its section beside its figures; the results document holds every
    section's numbers and embeds its figures, so the docs quote numbers from one place only."""
    from experiments import results_doc
    from experiments._common import section_path

    _, root = report
    figures = root / "figures"
    text = (figures / "results.md").read_text()
    for name, _ in results_doc.ORDER:
        section = section_path(figures, name).read_text()
        body = section.split("\n", 1)[1]
        title = body.splitlines()[0]
        assert title in text, name
        reading = [ln for ln in body.splitlines() if ln.startswith("Reading:")]
        for line in reading:  # the reading appears in the opening list and in the section
            assert text.count(line.removeprefix("Reading:").strip()) == 2, name
    for png in figures.glob("*.png"):
        assert f"![{png.name}]({png.name})" in text, png.name
    assert "not generated yet" not in text


def test_an_analysis_command_writes_its_section(tmp_path, monkeypatch, capsys):
    """``python -m experiments.<analysis>`` leaves its section beside its figures, as run_all
    does, so the command the results document names regenerates what the document shows."""
    import sys

    from experiments import inheritance
    from experiments._common import cli, section_path

    monkeypatch.setattr(sys, "argv", ["inheritance", "--profile", "test", "--out", str(tmp_path)])
    cli(inheritance.run, "inheritance")  # named by the module that defines run
    section = section_path(tmp_path, "inheritance").read_text()
    assert section.startswith("<!-- generated by experiments.inheritance (profile test)")
    title = section.split("\n")[1]
    assert title.startswith("## ") and title.removeprefix("## ") in capsys.readouterr().out
