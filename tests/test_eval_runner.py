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
from lineage_lens.evals.runner import run_sweep
from lineage_lens.scores import TruthScores

ROWS = [
    HaluEvalRow(str(i), "Paris is the capital of France", "what is the capital ?", a, b)
    for i, (a, b) in enumerate([("Paris", "Rome"), ("France", "Italy")])
]
SHORT = "Is the answer hallucinated ? Answer yes or no ."


def test_sweep_writes_results_and_resumes(tiny_llama, tmp_path) -> None:
    scores = TruthScores({"accuracy": np.random.default_rng(0).random((2, 4))}, model="tiny")
    kwargs = dict(rows=ROWS, seeds=(0, 1), instruction=SHORT, progress=False)
    frame = run_sweep(
        "halueval",
        tiny_llama,
        scores=scores,
        alphas=[0, 3],
        controls=["random"],
        out_dir=tmp_path,
        **kwargs,
    )
    assert list(frame["gate"]) == ["none", "truth", "random"]
    assert list(frame["alpha"]) == [0.0, 3.0, 3.0]
    assert (frame["n"] == 4).all() and {"accuracy", "accuracy_std", "f1"} <= set(frame.columns)
    for name in ("results.json", "results.csv", "sweep.png", "cache.jsonl"):
        assert (tmp_path / name).is_file()
    csv = pd.read_csv(tmp_path / "results.csv")
    assert len(csv) == 3
    details = json.loads((tmp_path / "results.json").read_text())
    assert [len(s["groups"]) for s in details["settings"]] == [2, 2, 2]
    n_cached = len((tmp_path / "cache.jsonl").read_text().splitlines())
    again = run_sweep(
        "halueval",
        tiny_llama,
        scores=scores,
        alphas=[0, 3],
        controls=["random"],
        out_dir=tmp_path,
        **kwargs,
    )
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == n_cached
    pd.testing.assert_series_equal(again["accuracy"], frame["accuracy"])


def test_sweep_needs_scores_for_gates(tiny_llama) -> None:
    with pytest.raises(ConfigError, match="Truth Scores"):
        run_sweep("halueval", tiny_llama, alphas=[0, 2], rows=ROWS)
    with pytest.raises(ConfigError, match="unknown task"):
        run_sweep("nope", tiny_llama)  # type: ignore[arg-type]


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
    bad = CliRunner().invoke(app, ["eval", "halueval", "--sweep-alpha", "0,x"])
    assert bad.exit_code != 0 and isinstance(bad.exception, ConfigError)
