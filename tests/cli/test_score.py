from __future__ import annotations

from typer.testing import CliRunner

from lineage_lens.cli import app
from lineage_lens.data import ProbeExample, load_probe_examples
from lineage_lens.scores import TruthScores


def test_probing_split_is_disjoint_from_evaluation():
    examples = load_probe_examples("halueval", n_probe=20, split_seed=0)
    assert len(examples) == 40
    assert all(isinstance(e, ProbeExample) for e in examples)
    assert len({e.source_id for e in examples}) == 20


def test_score_cli_writes_loadable_scores(tiny_dirs, tmp_path):
    out = tmp_path / "scores.npz"
    csv = tmp_path / "scores.csv"
    result = CliRunner().invoke(
        app,
        [
            "score",
            "--model",
            str(tiny_dirs["llama"]),
            "--n",
            "12",
            "--folds",
            "2",
            "--out",
            str(out),
            "--csv",
            str(csv),
            "--device",
            "cpu",
            "--top",
            "3",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = TruthScores.load(out)
    assert scores.shape == (2, 4) and scores.n == 24 and scores.folds == 2
    assert TruthScores.from_csv(csv).shape == (2, 4)
    assert "#1 L" in result.output


def test_score_help_documents_every_option():
    result = CliRunner().invoke(app, ["score", "--help"])
    assert result.exit_code == 0
    for option in (
        "--model",
        "--data",
        "--n",
        "--out",
        "--csv",
        "--batch-size",
        "--folds",
        "--solver",
        "--seed",
        "--device",
    ):
        assert option in result.output
