"""Hostile-input reliability (issue 20): each case is a clear LineageLensError, never a traceback,
a silent wrong result or a half-written file."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lineage_lens.errors import ConfigError, DataError, OutputError
from lineage_lens.testing import make_tiny_model

# ------------------------------------------------------------------ 1. eval cache key by content


@pytest.fixture(scope="module")
def same_name_models(tmp_path_factory):
    """``A/model`` and ``B/model`` (different weights, same base name) and a copy of A elsewhere."""
    root = tmp_path_factory.mktemp("same_name")
    a = make_tiny_model(root / "A" / "model", "llama", seed=0)
    b = make_tiny_model(root / "B" / "model", "llama", seed=1)
    shutil.copytree(a, root / "C" / "copy_of_a")
    return a, b, root / "C" / "copy_of_a"


def test_eval_cache_keys_models_by_content_not_directory_name(same_name_models, tmp_path):
    from lineage_lens.evals import PromptItem, ResultCache, model_fingerprint, run_prompts
    from lineage_lens.models import load_model, model_label

    a, b, copy_a = same_name_models
    ma, mb, mc = (load_model(p, device="cpu") for p in (a, b, copy_a))
    assert model_label(ma) == model_label(mb) == "model"
    assert model_fingerprint(ma) != model_fingerprint(mb)
    assert model_fingerprint(ma) == model_fingerprint(mc)  # same content, other place: shared

    ids = ma.tokenizer("the cat sat on the mat").input_ids
    items = [PromptItem(f"k{i}", tuple(ids[: len(ids) - i])) for i in range(3)]
    path = tmp_path / "cache.jsonl"
    with ResultCache(path) as cache:
        ra = run_prompts(ma, items, cache=cache, progress=False)
        rb = run_prompts(mb, items, cache=cache, progress=False)
    fresh_b = run_prompts(mb, items, progress=False)
    assert rb == fresh_b  # B computed its own results instead of reading A's
    assert ra["k0"]["log_p_yes"] != rb["k0"]["log_p_yes"]
    assert len(ResultCache(path)) == 2 * len(items)

    # A model changed in place gets a new key too (the memoised digest follows the weights).
    before = model_fingerprint(mc)
    with torch.no_grad():
        next(mc.parameters()).mul_(2.0)
    assert model_fingerprint(mc) != before


# ------------------------------------------------------ 2. a damaged capture is never resumed


def _examples(n: int):
    from lineage_lens.data import ProbeExample

    words = [
        "the",
        "cat",
        "is",
        "red",
        "and",
        "the",
        "dog",
        "is",
        "blue",
        "on",
        "a",
        "big",
        "table",
        "in",
        "the",
        "house",
    ]
    return [
        ProbeExample(" ".join(words[: 3 + i]), "what?", " ".join(words[i : i + 2]), i % 2, f"s{i}")
        for i in range(n)
    ]


def _interrupt(out: Path, done: int) -> None:
    """Turn a finished capture directory into one interrupted after ``done`` batches."""
    prog = json.loads((out / "progress.json").read_text())
    prog["done"], prog["sha256"] = done, prog["sha256"][:done]
    (out / "progress.json").write_text(json.dumps(prog))
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "complete": False}))


CAPTURE = {"batch_size": 2, "dtype": torch.float32, "progress": False, "share_prefix": False}


def test_resume_verifies_size_and_checksums(tiny_llama, tmp_path):
    from lineage_lens.activations import HeadActivations
    from lineage_lens.capture import collect_head_activations

    examples = _examples(6)
    ref = collect_head_activations(tiny_llama, examples, **CAPTURE)
    out = tmp_path / "acts"
    collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)
    prog = json.loads((out / "progress.json").read_text())
    assert prog["done"] == prog["total"] == 3 and len(prog["sha256"]) == 3

    # A clean interruption resumes to the uninterrupted result.
    _interrupt(out, 1)
    resumed = collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)
    np.testing.assert_array_equal(resumed.acts, ref.acts)
    del resumed

    # Truncated after completion: no zero-extension, no "complete" result of zeros.
    acts_file = out / "acts.npy"
    size = acts_file.stat().st_size
    with open(acts_file, "r+b") as fh:
        fh.truncate(size - 100)
    with pytest.raises(DataError, match=r"acts\.npy.*truncated"):
        collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)
    assert acts_file.stat().st_size == size - 100  # not extended
    with pytest.raises(DataError, match="truncated"):
        HeadActivations.load(out)

    # Truncated mid-capture: the same.
    _interrupt(out, 2)
    with pytest.raises(DataError, match="truncated"):
        collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)


def test_resume_rejects_changed_rows_and_missing_checksums(tiny_llama, tmp_path):
    from lineage_lens.capture import collect_head_activations

    examples = _examples(6)
    out = tmp_path / "acts"
    collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)
    _interrupt(out, 2)
    acts = np.lib.format.open_memmap(out / "acts.npy", mode="r+")
    acts[:] = 0.0  # same size, different content (e.g. a copy gone wrong)
    acts.flush()
    del acts
    with pytest.raises(DataError, match="does not match its checksum"):
        collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)

    prog = json.loads((out / "progress.json").read_text())
    del prog["sha256"]  # an older progress file without checksums
    (out / "progress.json").write_text(json.dumps(prog))
    with pytest.raises(DataError, match="no checksums"):
        collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)
    (out / "progress.json").write_text("{not json")
    with pytest.raises(DataError, match="unreadable progress"):
        collect_head_activations(tiny_llama, examples, out=out, **CAPTURE)


# ------------------------------------------------ 4. gates must be finite in the dtype applied


def test_huge_alpha_is_a_config_error_naming_alpha_and_the_largest_gate(tiny_dirs):
    from lineage_lens.gating import TruthGate
    from lineage_lens.models import load_model

    scores = np.random.default_rng(0).uniform(0.4, 0.9, (2, 4))
    with pytest.raises(ConfigError, match=r"alpha=1e\+40 .*magnitude .*overflows float32"):
        TruthGate(scores, alpha=1e40)  # finite in float64, inf in the stored float32

    gate = TruthGate(scores, alpha=1e6)  # finite in float32, inf in float16
    gate.check_dtype(torch.bfloat16)  # bf16 shares float32's range
    with pytest.raises(ConfigError, match="overflows float16"):
        gate.check_dtype(torch.float16)
    half = load_model(tiny_dirs["llama"], device="cpu", dtype=torch.float16)
    for placement in ("z", "reference", "fold"):
        with pytest.raises(ConfigError, match="float16"), gate.applied(half, placement=placement):
            pass
    ids = half.to_tokens("the cat")
    with pytest.raises(ConfigError, match="float16"), half.hooks(fwd_hooks=gate.hooks()):
        half(ids)  # the hook itself refuses too (no NaN logits)
    ok = TruthGate(scores, alpha=4.5)
    with ok.applied(half):
        assert torch.isfinite(half(ids)).all()


# ------------------------------------------- 6. outputs: directories, permissions, disk full


def _scores():
    from lineage_lens.scores import TruthScores

    return TruthScores({"accuracy": np.linspace(0.4, 0.9, 8).reshape(2, 4)}, model="m")


def test_output_path_that_is_a_directory_or_under_a_file(tmp_path):
    (tmp_path / "taken.npz").mkdir()
    with pytest.raises(OutputError, match="is a directory"):
        _scores().save(tmp_path / "taken.npz")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="is a file"):
        _scores().to_csv(tmp_path / "file" / "scores.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "taken.npz"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_directory(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="no permission"):
            _scores().save(locked / "scores.npz")
    finally:
        locked.chmod(0o700)


def test_disk_full_leaves_no_partial_file(tmp_path, monkeypatch):
    from lineage_lens.fileio import atomic_open

    def full_disk(file, *args, **kwargs):
        Path(file).write_bytes(b"PK\x03\x04 half an archive")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    with pytest.raises(OutputError, match="No space left.*free some disk space") as info:
        _scores().save(tmp_path / "scores.npz")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary

    with (
        pytest.raises(OutputError, match="No space left"),
        atomic_open(tmp_path / "a.txt") as fh,
    ):
        fh.write("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert list(tmp_path.iterdir()) == []


def test_permission_denied_when_creating_the_temporary_file(tmp_path, monkeypatch):
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(OutputError, match="Permission denied; choose a directory you can write"):
        _scores().save(tmp_path / "scores.npz")
    assert list(tmp_path.iterdir()) == []


def test_chair_ground_truth_values_must_be_lists_of_class_names(tmp_path):
    from lineage_lens.evals.chair import load_ground_truth

    assert load_ground_truth()  # the vendored file passes
    for bad in ({"1": 5}, {"1": [3, "dog"]}, {"1": "dog"}):
        path = tmp_path / "gt.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(DataError, match=r"gt\.json: image '1': expected a list of class"):
            load_ground_truth(path)
    path.write_bytes(b'{"1": ["caf\xe9"]}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_ground_truth(path)


# ------------------------------------------------------------ 6. loaders: one clear DataError


def test_non_utf8_json_lines_name_file_and_line(tmp_path):
    from lineage_lens.data import load_halueval_qa, load_probe_examples
    from lineage_lens.evals.pope import load_pope

    path = tmp_path / "data.jsonl"
    good = {"context": "c", "question": "q", "answer": "a", "label": "gold"}
    path.write_bytes(json.dumps(good).encode() + b'\n{"context": "caf\xe9"}\n')
    for load in (load_probe_examples, load_halueval_qa, load_pope):
        with pytest.raises(DataError, match=r"data\.jsonl:2: line is not UTF-8 .*0xe9"):
            load(path)
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + json.dumps(good).encode() + b"\n")
    assert load_probe_examples(bom)[0].label == 1  # a UTF-8 byte-order mark is fine
    path.write_text(json.dumps({**good, "label": ["gold"]}) + "\n")
    with pytest.raises(DataError, match="unknown label"):
        load_probe_examples(path)  # an unhashable label was a TypeError


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.npz", b"", "not a readable TruthScores file"),
        ("empty.npy", b"", "cannot read .npy"),
        ("empty.csv", b"", "the CSV file is empty"),
        (
            "binary.csv",
            bytes(range(256)) * 4,
            r"cannot read CSV \(Error tokenizing data\. C error: Expected 1 fields in line 3, saw 2\)$",
        ),
        ("latin1.csv", b"layer,head,accuracy\n0,0,\xe9\n", "not UTF-8"),
        ("header.csv", b"layer,head,accuracy\n", "header but no rows"),
        ("text.csv", b"layer,head,accuracy\n0,0,high\n", "'accuracy' must hold numbers"),
        ("neg.csv", b"layer,head,accuracy\n-1,0,0.5\n", "'layer' must hold non-negative"),
        ("nan.csv", b"layer,head,accuracy\n0,,0.5\n", "'head' must hold non-negative"),
        ("frac.csv", b"layer,head,accuracy\n0.5,0,0.5\n", "'layer' must hold non-negative"),
    ],
)
def test_bad_score_files(tmp_path, name, content, message):
    from lineage_lens.scores import load_scores

    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_scores(path)


def test_truncated_or_mislabelled_score_archives(tmp_path):
    from lineage_lens.scores import load_scores

    good = _scores().save(tmp_path / "good.npz")
    data = good.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 5):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(DataError, match=r"cut\.npz: not a readable"):
            load_scores(tmp_path / "cut.npz")
    (tmp_path / "archive.npy").write_bytes(data)
    with pytest.raises(DataError, match="not a .npy array"):
        load_scores(tmp_path / "archive.npy")
    np.save(tmp_path / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    with pytest.raises(DataError, match="not real numbers"):
        load_scores(tmp_path / "strings.npy")
    np.savez(tmp_path / "meta.npz", metric_accuracy=np.ones((2, 2)), meta=np.array("[1, 2]"))
    with pytest.raises(DataError, match="not a JSON object"):
        load_scores(tmp_path / "meta.npz")


def test_result_cache_survives_bad_bytes_and_reports_a_full_disk(tmp_path, monkeypatch):
    from lineage_lens.evals import ResultCache

    path = tmp_path / "cache.jsonl"
    path.write_bytes(
        b'{"key": "a", "record": {"answer": "yes"}}\n\xff\xfe garbage\n{"key": "b", "rec'
    )
    cache = ResultCache(path)  # the undecodable and the truncated line are skipped
    assert len(cache) == 1 and cache.get("a") == {"answer": "yes"}
    with ResultCache(path) as resumed:  # appending after the torn line starts a new line
        resumed.put("d", {"answer": "no"})
    assert ResultCache(path).get("d") == {"answer": "no"}

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache, "_fh", type("F", (), {"write": full, "close": lambda self: None})())
    with pytest.raises(OutputError, match="No space left on device; free disk space"):
        cache.put("c", {"answer": "no"})
    assert cache.get("c") is None
    with pytest.raises(OutputError, match="is a directory"):
        ResultCache(tmp_path)


# ------------------------------------------- 5./6. the CLI: one line on stderr, exit 2, early


def run_cli(argv: list[str], capsys, monkeypatch) -> tuple[int, str, str]:
    """Run ``lineage-lens ARGV`` through the real entry point; forbid loading any model."""
    import sys

    import lineage_lens.models
    from lineage_lens.cli import main

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the options were checked")

    monkeypatch.setattr(lineage_lens.models, "load_model", no_model)
    monkeypatch.setattr(sys, "argv", ["lineage-lens", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def assert_one_line_error(code: int, err: str, pattern: str) -> None:
    import re

    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--out", "{tmp}/scores.txt"], r"--out .*must end in \.npz"),
        (["--out", "{tmp}/taken.npz"], "taken.npz: it is a directory"),
        (["--csv", "{tmp}/x.npz"], r"--csv .*must end in \.csv"),
        (["--solver", "lbfgs"], "unknown --solver 'lbfgs'"),
        (["--folds", "1"], "--folds must be an integer >= 2"),
        (["--folds", "50", "--n", "10"], "--folds 50 needs at least 50"),
        (["--top", "0"], "--top must be an integer >= 1"),
        (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
        (["--device", "tpu"], "unknown --device 'tpu'"),
        (["--data", "{tmp}/missing.jsonl"], "no such file"),
    ],
)
def test_score_checks_options_before_any_capture(tmp_path, capsys, monkeypatch, extra, pattern):
    (tmp_path / "taken.npz").mkdir()
    argv = ["score", "--model", "whatever", "--out", str(tmp_path / "scores.npz"), "--n", "20"]
    argv += [a.replace("{tmp}", str(tmp_path)) for a in extra]
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)
    assert [p.name for p in tmp_path.iterdir()] == ["taken.npz"]  # nothing written


@pytest.fixture
def scores_file(tmp_path_factory):
    return _scores().save(tmp_path_factory.mktemp("scores") / "s.npz")


@pytest.mark.parametrize(
    ("argv", "pattern"),
    [
        (["gate", "--scores", "{s}", "--alpha", "1e40", "--prompt", "x"], r"alpha=1e\+40 .*gate"),
        (["gate", "--scores", "{s}", "--alpha", "1", "--prompt", "x", "--device", "tpu"], "tpu"),
        (["gate", "--scores", "{bin}", "--alpha", "1", "--prompt", "x"], "cannot read CSV"),
        (["gate", "--scores", "{latin}", "--alpha", "1", "--prompt", "x"], "not UTF-8"),
        (["gate", "--scores", "{empty}", "--alpha", "1", "--prompt", "x"], "not a readable"),
        (["eval", "halueval", "--device", "tpu", "--out-dir", "{tmp}/r"], "unknown --device"),
        (["eval", "halueval", "--device", "cuda:7", "--out-dir", "{tmp}/r"], "no cuda device"),
        (["eval", "halueval", "--out-dir", "{file}"], "is a file; pass a directory"),
        (["eval", "halueval", "--limit", "0", "--out-dir", "{tmp}/r"], "--limit must be"),
        (["eval", "halueval", "--mode", "guess", "--out-dir", "{tmp}/r"], "guess"),
        (
            [
                "eval",
                "halueval",
                "--gate",
                "{s}",
                "--sweep-alpha",
                "0,1e40",
                "--out-dir",
                "{tmp}/r",
            ],
            r"alpha=1e\+40",
        ),
        (["eval", "halueval", "--sweep-alpha", "0,2", "--out-dir", "{tmp}/r"], "need --gate"),
        (
            ["eval", "halueval", "--gate", "{s}", "--control", "bogus", "--out-dir", "{tmp}/r"],
            "bogus",
        ),
        (["eval", "chair", "--captions", "{s}", "--out", "{tmp}/x.csv"], r"must end in \.json"),
        (["compare", "{s}", "{s}", "--out", "{tmp}/c.txt"], r"must end in \.json"),
        (["compare", "{s}", "{s}", "--n-resamples", "0"], "--n-resamples must be"),
        (["drift", "--ancestor", "a", "--descendant", "b", "--plot", "{tmp}/p.xyz"], r"\.png"),
        (["drift", "--ancestor", "a", "--descendant", "b", "--out", "{tmp}"], r"must end in \.npz"),
        (["zoo", "build", "--threads", "0", "--out-dir", "{tmp}/z"], "--threads must be"),
    ],
)
def test_cli_bad_options_are_one_line_errors(
    tmp_path, scores_file, capsys, monkeypatch, argv, pattern
):
    import lineage_lens.weights
    import lineage_lens.zoo

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the options were checked")

    monkeypatch.setattr(lineage_lens.weights, "weight_drift", no_work)
    monkeypatch.setattr(lineage_lens.zoo, "build_zoo", no_work)
    (tmp_path / "file").write_text("x")
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "latin.csv").write_bytes(b"layer,head,accuracy\n0,0,\xe9\n")
    (tmp_path / "empty.npz").write_bytes(b"")
    names = {"s": scores_file, "tmp": tmp_path, "file": tmp_path / "file"}
    names |= {k: tmp_path / f for k, f in (("bin", "bin.csv"), ("latin", "latin.csv"))}
    names["empty"] = tmp_path / "empty.npz"
    for key, value in names.items():
        argv = [a.replace("{" + key + "}", str(value)) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err = run_cli(argv, capsys, monkeypatch)
    assert_one_line_error(code, err, pattern)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_batch_size_must_be_a_positive_integer_and_a_huge_one_is_harmless(tiny_llama):
    from lineage_lens.capture import collect_head_activations
    from lineage_lens.evals import PromptItem, run_prompts

    examples = _examples(3)
    items = [PromptItem("a", (1, 2, 3))]
    for bad in (2.5, 0, True, "4"):
        with pytest.raises(ConfigError, match="batch_size must be"):
            collect_head_activations(tiny_llama, examples, batch_size=bad, progress=False)
        with pytest.raises(ConfigError, match="batch_size must be"):
            run_prompts(tiny_llama, items, batch_size=bad, progress=False)
    kw = {"dtype": torch.float32, "progress": False}
    huge = collect_head_activations(tiny_llama, examples, batch_size=10**9, **kw)  # no 1e9 buffer
    small = collect_head_activations(tiny_llama, examples, batch_size=1, **kw)
    np.testing.assert_allclose(huge.acts, small.acts, atol=1e-5)


def test_capture_out_that_is_a_file(tiny_llama, tmp_path):
    from lineage_lens.capture import collect_head_activations

    (tmp_path / "acts").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        collect_head_activations(tiny_llama, _examples(2), out=tmp_path / "acts", progress=False)


def test_load_model_rejects_an_unknown_or_absent_device_before_loading(tiny_dirs, monkeypatch):
    """``load_model(device=...)`` fails with one ConfigError naming the device, as the CLI's
    ``--device`` does, before any weights are read."""
    from transformer_lens.model_bridge import TransformerBridge

    from lineage_lens.models import load_model

    def never(*args, **kwargs):
        raise AssertionError("booted despite a bad device")

    monkeypatch.setattr(TransformerBridge, "boot_transformers", never)
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        load_model(tiny_dirs["llama"], device="tpu")
    with pytest.raises(ConfigError, match="no cuda device is available|only"):
        load_model(tiny_dirs["llama"], device="cuda:7")
