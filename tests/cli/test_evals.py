"""``lineage-lens eval``: typed evaluator options into the library sweep
(:func:`lineage_lens.sweep.gating_sweep` with ``out_dir``), its table in results.csv."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from typer.testing import CliRunner

from lineage_lens.cli import app
from lineage_lens.errors import ConfigError
from lineage_lens.scores import TruthScores


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
    assert list(frame["scores"]) == ["none", "truth"] and (frame["n"] == 2).all()
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
    assert list(zip(frame["scores"], frame["alpha"], strict=True)) == [
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
