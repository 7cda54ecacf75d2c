"""``lineage_report`` / ``lineage-lens report`` on tiny families: complete, equal to the library
functions it calls, resumable, multimodal, and with one-line errors for bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lineage_lens.errors import DataError
from lineage_lens.report import LineageReport, ReportPlan, lineage_report

#: Tiny sizes: 8 HaluEval probing rows, 2 folds, 4 evaluation rows, one control seed.
PLAN = ReportPlan(
    n_probe=8,
    folds=2,
    batch_size=8,
    eval_rows=4,
    control_seeds=(0,),
    n_resamples=100,
    n_evidence=4,
)
FILES = (
    "REPORT.md",
    "statistics.json",
    "report.json",
    "scores.csv",
    "inheritance.csv",
    "drift.csv",
    "cka.csv",
    "evidence.csv",
    "gating.csv",
    "transfer.csv",
    *(f"{k}.png" for k in ("inheritance", "heatmaps", "drift", "cka", "evidence", "gating")),
)


def perturbed_copy(src: Path, dst: Path, scale: float, seed: int) -> Path:
    """``src``'s checkpoint with Gaussian noise of ``scale`` added to every weight: a descendant."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    gen = torch.Generator().manual_seed(seed)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        noisy = {k: v + scale * torch.randn(v.shape, generator=gen) for k, v in tensors.items()}
        save_file(noisy, f, metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def family(tiny_dirs, tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama ancestor, two noisy descendants and an unrelated same-shape control."""
    from lineage_lens.testing import make_tiny_model

    root = tmp_path_factory.mktemp("report_family")
    anc = tiny_dirs["llama"]
    return {
        "anc": anc,
        "ft": perturbed_copy(anc, root / "ft", 0.002, seed=1),
        "ft2": perturbed_copy(anc, root / "ft2", 0.004, seed=2),
        "ctrl": make_tiny_model(root / "ctrl", "llama", seed=7),
    }


@pytest.fixture(scope="module")
def full_report(family, tmp_path_factory) -> tuple[LineageReport, Path, list]:
    """The report of the family, with every model load recorded: each load checks that the
    models loaded before it were released (one model in memory at a time)."""
    import gc
    import weakref

    import lineage_lens.models

    real_load = lineage_lens.models.load_model
    loaded: list[weakref.ref] = []

    def load_one(*args, **kwargs):
        gc.collect()
        assert all(ref() is None for ref in loaded), "a model is still alive"
        model = real_load(*args, **kwargs)
        loaded.append(weakref.ref(model))
        return model

    out = tmp_path_factory.mktemp("report") / "out"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lineage_lens.models, "load_model", load_one)
        rep = lineage_report(
            family["anc"],
            [family["ft"]],
            controls=[family["ctrl"]],
            names=["anc", "ft", "ctrl"],
            out=out,
            plan=PLAN,
            progress=False,
        )
    return rep, out, loaded


def test_models_are_loaded_one_at_a_time(full_report):
    import gc

    _, _, loaded = full_report
    assert len(loaded) == 3  # ancestor, descendant, control: once each
    gc.collect()
    assert all(ref() is None for ref in loaded)


def test_report_writes_every_file_and_the_library_statistics(full_report):
    from lineage_lens.activations import HeadActivations
    from lineage_lens.cka import head_cka
    from lineage_lens.lineage import compare_scores
    from lineage_lens.report import evidence_statistic
    from lineage_lens.weights import weight_drift

    rep, out, _ = full_report
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert [m.role for m in rep.models] == ["ancestor", "descendant", "control"]
    frame = rep.to_frame()
    assert list(frame["model"]) == ["ft", "ctrl"]
    # inheritance: compare_scores on the same scores with the same settings
    anc = rep.scores["anc"]
    for name in ("ft", "ctrl"):
        lib = compare_scores(
            anc,
            rep.scores[name],
            name_a="anc",
            name_b=name,
            ks=(2,),  # the report's top-k (a k above the 8 heads is a ConfigError)
            n_resamples=PLAN.n_resamples,
            n_permutations=PLAN.n_resamples,
            seed=PLAN.seed,
        )
        row = frame.set_index("model").loc[name]
        assert row["pearson_r"] == pytest.approx(lib.pearson.r)
        assert row["pearson_p_permutation"] == pytest.approx(lib.pearson.p_permutation)
        assert row["spearman_r"] == pytest.approx(lib.spearman.r)
        assert row["topk_overlap"] == lib.topk.set_index("k").loc[2, "overlap"]
    # the scores are those of 16 examples (8 rows x 2), 2 folds
    assert anc.n == 16 and anc.folds == 2
    # the light fine-tune's activations stay far closer to the ancestor's than the control's
    # (the tiny random models' probes are near chance, so their scores' r is noise)
    assert rep.cka["ft"].values.mean() > 0.9 > rep.cka["ctrl"].values.mean()
    # weight drift: weights.weight_drift of the two checkpoints
    lib_drift = weight_drift(rep.models[0].source, rep.models[1].source)
    drift = pd.read_csv(out / "drift.csv")
    ft = drift[drift["descendant"] == "ft"]
    np.testing.assert_allclose(ft["q"], lib_drift.heads["q_rel"].mean(axis=1), rtol=1e-6)
    ctrl_drift = drift[drift["descendant"] == "ctrl"][["q", "k", "v", "o"]].to_numpy()
    assert ft[["q", "k", "v", "o"]].to_numpy().max() < ctrl_drift.min()
    # CKA: cka.head_cka of the cached activations equals the report's
    acts = rep.meta["activations"]
    assert HeadActivations.load(acts["ft"]).acts.shape == (16, 2, 4, 8)  # streamed to a memmap
    cka = pd.read_csv(out / "cka.csv")
    assert set(cka["model"]) == {"ft", "ctrl"}
    lib_cka = head_cka(acts["anc"], acts["ft"], debiased=True, progress=False)
    np.testing.assert_allclose(rep.cka["ft"].values, lib_cka.values)
    np.testing.assert_allclose(cka.loc[cka["model"] == "ft", "cka"], lib_cka.values.ravel())
    # evidence: top-k minus bottom-k as evidence_statistic computes it
    for name, stats in rep.evidence_stats.items():
        lib_ev = evidence_statistic(
            rep.evidence[name], rep.scores[name], 2, n_resamples=PLAN.n_resamples
        )
        assert stats["delta"] == pytest.approx(lib_ev["delta"])
    # transfer: the inherited gate vs the control's mean over its seeds, on the same rows
    g = rep.gating
    assert set(zip(g["model"], g["scores"], strict=True)) == {
        ("anc", "none"),
        ("anc", "own"),
        ("ft", "none"),
        ("ft", "inherited"),
        ("ft", "own"),
        ("ft", "random control"),
    }
    assert (g["n"] == PLAN.eval_rows).all()
    inh = g[(g["model"] == "ft") & (g["scores"] == "inherited")].iloc[0]
    ctrl = g[(g["model"] == "ft") & (g["scores"] == "random control")]
    assert inh["auroc_vs_control"] == pytest.approx(inh["auroc"] - ctrl["auroc"].mean(), abs=1e-6)
    t = rep.transfer().iloc[0]
    assert t["inherited_vs_control"] == pytest.approx(inh["auroc_vs_control"])
    # the report opens with one measured line per question, then the command and versions
    text = (out / "REPORT.md").read_text()
    head = text.split("Command:")[0]
    for question in ("Inherited", "Weights stay close", "evidence", "Transfer"):
        assert question in head
    r = frame.set_index("model").loc["ft", "pearson_r"]
    assert f"ft r = {r:.3f}" in head
    assert "transformer-lens" in text and "lineage_report(" in text
    # read back from the folder
    back = LineageReport.load(out)
    pd.testing.assert_frame_equal(back.to_frame(), frame)
    assert back.findings() == rep.findings()
    assert rep.plot().axes and rep.plot("cka").axes


def test_report_resumes_and_adds_a_descendant_with_only_its_steps(family, tmp_path, monkeypatch):
    import lineage_lens.pipeline
    import lineage_lens.sweep

    out = tmp_path / "out"
    kw = dict(out=out, plan=PLAN, progress=False)
    real_sweep = lineage_lens.sweep.gating_sweep
    real_score = lineage_lens.pipeline.score_model

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    # an interrupted run: it stops in the ancestor's gating sweep, after scores and evidence
    monkeypatch.setattr(lineage_lens.sweep, "gating_sweep", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        lineage_report(family["anc"], [family["ft"]], names=["anc", "ft"], **kw)
    monkeypatch.setattr(lineage_lens.sweep, "gating_sweep", real_sweep)
    first = lineage_report(family["anc"], [family["ft"]], names=["anc", "ft"], **kw)
    assert "anc: Truth Scores (text)" not in first.meta["computed"]
    assert "anc: Truth Scores (text)" in first.meta["reused"]
    assert "anc: gating sweep" in first.meta["computed"]
    # a re-run computes nothing: every model step would fail if called
    for module, name in (
        (lineage_lens.pipeline, "score_model"),
        (lineage_lens.sweep, "gating_sweep"),
    ):
        monkeypatch.setattr(module, name, broken)
    again = lineage_report(family["anc"], [family["ft"]], names=["anc", "ft"], **kw)
    assert again.meta["computed"] == []
    pd.testing.assert_frame_equal(again.to_frame(), first.to_frame())
    # one more descendant: only its own steps run
    monkeypatch.setattr(lineage_lens.pipeline, "score_model", real_score)
    monkeypatch.setattr(lineage_lens.sweep, "gating_sweep", real_sweep)
    more = lineage_report(
        family["anc"], [family["ft"], family["ft2"]], names=["anc", "ft", "ft2"], **kw
    )
    assert more.meta["computed"]
    assert all(step.startswith("ft2:") for step in more.meta["computed"]), more.meta["computed"]
    assert set(more.to_frame()["model"]) == {"ft", "ft2"}


def test_report_on_an_mllm_family(tiny_dirs, tmp_path):
    """A text ancestor and a LLaVA descendant (its language model has the same head layout):
    scores in the text-only condition, inheritance, CKA, evidence and the HaluEval transfer."""
    from lineage_lens.testing import make_tiny_model

    anc = make_tiny_model(tmp_path / "lm", "llama", n_kv_heads=2, seed=4)
    rep = lineage_report(anc, [tiny_dirs["llava"]], out=tmp_path / "out", plan=PLAN, progress=False)
    assert rep.models[1].multimodal and not rep.models[0].multimodal
    assert rep.scores["llava"].meta["condition"] == "text_only"
    assert set(rep.to_frame()["model"]) == {"llava"}
    assert "llava" in rep.cka and "llava" in rep.evidence_stats
    assert "llava" in set(rep.gating["model"])
    assert (tmp_path / "out" / "REPORT.md").is_file()


def test_image_data_adds_the_image_condition_for_the_mllm(tiny_dirs, tmp_path):
    """Probing examples that carry images: the LLaVA descendant is scored text-only (its primary
    map) and with each example's image, and both maps are compared with the text ancestor's."""
    from PIL import Image

    from lineage_lens.data import ProbeExample
    from lineage_lens.testing import make_tiny_model

    rng = np.random.default_rng(0)
    examples = []
    objects = ("cat", "dog", "car", "tree", "house", "book", "table", "chair")
    colours = ("red", "blue", "green")
    for i, obj in enumerate(objects):
        image = Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
        right, wrong = colours[i % 3], colours[(i + 1) % 3]
        for label, answer in ((1, right), (0, wrong)):
            ctx = f"the {obj} is {right} ."
            examples.append(ProbeExample(ctx, f"what is the {obj} ?", answer, label, obj, image))
    anc = make_tiny_model(tmp_path / "lm", "llama", n_kv_heads=2, seed=4)
    plan = ReportPlan(**{**PLAN.__dict__, "n_probe": 0})
    rep = lineage_report(
        anc, [tiny_dirs["llava"]], out=tmp_path / "out", plan=plan, data=examples, progress=False
    )
    assert rep.scores["llava"].meta["condition"] == "text_only"
    assert rep.extra_scores["llava [image]"].meta["condition"] == "image"
    assert rep.scores["lm"].meta["condition"] == "text"
    assert set(rep.comparisons) == {"llava", "llava [image]"}
    assert "llava [image]" in set(rep.to_frame()["model"])


def test_a_dataset_without_the_needed_columns_is_a_clear_data_error(tmp_path):
    import datasets

    ds = datasets.Dataset.from_dict({"question": ["q?"], "answer": ["a"]})
    with pytest.raises(DataError, match="label"):
        lineage_report("unused-a", ["unused-b"], out=tmp_path / "out", data=ds)
    assert not (tmp_path / "out").exists()


def test_cli_report_runs_end_to_end(family, tmp_path):
    from typer.testing import CliRunner

    from lineage_lens.cli import app

    out = tmp_path / "out"
    args = ["report", "--ancestor", str(family["anc"]), "--descendant", str(family["ft"])]
    args += ["--out", str(out), "--n", "8", "--eval-rows", "4", "--device", "cpu"]
    args += ["--resamples", "100", "--control-seeds", "0"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "Inherited Truth Scores" in result.output and "REPORT.md" in result.output
    assert "lineage-lens report --ancestor" in (out / "REPORT.md").read_text()


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--profile", "fast"], "unknown --profile 'fast'"),
        (["--eval", "mmlu"], "unknown --eval 'mmlu'"),
        (["--eval", "pope"], "--eval pope needs --eval-images"),
        (["--data", "{tmp}/missing.jsonl"], "no such file"),
        (["--data", "{tmp}/bad.jsonl"], "bad.jsonl:1: missing field 'label'"),
        (["--n", "-1"], "--n must be an integer >= 0"),
        (["--control-seeds", "a,b"], "--control-seeds 'a,b': give comma-separated integers"),
    ],
)
def test_cli_report_bad_input_is_one_line_and_exit_2(extra, pattern, tmp_path, capsys, monkeypatch):
    import json

    from tests.test_reliability import assert_one_line_error, run_cli

    line = {"context": "c", "question": "q", "answer": "a"}  # no label
    (tmp_path / "bad.jsonl").write_text(json.dumps(line) + "\n")
    argv = ["report", "--ancestor", "a", "--descendant", "b", "--out", str(tmp_path / "o")]
    argv += [x.replace("{tmp}", str(tmp_path)) for x in extra]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)


@pytest.mark.parametrize(
    ("evaluation", "metric"), [("pope", "pope_accuracy"), ("chair", "chair_i")]
)
def test_report_image_eval_transfer_on_an_mllm_descendant(tiny_dirs, tmp_path, evaluation, metric):
    """``evaluation="pope"`` / ``"chair"`` on rendered scenes: the LLaVA descendant is gated with
    the text ancestor's scores, its own and a random control, the transfer reads the image
    metric, and the text-only ancestor's image sweep is skipped with its reason."""
    from lineage_lens.testing import make_tiny_model
    from lineage_lens.zoo.images import write_eval_set

    anc = make_tiny_model(tmp_path / "lm", "llama", n_kv_heads=2, seed=4)
    eval_dir = tmp_path / "eval"
    write_eval_set(eval_dir, n=4, size=16)
    rep = lineage_report(
        anc,
        [tiny_dirs["llava"]],
        out=tmp_path / "out",
        plan=PLAN,
        evaluation=evaluation,
        eval_dir=eval_dir,
        progress=False,
    )
    gated = rep.gating[rep.gating["model"] == "llava"]
    assert {"none", "inherited", "own", "random control"} <= set(gated["scores"])
    assert gated[metric].between(0, 1).all()
    transfer = rep.transfer()
    assert list(transfer["model"]) == ["llava"] and transfer.notna().any(axis=None)
    assert any(evaluation in reason.lower() for reason in rep.skipped.values())
    assert "REPORT.md" in {p.name for p in (tmp_path / "out").iterdir()}


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_holds_it(family, tmp_path):
    """Two reports writing one folder would write the same step files and activation memmaps:
    while another process holds the folder's lock, a run stops at once with an OutputError, and
    once the lock is free the folder is usable again."""
    import subprocess
    import sys

    from lineage_lens.errors import OutputError

    out = tmp_path / "out"
    (out / "cache").mkdir(parents=True)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from filelock import FileLock; lock = FileLock(sys.argv[1]); "
            "lock.acquire(); print('held', flush=True); sys.stdin.read()",
            str(out / "cache" / ".lock"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputError, match="another lineage report is running"):
            lineage_report(family["anc"], [family["ft"]], out=out, plan=PLAN, progress=False)
        assert sorted(p.name for p in (out / "cache").iterdir()) == [".lock"]
    finally:
        holder.communicate("")
    from lineage_lens.report.cache import StepCache

    with StepCache(out / "cache").lock():  # released with its process: free again
        pass


def test_chair_evaluator_is_keyed_by_the_contents_of_its_ground_truth_and_vocabulary(tmp_path):
    """Editing gt_objects.json or synonyms.txt in place changes the gating cache key (the folder
    path alone would reuse captions scored against the old ground truth)."""
    from PIL import Image

    from lineage_lens.report.run import make_evaluator

    (tmp_path / "gt_objects.json").write_text('{"0": ["dog"]}')
    (tmp_path / "synonyms.txt").write_text("dog\ncat\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "0.png")  # the image captioned (its bytes are keyed)
    ev, before = make_evaluator("chair", PLAN, exclude_ids=None, eval_dir=tmp_path)
    assert ev.vocabulary.classes == ["cat", "dog"]
    (tmp_path / "gt_objects.json").write_text('{"0": ["cat"]}')
    _, gt_edited = make_evaluator("chair", PLAN, exclude_ids=None, eval_dir=tmp_path)
    (tmp_path / "synonyms.txt").write_text("dog\ncat\nbird\n")
    _, vocab_edited = make_evaluator("chair", PLAN, exclude_ids=None, eval_dir=tmp_path)
    assert before != gt_edited != vocab_edited != before
    (tmp_path / "synonyms.txt").unlink()
    ev, _ = make_evaluator("chair", PLAN, exclude_ids=None, eval_dir=tmp_path)
    assert ev.vocabulary is None  # COCO's, the default
