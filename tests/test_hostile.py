"""Hostile inputs (issue 24, items 5-7): each is one clear line and exit 2 on the command line and
a :class:`~lineage_lens.errors.LineageLensError` in the library, never a traceback; a report
never judges a step from a constant score map or a NaN statistic; identical examples never sit on
both sides of a cross-validation fold."""

from __future__ import annotations

import json
import re
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from lineage_lens.errors import ConfigError, DataError, ModelLoadError
from tests.test_reliability import assert_one_line_error, run_cli

NOT_UTF8 = b"\xff\xfe not utf-8"


def cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """Run ``lineage-lens ARGV`` through the real entry point (models load as usual)."""
    from lineage_lens.cli import main

    monkeypatch.setattr(sys, "argv", ["lineage-lens", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


@pytest.fixture
def llama_copy(tiny_dirs, tmp_path) -> Path:
    """A copy of the tiny Llama that a test may break."""
    return Path(shutil.copytree(tiny_dirs["llama"], tmp_path / "broken"))


def truncate(path: Path) -> Path:
    """Cut ``path`` to half its size, as an interrupted download or save leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------
# 5. Raw tracebacks: non-UTF-8 CHAIR files
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["captions", "synonyms"])
def test_non_utf8_chair_files_are_one_line_data_errors(which, tmp_path, capsys, monkeypatch):
    from lineage_lens.evals.chair import ObjectVocabulary, load_captions

    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps([{"image_id": "1", "caption": "a dog"}]))
    synonyms = tmp_path / "synonyms.txt"
    synonyms.write_text("dog, puppy\n")
    bad = caps if which == "captions" else synonyms
    bad.write_bytes(bad.read_bytes().rstrip() + b"\n" + NOT_UTF8)  # byte 0xff on line 2
    with pytest.raises(DataError, match=r":2: .*not UTF-8.*save it as UTF-8") as info:
        (load_captions if which == "captions" else ObjectVocabulary.from_synonyms_file)(bad)
    assert info.value.path == str(bad) and info.value.line == 2
    argv = ["eval", "chair", "--captions", str(caps), "--synonyms", str(synonyms)]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, rf"{bad.name}:2: .*byte \d+ is 0xff.*save it as UTF-8")


# --------------------------------------------------------------------------------------------
# 5. Raw tracebacks: half-written safetensors, cut JSON configs
# --------------------------------------------------------------------------------------------


def test_truncated_safetensors_is_a_model_load_error_naming_the_file(llama_copy, tiny_dirs):
    from lineage_lens.models import load_model
    from lineage_lens.weights import weight_drift

    weights = truncate(llama_copy / "model.safetensors")
    with pytest.raises(ModelLoadError, match="model.safetensors is not a complete safetensors"):
        load_model(llama_copy, device="cpu")
    with pytest.raises(ModelLoadError, match="download or save the model again"):
        weight_drift(tiny_dirs["llama"], llama_copy)  # reads the safetensors files directly
    assert weights.is_file()


def test_truncated_safetensors_in_score_and_report_is_one_line(
    llama_copy, tiny_dirs, tmp_path, capsys, monkeypatch
):
    truncate(llama_copy / "model.safetensors")
    out = tmp_path / "scores.npz"
    argv = ["score", "--model", str(llama_copy), "--n", "4", "--folds", "2", "--device", "cpu"]
    code, err = cli([*argv, "--out", str(out)], capsys, monkeypatch)
    assert_one_line_error(code, err, r"broken/model.safetensors is not a complete safetensors")
    assert not out.exists()
    report = tmp_path / "report"
    argv = ["report", "--ancestor", str(tiny_dirs["llama"]), "--descendant", str(llama_copy)]
    code, err = cli([*argv, "--out", str(report), "--device", "cpu"], capsys, monkeypatch)
    assert_one_line_error(code, err, r"broken/model.safetensors is not a complete safetensors")
    assert not report.exists()  # checked before any step runs


@pytest.mark.parametrize(
    ("command", "name"),
    [
        ("report", "config.json"),  # score already said this one in a line; report read it raw
        ("report", "tokenizer_config.json"),
        ("score", "tokenizer_config.json"),
        ("score", "tokenizer.json"),
    ],
)
def test_cut_json_config_is_one_line_in_score_and_report(
    command, name, llama_copy, tiny_dirs, tmp_path, capsys, monkeypatch
):
    truncate(llama_copy / name)
    if command == "score":
        argv = ["score", "--model", str(llama_copy), "--out", str(tmp_path / "s.npz")]
        argv += ["--folds", "2"]
    else:
        argv = ["report", "--ancestor", str(tiny_dirs["llama"]), "--descendant", str(llama_copy)]
        argv += ["--out", str(tmp_path / "report")]
    code, err = cli([*argv, "--n", "4", "--device", "cpu"], capsys, monkeypatch)
    assert_one_line_error(code, err, rf"broken/{name} is not valid JSON")
    assert "download or save the model again" in err
    assert not (tmp_path / "report").exists()  # every model is checked before any step


# --------------------------------------------------------------------------------------------
# 5. Raw tracebacks: seeds outside numpy's range
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", ["-1", str(2**33)])
@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["score", "--model", "m", "--seed", "{seed}"], "--seed"),
        (["compare", "{tmp}/a.npz", "{tmp}/b.npz", "--seed", "{seed}"], "--seed"),
        (
            [
                "gate",
                "--scores",
                "{tmp}/a.npz",
                "--alpha",
                "1",
                "--prompt",
                "p",
                "--seed",
                "{seed}",
            ],
            "--seed",
        ),
        (["eval", "halueval", "--model", "m", "--seeds", "0,{seed}"], "a --seeds value"),
        (
            [
                "report",
                "--ancestor",
                "a",
                "--descendant",
                "b",
                "--out",
                "{tmp}/o",
                "--control-seeds",
                "0,{seed}",
            ],
            "a --control-seeds value",
        ),
    ],
)
def test_cli_seeds_outside_numpys_range_are_one_line(
    argv, option, seed, tmp_path, capsys, monkeypatch
):
    _score_files(tmp_path)  # a.npz and b.npz exist: only the seed is wrong
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{seed}", seed) for a in argv]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, rf"{option} must be an integer from 0 to 4294967295")


@pytest.mark.parametrize("seed", [-1, 2**33, 1.5])
def test_library_seeds_outside_numpys_range_are_config_errors(seed):
    from lineage_lens.data import split_probe_eval
    from lineage_lens.gating import control_scores
    from lineage_lens.lineage import correlation_with_ci
    from lineage_lens.probing import fit_truth_scores
    from lineage_lens.report import ReportPlan
    from lineage_lens.stats import bootstrap_ci

    rng = np.random.default_rng(0)
    scores = rng.random((2, 4))
    calls = [
        lambda: control_scores(scores, "random", seed=seed),
        lambda: split_probe_eval([Row(i) for i in range(10)], n_probe=5, seed=seed),
        lambda: correlation_with_ci(scores.ravel(), scores.ravel()[::-1], seed=seed),
        lambda: bootstrap_ci(np.mean, [rng.random(10)], n_resamples=20, seed=seed),
        lambda: ReportPlan(seed=seed).check(),
        lambda: ReportPlan(control_seeds=(0, seed)).check(),
        lambda: fit_truth_scores(
            rng.standard_normal((20, 1, 2, 3)), np.arange(20) % 2, seed=seed, progress=False
        ),
    ]
    for call in calls:
        with pytest.raises(ConfigError, match="from 0 to 4294967295"):
            call()


class Row:
    """A source row to split."""

    def __init__(self, i: int) -> None:
        self.source_id = str(i)


# --------------------------------------------------------------------------------------------
# 5. Raw tracebacks: PIL's decompression-bomb guard
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [1000, 3000])  # error (> 2x limit) and warning (> limit)
def test_decompression_bomb_is_a_data_error_naming_file_and_limit(limit, tmp_path, monkeypatch):
    from PIL import Image

    from lineage_lens.images import VisionSettings, load_pixel_values

    path = tmp_path / "huge.png"
    Image.new("RGB", (64, 64), "red").save(path)  # 4096 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    settings = VisionSettings(image_size=16, patch_size=8, n_image_tokens=4, image_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(DataError, match=r"huge.png: .*decompression bomb") as info:
            load_pixel_values([path], settings)
    message = str(info.value)
    assert "4096 pixels" in message and "PIL.Image.MAX_IMAGE_PIXELS" in message
    assert f"limit of {limit if limit == 3000 else 2 * limit} pixels" in message


# --------------------------------------------------------------------------------------------
# 6. Verdicts from nothing
# --------------------------------------------------------------------------------------------


def flat_copy(src: Path, dst: Path) -> Path:
    """``src`` with every attention input norm zeroed: attention reads zeros, every head's hook_z
    is 0 for every prompt, so its Truth Score map is constant and its CKA undefined."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    for f in dst.glob("*.safetensors"):
        tensors = load_file(f)
        flat = {k: torch.zeros_like(v) if "input_layernorm" in k else v for k, v in tensors.items()}
        save_file(flat, f, metadata={"format": "pt"})
    return dst


def test_report_skips_every_step_judged_from_a_constant_score_map(tiny_dirs, tmp_path):
    from lineage_lens.report import lineage_report
    from tests.report.test_report import PLAN

    flat = flat_copy(tiny_dirs["llama"], tmp_path / "flat")
    out = tmp_path / "report"
    rep = lineage_report(
        flat, [tiny_dirs["llama"]], out=out, plan=PLAN, device="cpu", progress=False
    )
    assert np.ptp(rep.scores["flat"].accuracy) == 0  # the constant map the test is about
    skipped = rep.skipped
    for step in ("inheritance llama", "cka llama", "evidence flat", "gating flat", "gating llama"):
        assert step in skipped, (step, skipped)
    assert "constant" in skipped["evidence flat"] and "constant" in skipped["gating llama"]
    assert "NaN" in skipped["cka llama"]
    assert "flat" not in rep.evidence_stats and "llama" in rep.evidence_stats
    assert rep.cka == {} and rep.transfer().empty
    findings = "\n".join(rep.findings())
    assert "**Transfer** (not measured: gating" in findings
    assert "**Per-head CKA with flat** (not measured: cka llama" in findings
    assert "**Inherited Truth Scores** (not measured: inheritance llama" in findings
    text = (out / "REPORT.md").read_text()
    assert re.search(r"\bnan\b", text) is None  # a number printed as nan (not the word NaN)
    assert "flat +" not in text and "flat −" not in text  # no statistic of the flat map
    assert "- evidence flat: the Truth Score map of flat is constant" in text


def _score_files(tmp_path: Path) -> list[str]:
    from lineage_lens.scores import TruthScores

    rng = np.random.default_rng(0)
    files = []
    for name in ("a", "b"):
        path = tmp_path / f"{name}.npz"
        TruthScores({"accuracy": rng.random((2, 4))}, model=name).save(path)
        files.append(str(path))
    return files


@pytest.mark.parametrize(
    ("top_k", "pattern"),
    [
        ("-3", r"--top-k must be an integer >= 1, got -3"),
        ("2,100", "top-k size 100 .* heads \\(8\\)"),
    ],
)
def test_compare_rejects_top_k_out_of_range(top_k, pattern, tmp_path, capsys, monkeypatch):
    argv = ["compare", *_score_files(tmp_path), "--top-k", top_k]
    code, _, err = run_cli(
        [*argv, "--n-resamples", "10", "--n-permutations", "10"], capsys, monkeypatch
    )
    assert_one_line_error(code, err, pattern)


def test_library_rejects_top_k_out_of_range_and_defaults_fit_the_heads(tmp_path):
    from lineage_lens.lineage import compare_many, compare_scores, topk_overlap

    a, b = np.random.default_rng(1).random((2, 2, 4))
    fast = {"n_resamples": 10, "n_permutations": 10}
    for ks in [(-3,), (0,), (9,), (2.5,)]:
        with pytest.raises(ConfigError, match="top-k size"):
            compare_scores(a, b, ks=ks, **fast)
        with pytest.raises(ConfigError, match="top-k size"):
            topk_overlap(a, b, ks=ks)
        with pytest.raises(ConfigError, match="top-k size"):
            compare_many({"a": a, "b": b}, ks=ks, **fast)
    assert list(compare_scores(a, b, **fast).topk["k"]) == []  # 8 heads: no default k fits
    assert list(compare_scores(a, b, ks=(8, 2), **fast).topk["k"]) == [8, 2]


# --------------------------------------------------------------------------------------------
# 7. Exact duplicates never straddle a fold
# --------------------------------------------------------------------------------------------


def copied_noise(unique: int = 40, copies: int = 8, d: int = 32, seed: int = 0):
    """Pure noise examples with random labels, each copied ``copies`` times with its label."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((unique, 2, 4, d)).astype(np.float32)
    labels = rng.permutation(np.arange(unique) % 2)
    rows = np.repeat(np.arange(unique), copies)
    return base[rows], labels[rows], rows


@pytest.mark.parametrize("solver", ["newton", "adamw", "truthprobe"])
def test_eight_copies_of_noise_score_near_chance(solver):
    from lineage_lens.probing import fit_truth_scores

    x, y, _ = copied_noise()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = fit_truth_scores(x, y, solver=solver, progress=False)
    assert scores.accuracy.mean() < 0.7  # 0.99 when copies sit on both sides of a fold
    assert scores.meta["n_groups"] == 40
    assert any("duplicate another example exactly" in str(w.message) for w in caught)  # kept


def test_example_keys_join_copies_whose_activations_differ(tmp_path):
    """Copies of one prompt captured in different batches may differ in the last bits; their
    prompt keys still put them in one fold, and in one group with the user's groups."""
    from lineage_lens.probing import fit_truth_scores

    x, y, rows = copied_noise()
    x = x + 1e-6 * np.random.default_rng(1).standard_normal(x.shape).astype(np.float32)
    keys = [f"prompt {r}" for r in rows]
    for solver in ("newton", "truthprobe"):
        with pytest.warns(UserWarning, match="duplicate another example exactly"):
            scores = fit_truth_scores(x, y, solver=solver, example_keys=keys, progress=False)
        assert scores.accuracy.mean() < 0.7 and scores.meta["n_groups"] == 40
    # user groups that split every set of copies in two: the union keeps each set together
    groups = np.arange(len(y)) % 2 + 2 * rows
    with pytest.warns(UserWarning, match="duplicate an example in another group"):
        scores = fit_truth_scores(x, y, groups=groups, example_keys=keys, progress=False)
    assert scores.accuracy.mean() < 0.7 and scores.meta["n_groups"] == 40
    assert "identical examples joined" in scores.meta["cv"]


def test_example_keys_are_prompt_label_and_image_content(tmp_path):
    from PIL import Image

    from lineage_lens.data import ProbeExample, example_keys

    Image.new("RGB", (4, 4), "red").save(tmp_path / "a.png")
    shutil.copy(tmp_path / "a.png", tmp_path / "copy.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "b.png")

    def ex(label: int = 1, image: object = None, source: str = "s") -> ProbeExample:
        return ProbeExample("ctx", "q?", "ans", label, source, image=image)

    k = example_keys(
        [
            ex(source="s1"),
            ex(source="s2"),  # a copy under another source id
            ex(label=0),
            ex(image=tmp_path / "a.png"),
            ex(image=tmp_path / "copy.png"),  # the same bytes in another file
            ex(image=tmp_path / "b.png"),
            ex(image=Image.open(tmp_path / "a.png").convert("RGB")),
            ex(image=Image.new("RGB", (4, 4), "red")),  # the same pixels, in memory
        ]
    )
    assert k[0] == k[1] and k[0] != k[2]
    assert k[3] == k[4] != k[5] and k[0] != k[3]
    assert k[6] == k[7] != k[5]
    text_only = example_keys(
        [ex(image=tmp_path / "a.png"), ex(image=tmp_path / "b.png")], images=False
    )
    assert text_only[0] == text_only[1] == k[0]
