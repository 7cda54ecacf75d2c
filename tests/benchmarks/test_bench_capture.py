"""The capture benchmark's baselines compute what ours computes (benchmarks/bench_capture.py).

A speed-up is only meaningful if the authors' capture (HF model, ``o_proj`` pre-hooks, batch 1)
and the floor (batched decoder, pre-hooks) read the same vectors as ``collect_head_activations``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks import bench_capture
from lineage_lens.capture import collect_head_activations, encode_examples
from lineage_lens.data import load_probe_examples
from lineage_lens.models import head_geometry, load_model


@pytest.mark.parametrize("arch", ["llama", "gqa"])
def test_baselines_read_our_vectors(tiny_dirs, arch):
    from transformers import AutoModelForCausalLM

    model = load_model(tiny_dirs[arch], device="cpu")
    hf_model = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], dtype=torch.float32).eval()
    examples = load_probe_examples("halueval", limit=3)
    encoded = encode_examples(model, examples)
    n_heads = head_geometry(model).n_heads
    ours = np.asarray(
        collect_head_activations(model, examples, dtype=torch.float32, progress=False).acts
    )
    authors = bench_capture.authors_capture(hf_model, encoded, n_heads)
    floor = bench_capture.floor_capture(hf_model, encoded, n_heads, 4, model.tokenizer.eos_token_id)
    assert authors.shape == floor.shape == ours.shape
    np.testing.assert_allclose(authors, ours, atol=1e-5)
    np.testing.assert_allclose(floor, ours, atol=1e-5)


def test_report_states_both_goals(tiny_dirs, tmp_path, capsys):
    out = tmp_path / "capture.md"
    rc = bench_capture.main(["--model", str(tiny_dirs["llama"]), "--n", "4", "--out", str(out)])
    assert rc == 0
    text = out.read_text(encoding="utf-8")
    assert "4 HaluEval QA examples" in text and "weights in float32" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "wall s" not in line]
    assert len(rows) == 3
    diffs = [float(row.rstrip(" |").rsplit("|", 1)[1]) for row in rows]
    assert max(diffs) < 1e-5
    assert "ours >= 5x the authors' capture" in text and "within 1.2x of the floor" in text
