"""Small, seeded training loops for the zoo: causal LMs and LLaVA-type multimodal models (CPU-sized).

These are deliberately plain PyTorch loops (AdamW, warm-up + cosine decay, gradient clipping,
a tqdm bar) over Hugging Face ``transformers`` models; bridges are only for analysis.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from tqdm.auto import tqdm

from lineage_lens.data import PromptTemplate
from lineage_lens.errors import ConfigError
from lineage_lens.testing import IMAGE_TOKEN
from lineage_lens.zoo.images import (
    CAPTION_PROMPT,
    COOCCUR,
    OBJECTS,
    POPE_QUESTION,
    Scene,
    render_scene,
    sample_scenes,
    to_pixel_values,
)

log = logging.getLogger(__name__)

#: Prompt of the zoo's multimodal members: image tokens, the question, the answer.
VLM_PROMPT = "Question: {question}\n{image}\nAnswer:"

#: Probing template of the zoo's multimodal members for image-grounded examples
#: (:func:`~lineage_lens.zoo.images.scene_probe_examples`): their training prompt and the answer.
VLM_PROBE_TEMPLATE = PromptTemplate(VLM_PROMPT + " {answer}", name="zoo-vlm")

#: The TruthProbe paper's prompt (context, question, answer) with the image where the zoo's
#: multimodal members read it (between question and answer): the black-image condition on text
#: probing data. Text-only (``{image}`` left empty) it tokenizes like the paper's prompt with the
#: zoo's word-level tokenizer, which ignores line breaks.
VLM_CONTEXT_PROBE_TEMPLATE = PromptTemplate(
    "Context:\n{context}\n\n" + VLM_PROMPT + " {answer}", name="zoo-vlm-context"
)

Segments = list[tuple[str, bool]]


def encode_segments(
    tokenizer: Any,
    docs: Iterable[Segments],
    *,
    max_len: int = 128,
    bos: bool | float = False,
    eos: bool = True,
    seed: int = 0,
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """Tokenise documents made of ``(text, trained)`` segments into right-padded tensors.

    Returns ``(input_ids, labels, attention_mask)``; labels are ``-100`` on untrained segments and
    padding. ``bos`` may be a probability (documents then start with BOS only sometimes, so the
    model works with and without it). ``eos`` appends the end-of-sequence token (trained).
    """
    rng = np.random.default_rng(seed)
    rows: list[tuple[list[int], list[int]]] = []
    for doc in docs:
        ids: list[int] = []
        lab: list[int] = []
        use_bos = bool(bos) if isinstance(bos, bool) else bool(rng.random() < bos)
        if use_bos and tokenizer.bos_token_id is not None:
            ids.append(tokenizer.bos_token_id)
            lab.append(-100)
        for text, trained in doc:
            part = tokenizer(text, add_special_tokens=False).input_ids
            ids += part
            lab += part if trained else [-100] * len(part)
        if eos:
            ids.append(tokenizer.eos_token_id)
            lab.append(tokenizer.eos_token_id)
        rows.append((ids[:max_len], lab[:max_len]))
    if not rows:
        raise ConfigError("no training documents.")
    width = max(len(r[0]) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return input_ids, labels, mask


def lm_loss(
    logits: Float[Tensor, "batch pos vocab"], labels: Int[Tensor, "batch pos"]
) -> Float[Tensor, ""]:
    """Next-token cross-entropy over positions whose label is not ``-100``."""
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
    )


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def run_training(
    params: Sequence[nn.Parameter],
    loss_fn: Callable[[int], Tensor],
    *,
    steps: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup: int | None = None,
    desc: str = "training",
    clip: float = 1.0,
) -> list[float]:
    """AdamW on ``params`` for ``steps`` steps of ``loss_fn(step)``; returns the loss per step."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError(f"{desc}: nothing to train (no parameter requires grad).")
    if steps < 1 or not lr > 0:
        raise ConfigError(f"{desc}: need steps >= 1 and lr > 0 (got {steps}, {lr}).")
    warmup = max(1, steps // 20) if warmup is None else max(1, warmup)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, warmup))
    losses: list[float] = []
    with tqdm(range(steps), desc=desc, unit="step", leave=False) as bar:
        for step in bar:
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return losses


def train_lm_on_documents(
    model: nn.Module,
    tokenizer: Any,
    docs: list[Segments],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    seed: int,
    max_len: int = 128,
    bos: bool | float = 0.5,
    params: Sequence[nn.Parameter] | None = None,
    desc: str = "training",
) -> list[float]:
    """Train a causal LM on segment documents (random batches, seeded); returns step losses."""
    input_ids, labels, mask = encode_segments(tokenizer, docs, max_len=max_len, bos=bos, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    model.train()

    def loss_fn(_: int) -> Tensor:
        idx = torch.randint(0, len(input_ids), (batch_size,), generator=gen)
        width = int(mask[idx].sum(1).max())
        out = model(input_ids=input_ids[idx, :width], attention_mask=mask[idx, :width])
        return lm_loss(out.logits, labels[idx, :width])

    losses = run_training(
        list(params) if params is not None else list(model.parameters()),
        loss_fn,
        steps=steps,
        lr=lr,
        weight_decay=0.01,
        desc=desc,
    )
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# LLaVA from any causal LM
# ----------------------------------------------------------------------------------------------


def load_causal_lm(path: str | Path) -> nn.Module:
    """A float32 causal LM from a HF directory, as a plain (saveable) model.

    Directories converted from GGUF keep a ``quantization_config`` that makes the loaded model
    unserialisable; it is dropped here (the weights are already dequantised).
    """
    import transformers as tf

    config = tf.AutoConfig.from_pretrained(path)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    return tf.AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch.float32)


def ensure_image_token(tokenizer: Any) -> int:
    """Add :data:`IMAGE_TOKEN` as a special token if missing; return its id."""
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    return int(tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))


def llava_from_lm(
    lm: nn.Module, tokenizer: Any, vision: dict[str, int], *, seed: int = 0
) -> nn.Module:
    """A ``LlavaForConditionalGeneration`` whose language model is a copy of ``lm``.

    ``vision`` gives the tiny CLIP vision tower (image_size, patch_size, hidden_size, layers,
    heads), trained from scratch. The image token is added to ``tokenizer`` (embeddings resized).
    """
    import transformers as tf

    image_id = ensure_image_token(tokenizer)
    if lm.get_input_embeddings().weight.shape[0] < len(tokenizer):
        lm.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    torch.manual_seed(seed)
    vcfg = tf.CLIPVisionConfig(
        hidden_size=vision["hidden_size"],
        intermediate_size=2 * vision["hidden_size"],
        num_hidden_layers=vision["layers"],
        num_attention_heads=vision["heads"],
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        projection_dim=vision["hidden_size"],
    )
    text_cfg = lm.config
    text_cfg.vocab_size = lm.get_input_embeddings().weight.shape[0]
    config = tf.LlavaConfig(
        vision_config=vcfg,
        text_config=text_cfg,
        image_token_index=image_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=bool(getattr(text_cfg, "tie_word_embeddings", False)),
    )
    model = tf.LlavaForConditionalGeneration(config)
    model.model.language_model.load_state_dict(lm.model.state_dict())
    model.lm_head.weight.data.copy_(lm.lm_head.weight.data)
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def n_image_tokens(model: nn.Module) -> int:
    """Image tokens per image for a LLaVA model with the "default" strategy (CLS dropped)."""
    v = model.config.vision_config
    return (v.image_size // v.patch_size) ** 2


def image_features(model: nn.Module, pixel_values: Tensor) -> Float[Tensor, "batch tok d_model"]:
    """Projected image features (what replaces the image tokens) of a LLaVA model."""
    out = model.model.vision_tower(pixel_values, output_hidden_states=True)
    return model.model.multi_modal_projector(out.hidden_states[-1][:, 1:])


def vlm_examples(
    scenes: Sequence[Scene], seed: int, *, caption_rate: float = 0.3
) -> list[tuple[int, str, str]]:
    """``(scene index, question, answer)``: balanced POPE questions per scene, plus captions.

    Every present object gets a "yes" question and as many absent objects a "no" question (half
    of them the usual companion of a present object: the adversarial case).
    """
    rng = np.random.default_rng(seed)
    out = []
    for i, scene in enumerate(scenes):
        if rng.random() < caption_rate:
            out.append((i, CAPTION_PROMPT, " " + scene.caption()))
        absent = [o for o in OBJECTS if o not in scene.objects]
        partners = [COOCCUR[o] for o in scene.objects if COOCCUR[o] in absent]
        for obj in scene.objects:
            out.append((i, POPE_QUESTION.format(obj=obj), " yes"))
            pool = partners if partners and rng.random() < 0.5 else absent
            out.append((i, POPE_QUESTION.format(obj=pool[int(rng.integers(len(pool)))]), " no"))
    return out


def encode_vlm(
    tokenizer: Any,
    n_img: int,
    items: Sequence[tuple[str, str]],
    *,
    bos: bool | None = None,
    eos: bool = True,
) -> tuple[Int[Tensor, "n pos"], Int[Tensor, "n pos"], Int[Tensor, "n pos"]]:
    """Tokenise ``(question, answer)`` pairs after ``n_img`` image tokens (answer trained).

    ``bos=None`` starts each prompt with BOS exactly when the tokenizer adds one
    (:func:`adds_bos`), as :func:`lineage_lens.images.encode_image_prompt` -- the evaluators' and
    the capture's tokenization -- does: a model trained otherwise is evaluated on a first token it
    never saw (SmolLM2's ``<|im_start|>`` moved ``smollm2-vlm``'s POPE from 0.85 to 0.69)."""
    if bos is None:
        bos = adds_bos(tokenizer)
    image = IMAGE_TOKEN * n_img
    docs = [[(VLM_PROMPT.format(image=image, question=q), False), (a, True)] for q, a in items]
    return encode_segments(tokenizer, docs, max_len=n_img + 64, bos=bos, eos=eos)


def adds_bos(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` puts its BOS token first when it adds special tokens."""
    ids = list(tokenizer("a", add_special_tokens=True).input_ids)
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


def cell_targets(
    scenes: Sequence[Scene], grid: int, embed: Float[Tensor, "vocab d"], word_ids: dict[str, int]
) -> Float[Tensor, "n tok d"]:
    """Per image token: the word embedding of the object in its grid cell (zeros when empty)."""
    out = torch.zeros(len(scenes), grid * grid, embed.shape[1])
    for n, scene in enumerate(scenes):
        where = dict(zip(scene.cells, scene.objects, strict=True))
        for r in range(grid):
            for c in range(grid):
                cell = (r * 2 // grid) * 2 + (c * 2 // grid)
                if cell in where:
                    out[n, r * grid + c] = embed[word_ids[where[cell]]]
    return out


def object_word_ids(tokenizer: Any) -> dict[str, int]:
    """The (first) token id of each object word as it follows a space."""
    return {o: tokenizer(" " + o, add_special_tokens=False).input_ids[0] for o in OBJECTS}


def train_vlm(
    model: nn.Module,
    tokenizer: Any,
    *,
    n_scenes: int,
    align_steps: int,
    align_lr: float,
    e2e_steps: int,
    e2e_lr: float,
    lm_lr: float,
    lm_trainable: str,
    batch_size: int,
    seed: int,
) -> dict[str, list[float]]:
    """Two stages: align the projector to word embeddings (LM untouched), then end to end.

    Stage 1 trains the vision tower and projector so that each image token's feature matches the
    word embedding of the object in its cell: no backpropagation through the language model.
    Stage 2 trains on POPE-style yes/no questions and captions (answer tokens only); the language
    model is trained too when ``lm_trainable`` is ``"all"`` or ``"layers"`` (attention + MLP
    weights only) at ``lm_lr``, frozen when
    ``"none"``. Returns the step losses of both stages.
    """
    size = model.config.vision_config.image_size
    grid = size // model.config.vision_config.patch_size
    scenes = sample_scenes(n_scenes, seed)
    pixels = to_pixel_values(
        [render_scene(s, size) for s in tqdm(scenes, desc="rendering", leave=False)], size
    )
    lm = model.model.language_model
    embed = lm.get_input_embeddings().weight.detach()
    targets = cell_targets(scenes, grid, embed, object_word_ids(tokenizer))
    scale = float(embed.pow(2).sum(-1).mean())
    vis_params = list(model.model.vision_tower.parameters()) + list(
        model.model.multi_modal_projector.parameters()
    )
    gen = torch.Generator().manual_seed(seed)
    for p in lm.parameters():
        p.requires_grad_(False)
    model.lm_head.weight.requires_grad_(False)
    model.train()

    def align_loss(_: int) -> Tensor:
        idx = torch.randint(0, len(scenes), (batch_size,), generator=gen)
        feats = image_features(model, pixels[idx])
        return (feats - targets[idx]).pow(2).sum(-1).mean() / scale

    losses = {"align": [], "e2e": []}
    if align_steps:
        losses["align"] = run_training(
            vis_params, align_loss, steps=align_steps, lr=align_lr, desc="vlm align"
        )

    items = vlm_examples(scenes, seed + 1)
    n_img = n_image_tokens(model)
    input_ids, labels, mask = encode_vlm(tokenizer, n_img, [(q, a) for _, q, a in items])
    scene_idx = torch.tensor([i for i, _, _ in items])
    if lm_trainable not in ("none", "all", "layers"):
        raise ConfigError(f"lm_trainable must be none, layers or all, got {lm_trainable!r}.")
    groups = [{"params": vis_params, "lr": e2e_lr}]
    if lm_trainable != "none":
        lm_params = [
            p
            for name, p in lm.named_parameters()
            if lm_trainable == "all" or ("self_attn" in name or "mlp" in name)
        ]
        if lm_trainable == "all" and not any(p is model.lm_head.weight for p in lm_params):
            # words the parent never produced ("yes", "There") need their output rows trained
            lm_params.append(model.lm_head.weight)
        for p in lm_params:
            p.requires_grad_(True)
        groups.append({"params": lm_params, "lr": lm_lr})

    def e2e_loss(_: int) -> Tensor:
        idx = torch.randint(0, len(items), (batch_size,), generator=gen)
        width = int(mask[idx].sum(1).max())
        out = model(
            input_ids=input_ids[idx, :width],
            attention_mask=mask[idx, :width],
            pixel_values=pixels[scene_idx[idx]],
        )
        return lm_loss(out.logits, labels[idx, :width])

    if e2e_steps:
        losses["e2e"] = _run_groups(groups, e2e_loss, steps=e2e_steps, desc="vlm end-to-end")
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    return losses


def _run_groups(
    groups: list[dict[str, Any]], loss_fn: Callable[[int], Tensor], *, steps: int, desc: str
) -> list[float]:
    """Like :func:`run_training` but with per-group learning rates."""
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, warmup))
    params = [p for g in groups for p in g["params"]]
    losses: list[float] = []
    with tqdm(range(steps), desc=desc, unit="step", leave=False) as bar:
        for step in bar:
            loss = loss_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    return losses


@torch.no_grad()
def vlm_yes_no_accuracy(
    model: nn.Module, tokenizer: Any, scenes: Sequence[Scene], questions: Sequence[tuple]
) -> float:
    """Accuracy of a zoo VLM on ``(scene index, object, "yes"|"no")`` questions (yes vs no logit)."""
    size = model.config.vision_config.image_size
    n_img = n_image_tokens(model)
    yes = tokenizer(" yes", add_special_tokens=False).input_ids[0]
    no = tokenizer(" no", add_special_tokens=False).input_ids[0]
    pixels = to_pixel_values([render_scene(s, size) for s in scenes], size)
    prompts = [(POPE_QUESTION.format(obj=o), "") for _, o, _ in questions]
    input_ids, _, mask = encode_vlm(tokenizer, n_img, prompts, eos=False)
    last = mask.sum(1) - 1
    correct = 0
    for start in range(0, len(questions), 64):
        sl = slice(start, start + 64)
        idx = torch.tensor([i for i, _, _ in questions[sl]])
        logits = model(
            input_ids=input_ids[sl], attention_mask=mask[sl], pixel_values=pixels[idx]
        ).logits
        rows = torch.arange(logits.shape[0])
        pred_yes = logits[rows, last[sl], yes] > logits[rows, last[sl], no]
        truth = torch.tensor([lab == "yes" for _, _, lab in questions[sl]])
        correct += int((pred_yes == truth).sum())
    return correct / len(questions)
