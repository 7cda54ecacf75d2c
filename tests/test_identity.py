"""Content identities (:mod:`lineage_lens.identity`): every cache is keyed by every byte it read.

A model whose weights differ only in the middle of a file, a question file edited in place, an
image whose pixels change under the same path: each gets a new key and is computed again. The
digest index skips re-reading unchanged files, notices in-place edits, and survives corruption.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lineage_lens import identity
from lineage_lens.data import ProbeExample

MIB = 1 << 20


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Iterator[Path]:
    """A fresh ``$LINEAGE_LENS_CACHE`` (and digest index) for the test."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LINEAGE_LENS_CACHE", str(root))
    identity.forget_digest_indexes()
    yield root
    identity.forget_digest_indexes()


@pytest.fixture
def hash_reads(monkeypatch) -> list[Path]:
    """Every full read of a file by the identity module (a spy on ``identity.hash_file``)."""
    reads: list[Path] = []
    real = identity.hash_file

    def spy(path):
        reads.append(Path(path))
        return real(path)

    monkeypatch.setattr(identity, "hash_file", spy)
    return reads


def settle(*paths: Path) -> None:
    """Wait until the file systems' coarse clock has passed the files' ctimes, so that (with
    ``RACY_WINDOW_NS = 0``) their digests may be remembered."""
    newest = max(max(p.stat().st_ctime_ns, p.stat().st_mtime_ns) for p in paths)
    deadline = time.monotonic() + 5
    while identity.coarse_now_ns() <= newest and time.monotonic() < deadline:
        time.sleep(0.005)


def middle_tensor(path: Path) -> tuple[str, int, int]:
    """A tensor of a safetensors file lying wholly between its first and last MiB: its name and
    absolute byte range."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    size = len(raw)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = (8 + n + o for o in info["data_offsets"])
        if start > MIB and end < size - MIB:
            return name, start, end
    raise AssertionError(f"no tensor in the middle of {path} ({size} bytes)")


def edit_middle(model_dir: Path) -> tuple[Path, str]:
    """Add noise to one tensor in the middle of the model's safetensors file, in place (same
    size); return the file and the tensor's name."""
    (f,) = sorted(model_dir.glob("*.safetensors"))
    name, start, end = middle_tensor(f)
    with open(f, "r+b") as fh:
        fh.seek(start)
        values = np.frombuffer(fh.read(end - start), dtype=np.float32).copy()
        values += np.random.default_rng(0).normal(0, 0.5, values.shape).astype(np.float32)
        fh.seek(start)
        fh.write(values.tobytes())
    return f, name


@pytest.fixture(scope="module")
def big_family(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama whose safetensors file is over 2 MiB (hidden 256) and a descendant that
    differs from it only in one tensor in the middle of that file."""
    from lineage_lens.testing import make_tiny_model

    root = tmp_path_factory.mktemp("big_family")
    anc = make_tiny_model(root / "anc", "llama", d_head=64, seed=0)
    (weights,) = anc.glob("*.safetensors")
    assert weights.stat().st_size > 2 * MIB
    desc = root / "desc"
    shutil.copytree(anc, desc)
    edit_middle(desc)
    (desc_weights,) = desc.glob("*.safetensors")
    assert desc_weights.stat().st_size == weights.stat().st_size
    first = weights.read_bytes()
    second = desc_weights.read_bytes()
    assert first[:MIB] == second[:MIB] and first[-MIB:] == second[-MIB:] and first != second
    return {"anc": anc, "desc": desc}


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@pytest.mark.model
def test_weights_differing_only_in_the_middle_get_another_identity(big_family, cache) -> None:
    from lineage_lens.report import model_identity

    anc, desc = big_family["anc"], big_family["desc"]
    assert model_identity(anc) != model_identity(desc)
    # content, not place: a copy elsewhere is the same model
    copy = cache.parent / "copy_of_anc"
    shutil.copytree(anc, copy)
    assert model_identity(copy) == model_identity(anc)


@pytest.mark.model
def test_every_file_of_the_tree_counts_but_non_inputs(big_family, cache, tmp_path) -> None:
    from lineage_lens.report import model_identity

    model = tmp_path / "model"
    shutil.copytree(big_family["anc"], model)
    base = model_identity(model)
    (model / "README.md").write_text("a model card")
    (model / ".git").mkdir()
    (model / ".git" / "HEAD").write_text("ref: refs/heads/main")
    (model / "download.lock").write_text("")
    assert model_identity(model) == base
    (model / "chat_template.jinja").write_text("{{ messages }}")
    with_template = model_identity(model)
    assert with_template != base
    (model / "tokenizer").mkdir()
    (model / "tokenizer" / "extra.json").write_text("{}")
    assert model_identity(model) not in (base, with_template)


@pytest.mark.model
def test_report_does_not_reuse_the_ancestors_steps_for_a_middle_edit(big_family, cache) -> None:
    from lineage_lens.report import ReportPlan, lineage_report

    plan = ReportPlan(
        n_probe=8,
        folds=2,
        batch_size=8,
        eval_rows=2,
        eval_seeds=(0,),
        control_seeds=(0,),
        n_resamples=20,
        n_evidence=2,
    )
    rep = lineage_report(
        big_family["anc"],
        [big_family["desc"]],
        names=["anc", "desc"],
        out=cache.parent / "report",
        plan=plan,
        progress=False,
        write=False,
    )
    anc, desc = rep.models
    assert anc.identity != desc.identity
    assert "desc: Truth Scores (text)" in rep.meta["computed"]
    assert not any(step.startswith("desc") for step in rep.meta["reused"]), rep.meta["reused"]


def test_gguf_conversion_folder_is_named_by_every_byte(cache, tmp_path, monkeypatch) -> None:
    import lineage_lens.models as models

    a, b = tmp_path / "a" / "m.gguf", tmp_path / "b" / "m.gguf"
    for p in (a, b):
        p.parent.mkdir()
    payload = bytearray(np.random.default_rng(0).bytes(3 * MIB))
    a.write_bytes(payload)
    payload[int(1.5 * MIB)] ^= 0xFF  # one byte in the middle
    b.write_bytes(payload)
    names: list[str] = []

    class StopError(Exception):
        pass

    def record(parent, name):
        names.append(name)
        raise StopError

    monkeypatch.setattr(models, "tmp_build_dir", record)
    for p in (a, b):
        with pytest.raises(StopError):
            models.gguf_to_hf_dir(p)
    assert names[0] != names[1]
    assert names[0] == f"m-{hashlib.sha256(a.read_bytes()).hexdigest()}"


# --------------------------------------------------------------------------------------------
# The digest index
# --------------------------------------------------------------------------------------------


def test_index_skips_unchanged_files_and_rereads_changed_ones(
    cache, hash_reads, tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(identity, "RACY_WINDOW_NS", 0)
    f = tmp_path / "weights.bin"
    f.write_bytes(b"a" * 100_000)
    settle(f)
    first = identity.file_digest(f)
    assert first == hashlib.sha256(f.read_bytes()).hexdigest()
    assert identity.file_digest(f) == first
    assert len(hash_reads) == 1  # the second call only stat'ed the file
    identity.forget_digest_indexes()  # as a new process: the index from disk
    assert identity.file_digest(f) == first
    assert len(hash_reads) == 1
    assert str(f.resolve()) in json.loads(identity.index_path().read_text())["files"]

    # an in-place edit keeping the size, with the mtime put back: the ctime gives it away
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.seek(50_000)
        fh.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    settle(f)
    edited = identity.file_digest(f)
    assert edited == hashlib.sha256(f.read_bytes()).hexdigest() != first
    assert identity.file_digest(f) == edited
    assert len(hash_reads) == 2

    # only the mtime changes: read again (same digest)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns - 10**9))
    settle(f)
    assert identity.file_digest(f) == edited
    assert identity.file_digest(f) == edited
    assert len(hash_reads) == 3

    # replaced by another file (another inode) with the same size and times
    st = f.stat()
    other = tmp_path / "other.bin"
    other.write_bytes(b"c" * 100_000)
    os.utime(other, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(other, f)
    settle(f)
    assert identity.file_digest(f) == hashlib.sha256(b"c" * 100_000).hexdigest()
    assert len(hash_reads) == 4


def test_files_written_just_now_are_not_remembered(cache, hash_reads, tmp_path) -> None:
    """A file younger than the racy window could change again within its timestamp tick."""
    f = tmp_path / "fresh.bin"
    f.write_bytes(b"x" * 1000)
    identity.file_digest(f)
    identity.file_digest(f)
    assert len(hash_reads) == 2


@pytest.mark.parametrize(
    "content",
    [b"\x00garbage{", b'{"version": 1, "hash": "sha256", "files": {"/x": [1, 2]}}', b"[]"],
)
def test_a_corrupt_index_is_tolerated_and_rewritten(
    cache, hash_reads, tmp_path, monkeypatch, caplog, content
) -> None:
    monkeypatch.setattr(identity, "RACY_WINDOW_NS", 0)
    f = tmp_path / "data.bin"
    f.write_bytes(b"d" * 5000)
    settle(f)
    identity.index_path().parent.mkdir(parents=True)
    identity.index_path().write_bytes(content)
    with caplog.at_level("WARNING", logger="lineage_lens.identity"):
        digest = identity.file_digest(f)
    assert digest == hashlib.sha256(b"d" * 5000).hexdigest()
    assert "unreadable" in caplog.text
    data = json.loads(identity.index_path().read_text())  # rewritten whole
    assert data["files"][str(f.resolve())][-1] == digest


def test_a_missing_file_is_a_data_error(cache, tmp_path) -> None:
    from lineage_lens.errors import DataError

    with pytest.raises(DataError, match="gone.png"):
        identity.file_digest(tmp_path / "gone.png")


# --------------------------------------------------------------------------------------------
# Probing images
# --------------------------------------------------------------------------------------------


def _write_image(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)


def _image_examples(folder: Path) -> list[ProbeExample]:
    folder.mkdir(exist_ok=True)
    out = []
    for i in range(4):
        path = folder / f"im{i}.png"
        if not path.exists():
            _write_image(path, seed=i)
        answer = "a cat" if i % 2 else "a dog"
        out.append(ProbeExample("", "what is in the image ?", answer, i % 2, f"s{i}", str(path)))
    return out


def test_a_probing_image_changed_under_its_path_changes_the_keys(cache, tmp_path) -> None:
    from lineage_lens.images import image_key
    from lineage_lens.report import examples_identity

    examples = _image_examples(tmp_path / "images")
    before = examples_identity(examples), image_key(examples[0].image)
    _write_image(Path(examples[0].image), seed=99)  # new pixels, same path
    assert examples_identity(examples) != before[0]
    assert image_key(examples[0].image) != before[1]


def test_a_resumed_capture_refuses_images_changed_under_their_paths(
    tiny_llava, cache, tmp_path
) -> None:
    import torch

    from lineage_lens.capture import collect_head_activations
    from lineage_lens.errors import ConfigError

    examples = _image_examples(tmp_path / "images")
    kw = dict(condition="image", dtype=torch.float32, progress=False, batch_size=2)
    out = tmp_path / "acts"
    collect_head_activations(tiny_llava, examples, out=out, **kw)
    _write_image(Path(examples[1].image), seed=42)
    with pytest.raises(ConfigError, match="different run"):
        collect_head_activations(tiny_llava, examples, out=out, **kw)


# --------------------------------------------------------------------------------------------
# Evaluation inputs
# --------------------------------------------------------------------------------------------


def _pope_files(root: Path, texts: dict[int, str] | None = None) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        if not (images / f"im{i}.png").exists():
            _write_image(images / f"im{i}.png", seed=i)
    questions = root / "pope_test.json"
    rows = [(0, "yes"), (0, "no"), (1, "yes"), (1, "no")]
    texts = texts or {}
    questions.write_text(
        "".join(
            json.dumps(
                {
                    "question_id": q,
                    "image": f"im{im}.png",
                    "text": texts.get(q, "is there a cat ?"),
                    "label": y,
                }
            )
            + "\n"
            for q, (im, y) in enumerate(rows)
        )
    )
    return images, questions


def test_pope_question_file_edited_in_place_is_evaluated_again(tiny_llava, cache, tmp_path) -> None:
    from lineage_lens.evals import ResultCache
    from lineage_lens.evals.pope import evaluate_pope

    images, questions = _pope_files(tmp_path)
    store = tmp_path / "cache.jsonl"
    kw = dict(batch_size=2, progress=False)
    with ResultCache(store) as c:
        evaluate_pope(tiny_llava, images, [questions], cache=c, **kw)
        assert len(c) == 4
    _pope_files(tmp_path, texts={0: "is there a dog ?"})  # same file, same id, new text
    with ResultCache(store) as c:
        cached = evaluate_pope(tiny_llava, images, [questions], cache=c, **kw)
        assert len(c) == 5  # only the edited question was run again
    fresh = evaluate_pope(tiny_llava, images, [questions], **kw)
    pd.testing.assert_frame_equal(cached.examples, fresh.examples, atol=1e-5)
    assert cached.examples.loc[0, "question"] == "is there a dog ?"


def test_pope_identity_follows_question_text_labels_and_pixels(cache, tmp_path) -> None:
    from lineage_lens.evals import PopeAnswers

    images, questions = _pope_files(tmp_path)
    ev = PopeAnswers(images, [questions])
    seen = {ev.inputs_identity()}
    _pope_files(tmp_path, texts={2: "is there a bird ?"})
    seen.add(ev.inputs_identity())
    questions.write_text(questions.read_text().replace('"label": "no"', '"label": "yes"', 1))
    seen.add(ev.inputs_identity())
    _write_image(images / "im1.png", seed=7)
    seen.add(ev.inputs_identity())
    assert len(seen) == 4


def test_report_pope_key_follows_question_and_image_content(cache, tmp_path) -> None:
    from lineage_lens.report import ReportPlan
    from lineage_lens.report.run import make_evaluator

    root = tmp_path / "pope"
    images, _ = _pope_files(root)
    plan = ReportPlan(eval_rows=4)

    def key() -> dict:
        return make_evaluator("pope", plan, exclude_ids=None, eval_dir=root)[1]

    first = key()
    _pope_files(root, texts={1: "is there a tree ?"})  # edited in place
    second = key()
    _write_image(images / "im0.png", seed=5)  # pixels changed under the same name
    third = key()
    assert len({json.dumps(k, sort_keys=True) for k in (first, second, third)}) == 3


def test_cli_eval_pope_out_dir_rerun_recomputes_changed_inputs(tiny_dirs, cache, tmp_path) -> None:
    from typer.testing import CliRunner

    from lineage_lens.cli import app

    images, questions = _pope_files(tmp_path / "data")
    out = tmp_path / "out"

    def run(out_dir: Path) -> pd.DataFrame:
        argv = ["eval", "pope", "--images", str(images), "--model", str(tiny_dirs["llava"])]
        argv += ["--splits", str(questions), "--out-dir", str(out_dir), "--device", "cpu"]
        result = CliRunner().invoke(app, argv)
        assert result.exit_code == 0, result.output
        return pd.read_csv(out_dir / "results.csv")

    def lines() -> int:
        return len((out / "cache.jsonl").read_text().splitlines())

    run(out)
    assert lines() == 4
    run(out)
    assert lines() == 4  # nothing changed: everything reused
    _pope_files(tmp_path / "data", texts={3: "is there a car ?"})  # same id 3, new question
    run(out)
    assert lines() == 5
    _write_image(images / "im0.png", seed=11)  # questions 0 and 1 look at new pixels
    again = run(out)
    assert lines() == 7
    fresh = run(tmp_path / "fresh")
    cols = ["pope_accuracy", "pope_n", "accuracy", "f1"]
    pd.testing.assert_frame_equal(again[cols], fresh[cols])


# --------------------------------------------------------------------------------------------
# Experiments
# --------------------------------------------------------------------------------------------


@pytest.mark.model
def test_experiment_scores_key_is_the_content_of_model_rows_and_capture(big_family, cache) -> None:
    from experiments.score_cache import cached_scores_key
    from lineage_lens.data import load_probe_examples

    rows = load_probe_examples("halueval", n_probe=4, split_seed=0)
    other_rows = load_probe_examples("halueval", n_probe=4, split_seed=1)
    anc, desc = big_family["anc"], big_family["desc"]
    key = cached_scores_key(anc, rows, 0)
    assert cached_scores_key(desc, rows, 0) != key  # weights differ only mid-file
    assert cached_scores_key(anc, other_rows, 0) != key
    edited = [
        ProbeExample(r.context, r.question + " ?", r.answer, r.label, r.source_id) for r in rows
    ]
    assert cached_scores_key(anc, edited, 0) != key  # same ids, other text
    copy = cache.parent / "moved_anc"
    shutil.copytree(anc, copy)
    assert cached_scores_key(copy, rows, 0) == key  # a moved model keeps its cache
    # how the rows were captured, and which model (the twin of a seed), are part of the key
    from lineage_lens.data import PromptTemplate

    variants = [
        cached_scores_key(anc, rows, 0, condition="black_image"),
        cached_scores_key(anc, rows, 0, template=PromptTemplate("Q: {question} A: {answer}")),
        cached_scores_key(anc, rows, 0, template="{question} {answer}"),
        cached_scores_key(anc, rows, 0, twin_seed=0),
        cached_scores_key(anc, rows, 0, twin_seed=1),
    ]
    assert len({key, *variants}) == 1 + len(variants)
