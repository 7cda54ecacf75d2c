"""Builders of the tiny synthetic family: ``base``, ``instruct``, ``vlm`` and ``control``.

Every builder takes its recipe (a JSON-able dict), the directory of its parent (or ``None``) and an
output directory; it writes a Hugging Face model directory with its tokenizer and returns what it
trained and measured (losses, checks) for the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineage_lens.zoo.train import (
    llava_from_lm,
    lm_loss,
    load_causal_lm,
    train_lm_on_documents,
    train_vlm,
    vlm_yes_no_accuracy,
)
from lineage_lens.zoo.world import (
    World,
    heldout_counterfactual_items,
    instruct_documents,
    make_world_tokenizer,
    pretraining_documents,
)

log = logging.getLogger(__name__)


def _final(losses: list[float], k: int = 20) -> float:
    return round(float(np.mean(losses[-k:])), 4) if losses else float("nan")


def _build_llama(tok: Any, arch: dict[str, int], seed: int):
    import transformers as tf

    d_model = arch["n_heads"] * arch["d_head"]
    cfg = tf.LlamaConfig(
        vocab_size=len(tok),
        hidden_size=d_model,
        intermediate_size=arch.get("d_mlp", 2 * d_model),
        num_hidden_layers=arch["n_layers"],
        num_attention_heads=arch["n_heads"],
        num_key_value_heads=arch.get("n_kv_heads", arch["n_heads"]),
        head_dim=arch["d_head"],
        max_position_embeddings=256,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return tf.LlamaForCausalLM(cfg)


def _last_positions(mask: torch.Tensor, side: str) -> torch.Tensor:
    if side == "left":
        return torch.full((mask.shape[0],), mask.shape[1] - 1)
    return mask.sum(1) - 1


@torch.no_grad()
def context_following_rate(
    model: Any, tokenizer: Any, world: World, n: int = 100, seed: int = 0, template: str = ""
) -> float:
    """Share of held-out counterfactual items where the context answer outscores the prior.

    Compares the next-token log-probability of the context's answer with that of the memorised
    answer after ``template`` (default: the TruthProbe prompt ``Context: ... Answer:``).
    """
    from lineage_lens.data import PAPER_TEMPLATE

    template = template or PAPER_TEMPLATE
    items = heldout_counterfactual_items(world, n, seed)
    prompts = [template.split("{answer}")[0].format(context=c, question=q) for c, q, _, _ in items]
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    last = _last_positions(enc.attention_mask, tokenizer.padding_side)
    rows = torch.arange(len(items))
    ctx = torch.tensor([tokenizer.convert_tokens_to_ids(a) for _, _, a, _ in items])
    prior = torch.tensor([tokenizer.convert_tokens_to_ids(p) for _, _, _, p in items])
    out = logits[rows, last]
    return float((out[rows, ctx] > out[rows, prior]).float().mean())


@torch.no_grad()
def memorised_rate(model: Any, tokenizer: Any, world: World) -> float:
    """Share of facts answered correctly closed-book (top-1 token after ``Answer:``)."""
    prompts = [f"Question: {f.question()}\nAnswer:" for f in world.facts]
    enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
    logits = model(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits
    last = _last_positions(enc.attention_mask, tokenizer.padding_side)
    pred = logits[torch.arange(len(prompts)), last].argmax(-1)
    truth = torch.tensor([tokenizer.convert_tokens_to_ids(f.obj) for f in world.facts])
    return float((pred == truth).float().mean())


def build_tiny_base(recipe: dict[str, Any], parent: Path | None, out: Path) -> dict[str, Any]:
    """Pretrain a tiny Llama from scratch on the synthetic world (``base`` and ``control``)."""
    world = World.generate(recipe["world_seed"], recipe["n_people"])
    tok = make_world_tokenizer()
    model = _build_llama(tok, recipe["arch"], recipe["seed"])
    docs = list(pretraining_documents(world, recipe["n_docs"], recipe["seed"]))
    losses = train_lm_on_documents(
        model,
        tok,
        docs,
        steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        desc=f"pretraining (world {world.seed})",
    )
    checks = {
        "context_following_heldout": context_following_rate(model, tok, world),
        "closed_book_recall": memorised_rate(model, tok, world),
    }
    model.save_pretrained(out)
    tok.save_pretrained(out)
    world.save(out / "world.json")
    return {
        "trained": {
            "data": f"synthetic world {world.seed}: {recipe['n_docs']} documents (facts, "
            "closed-book QA, context QA with 50% counterfactual contexts)",
            "steps": recipe["steps"],
            "lr": recipe["lr"],
            "frozen": [],
            "init": f"random (seed {recipe['seed']})",
        },
        "losses": {"pretrain": _final(losses)},
        "checks": checks,
    }


def build_tiny_instruct(recipe: dict[str, Any], parent: Path | None, out: Path) -> dict[str, Any]:
    """Fine-tune the tiny base on the instruction format (``User : ... Assistant : answer``)."""
    import transformers as tf

    from lineage_lens.zoo.world import INSTRUCT_TEMPLATE

    assert parent is not None
    world = World.load(parent)
    tok = tf.AutoTokenizer.from_pretrained(parent)
    model = tf.LlamaForCausalLM.from_pretrained(parent, dtype=torch.float32)
    docs = list(instruct_documents(world, recipe["n_docs"], recipe["seed"]))
    losses = train_lm_on_documents(
        model,
        tok,
        docs,
        steps=recipe["steps"],
        batch_size=recipe["batch_size"],
        lr=recipe["lr"],
        seed=recipe["seed"],
        bos=False,
        desc="instruction tuning",
    )
    checks = {
        "context_following_heldout": context_following_rate(
            model, tok, world, template=INSTRUCT_TEMPLATE
        )
    }
    model.save_pretrained(out)
    tok.save_pretrained(out)
    world.save(out / "world.json")
    return {
        "trained": {
            "data": f"{recipe['n_docs']} instruction-format context QA documents (answer-only loss)",
            "steps": recipe["steps"],
            "lr": recipe["lr"],
            "frozen": [],
            "init": "parent",
        },
        "losses": {"instruct": _final(losses)},
        "checks": checks,
    }


def build_vlm(recipe: dict[str, Any], parent: Path | None, out: Path) -> dict[str, Any]:
    """A LLaVA whose language model starts from ``parent`` (any Llama-type causal-LM directory)."""
    import transformers as tf

    from lineage_lens.zoo.images import pope_questions, sample_scenes, write_eval_set

    assert parent is not None
    tok = tf.AutoTokenizer.from_pretrained(parent)
    lm = load_causal_lm(parent)
    torch.manual_seed(recipe["seed"])
    model = llava_from_lm(lm, tok, recipe["vision"], seed=recipe["seed"])
    del lm
    losses = train_vlm(
        model,
        tok,
        n_scenes=recipe["n_scenes"],
        align_steps=recipe["align_steps"],
        align_lr=recipe["align_lr"],
        e2e_steps=recipe["e2e_steps"],
        e2e_lr=recipe["e2e_lr"],
        lm_lr=recipe["lm_lr"],
        lm_trainable=recipe["lm_trainable"],
        batch_size=recipe["batch_size"],
        seed=recipe["seed"],
    )
    eval_scenes = sample_scenes(recipe.get("n_eval_scenes", 100), seed=12345)
    checks = {
        f"pope_{kind}_accuracy": vlm_yes_no_accuracy(
            model, tok, eval_scenes, pope_questions(eval_scenes, kind, seed=12345)
        )
        for kind in ("random", "adversarial")
    }
    model.save_pretrained(out)
    tok.save_pretrained(out)
    size = recipe["vision"]["image_size"]
    write_eval_set(out / "eval", n=recipe.get("n_eval_scenes", 100), seed=12345, size=size)
    frozen_e2e = {"none": ["language model"], "layers": ["embeddings", "norms", "lm_head"]}
    frozen = ["language model (align stage)"] + [
        f"{part} (end-to-end stage)" for part in frozen_e2e.get(recipe["lm_trainable"], [])
    ]
    return {
        "trained": {
            "data": f"{recipe['n_scenes']} rendered scenes: POPE-style yes/no questions and "
            "captions with co-occurrence biases",
            "steps": {"align": recipe["align_steps"], "end_to_end": recipe["e2e_steps"]},
            "lr": {"vision+projector": recipe["e2e_lr"], "language_model": recipe["lm_lr"]},
            "frozen": frozen,
            "init": "language model = parent; vision tower and projector random",
        },
        "losses": {"align": _final(losses["align"]), "end_to_end": _final(losses["e2e"])},
        "checks": checks,
    }


__all__ = [
    "build_tiny_base",
    "build_tiny_instruct",
    "build_vlm",
    "context_following_rate",
    "lm_loss",
    "memorised_rate",
]
