"""Sweeps: baseline vs gated vs control, output files, resuming from the cache, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from lineage_lens.cli import app
from lineage_lens.data import HaluEvalRow
from lineage_lens.errors import ConfigError
from lineage_lens.evals.outcomes import HaluEvalJudgement
from lineage_lens.evals.runner import run_sweep
from lineage_lens.scores import TruthScores
from lineage_lens.sweep import GateSettings

ROWS = [
    HaluEvalRow(str(i), "Paris is the capital of France", "what is the capital ?", a, b)
    for i, (a, b) in enumerate([("Paris", "Rome"), ("France", "Italy")])
]
SHORT = "Is the answer hallucinated ? Answer yes or no ."


def test_sweep_writes_results_and_resumes(tiny_llama, tmp_path) -> None:
    scores = TruthScores({"accuracy": np.random.default_rng(0).random((2, 4))}, model="tiny")
    evaluator = HaluEvalJudgement(rows=ROWS, seeds=(0, 1), instruction=SHORT)
    frame = run_sweep(
        evaluator,
        tiny_llama,
        scores=scores,
        alphas=[0, 3],
        controls=["random"],
        out_dir=tmp_path,
        n_resamples=50,
    )
    assert list(frame["gate"]) == ["none", "truth", "random"]
    assert list(frame["alpha"]) == [0.0, 3.0, 3.0]
    assert (frame["n"] == 4).all() and {"accuracy", "accuracy_std", "f1"} <= set(frame.columns)
    assert (
        list(frame.columns[:3]) == ["task", "gate", "alpha"] and (frame["task"] == "halueval").all()
    )
    # the library sweep's paired AUROC changes: vs ungated on the gated rows, vs the control on
    # the Truth Scores' row
    assert np.isnan(frame.loc[0, "auroc_delta"]) and frame.loc[1:, "auroc_delta"].notna().all()
    # point estimates: (truth - ungated) - (control - ungated) = truth - control
    assert frame.loc[1, "auroc_vs_control"] == pytest.approx(
        frame.loc[1, "auroc_delta"] - frame.loc[2, "auroc_delta"], abs=1e-9
    )
    assert frame.loc[[0, 2], "auroc_vs_control"].isna().all()
    for name in ("results.json", "results.csv", "sweep.png", "cache.jsonl"):
        assert (tmp_path / name).is_file()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == 3
    details = json.loads((tmp_path / "results.json").read_text())
    assert [len(s["groups"]) for s in details["settings"]] == [2, 2, 2]
    assert [s["gate"] for s in details["settings"]] == ["none", "truth", "random"]
    n_cached = len((tmp_path / "cache.jsonl").read_text().splitlines())
    again = run_sweep(
        evaluator,
        tiny_llama,
        scores=scores,
        alphas=[0, 3],
        controls=["random"],
        out_dir=tmp_path,
        n_resamples=50,
    )
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == n_cached
    pd.testing.assert_series_equal(again["accuracy"], frame["accuracy"])


def test_sweep_rows_follow_the_alphas_and_show_ungated_only_when_asked(tiny_llama) -> None:
    """Alpha by alpha the Truth Scores then each control; no 0 among the alphas: no ungated
    row (it is still evaluated: the changes are against it)."""
    scores = TruthScores({"accuracy": np.random.default_rng(2).random((2, 4))}, model="tiny")
    evaluator = HaluEvalJudgement(rows=ROWS, seeds=(0,), instruction=SHORT)
    frame = run_sweep(
        evaluator,
        tiny_llama,
        scores=scores,
        alphas=[3, 1],
        gate=GateSettings(norm="minmax"),
        controls=["random", "inverse"],
        n_resamples=20,
    )
    assert list(zip(frame["gate"], frame["alpha"], strict=True)) == [
        ("truth", 3.0),
        ("random", 3.0),
        ("inverse", 3.0),
        ("truth", 1.0),
        ("random", 1.0),
        ("inverse", 1.0),
    ]
    assert frame["auroc_delta"].notna().all() and (frame["wall_s"] > 0).all()
    only = run_sweep(evaluator, tiny_llama, alphas=[0])
    assert list(only["gate"]) == ["none"] and only["auroc_delta"].isna().all()


def test_sweep_needs_scores_for_gates(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="Truth Scores"):
        run_sweep(HaluEvalJudgement(rows=ROWS), tiny_llama, alphas=[0, 2])
    with pytest.raises(ConfigError, match="Truth Scores"):
        run_sweep(HaluEvalJudgement(rows=ROWS), tiny_llama, controls=["random"])
    with pytest.raises(ConfigError, match="unknown task"):
        run_sweep("nope", tiny_llama)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="gating_sweep"):
        run_sweep(object(), tiny_llama)  # type: ignore[arg-type]


def test_cli_halueval_baseline_and_gate(tiny_dirs, tmp_path) -> None:
    scores = TruthScores({"accuracy": np.random.default_rng(1).random((2, 4))}, model="tiny")
    path = scores.save(tmp_path / "scores.npz")
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "eval",
            "halueval",
            "--model",
            str(tiny_dirs["llama"]),
            "--gate",
            str(path),
            "--alpha",
            "2",
            "--seeds",
            "0",
            "--limit",
            "2",
            "--out-dir",
            str(out),
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    assert list(frame["gate"]) == ["none", "truth"] and (frame["n"] == 2).all()
    assert frame["auroc_delta"].isna().tolist() == [True, False]  # the library sweep's changes
    bad = CliRunner().invoke(app, ["eval", "halueval", "--sweep-alpha", "0,x"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)


def test_cli_pope_sweeps_gate_and_control_through_the_library(
    tiny_dirs, tiny_llava, tmp_path
) -> None:
    """``eval pope``: typed options (PopeAnswers, GateSettings) into the library sweep; the
    paired POPE-accuracy changes land in results.csv."""
    from PIL import Image

    from lineage_lens.models import head_geometry

    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(
            images / f"im{i}.png"
        )
    questions = tmp_path / "questions.json"
    rows = [(0, "yes"), (0, "no"), (1, "yes"), (1, "no")]
    questions.write_text(
        "".join(
            json.dumps(
                {"question_id": q, "image": f"im{im}.png", "text": "is there a cat ?", "label": y}
            )
            + "\n"
            for q, (im, y) in enumerate(rows)
        )
    )
    geo = head_geometry(tiny_llava)
    scores = TruthScores({"accuracy": rng.random((geo.n_layers, geo.n_heads))}, model="tiny")
    gate = scores.save(tmp_path / "scores.npz")
    out = tmp_path / "out"
    argv = ["eval", "pope", "--images", str(images), "--model", str(tiny_dirs["llava"])]
    argv += ["--splits", str(questions), "--gate", str(gate), "--sweep-alpha", "0,2,2"]
    argv += ["--control", "random,random", "--out-dir", str(out), "--device", "cpu"]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "results.csv")
    # repeated alphas and controls are taken once, as each setting's row was before
    assert list(zip(frame["gate"], frame["alpha"], strict=True)) == [
        ("none", 0.0),
        ("truth", 2.0),
        ("random", 2.0),
    ]
    assert (frame["pope_n"] == 4).all() and frame["pope_accuracy_delta"].isna().tolist() == [
        True,
        False,
        False,
    ]
    assert frame["pope_accuracy_vs_control"].notna().tolist() == [False, True, False]
    assert "pope_accuracy_delta" in result.output
