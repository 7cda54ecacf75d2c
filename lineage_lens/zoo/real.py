"""The real family: descendants of SmolLM2-135M-Instruct built on CPU.

* ``smollm2-ft`` -- the ancestor fine-tuned (attention and MLP weights of every layer; embeddings,
  norms and the tied head frozen) on text made from the vendored HaluEval QA knowledge, in a prompt
  format that differs from the TruthProbe one (``Knowledge: ... Q: ...``, no answers).
* ``smollm2-vlm`` -- built by :func:`lineage_lens.zoo.synthetic.build_vlm` with the ancestor as the
  language model (any Llama-type causal-LM directory works).

These are project-made descendants, not published checkpoints.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineage_lens.errors import ConfigError
from lineage_lens.zoo.train import lm_loss, load_causal_lm, run_training

log = logging.getLogger(__name__)

FT_TEMPLATE = "Knowledge: {knowledge}\nQ: {question}"


def halueval_ft_documents(first_row: int, n_rows: int) -> list[str]:
    """Fine-tuning texts from HaluEval QA rows ``[first_row, first_row + n_rows)``.

    Only the knowledge passage and the question are used (never an answer, gold or hallucinated),
    so the fine-tune does not learn HaluEval's labels.
    """
    from lineage_lens.data import load_halueval_qa

    all_rows = load_halueval_qa()
    rows = all_rows[first_row : first_row + n_rows]
    if first_row < 0 or len(rows) < n_rows:
        raise ConfigError(
            f"HaluEval QA has {len(all_rows)} rows; rows {first_row}..{first_row + n_rows - 1} "
            "do not exist. Lower first_row or n_rows."
        )
    return [FT_TEMPLATE.format(knowledge=r.knowledge, question=r.question) for r in rows]


def _trainable(model: torch.nn.Module, what: str) -> list[torch.nn.Parameter]:
    if what != "attn+mlp of all layers":
        raise ConfigError(f"unknown trainable set {what!r}; use 'attn+mlp of all layers'.")
    params = []
    for name, p in model.named_parameters():
        keep = ".self_attn." in name or ".mlp." in name
        p.requires_grad_(keep)
        if keep:
            params.append(p)
    return params


def build_smollm2_ft(recipe: dict[str, Any], parent: Path | None, out: Path) -> dict[str, Any]:
    """Fine-tune the ancestor at ``parent`` on HaluEval knowledge text; save to ``out`` (float32)."""
    import transformers as tf

    if parent is None:
        raise ConfigError("smollm2-ft needs the ancestor directory as its parent.")
    tok = tf.AutoTokenizer.from_pretrained(parent)
    model = load_causal_lm(parent)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    texts = halueval_ft_documents(recipe["first_row"], recipe["n_rows"])
    enc = tok(
        [t + tok.eos_token for t in texts],
        truncation=True,
        max_length=recipe["max_len"],
        padding=True,
        return_tensors="pt",
    )
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    params = _trainable(model, recipe["trainable"])
    gen = torch.Generator().manual_seed(recipe["seed"])
    torch.manual_seed(recipe["seed"])
    model.train()

    def loss_fn(_: int) -> torch.Tensor:
        idx = torch.randint(0, len(texts), (recipe["batch_size"],), generator=gen)
        width = int(enc.attention_mask[idx].sum(1).max())
        out_ = model(
            input_ids=enc.input_ids[idx, :width], attention_mask=enc.attention_mask[idx, :width]
        )
        return lm_loss(out_.logits, labels[idx, :width])

    with torch.no_grad():
        model.eval()
        before = float(np.mean([float(loss_fn(0)) for _ in range(3)]))
        model.train()
    losses = run_training(
        params, loss_fn, steps=recipe["steps"], lr=recipe["lr"], desc="smollm2-ft fine-tuning"
    )
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {
        "trained": {
            "data": f"HaluEval QA rows {recipe['first_row']}..{recipe['first_row'] + recipe['n_rows'] - 1} "
            f"as {FT_TEMPLATE!r} (knowledge + question, no answers; loss on all tokens)",
            "steps": recipe["steps"],
            "lr": recipe["lr"],
            "frozen": ["embeddings (tied lm_head)", "RMS norms"],
            "init": "parent (SmolLM2-135M-Instruct, dequantised from the packaged GGUF)",
        },
        "losses": {
            "ft_initial": round(before, 4),
            "ft_final": round(float(np.mean(losses[-20:])), 4),
        },
        "checks": {},
    }
