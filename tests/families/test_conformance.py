"""Architecture conformance: every registered family, end to end, on a tiny random config.

The registry, :data:`lineage_lens.families.FAMILIES`, names the architectures ``lineage-lens``
supports; the tests run once per registered family (:data:`CONFORMANCE`) on its tiny config, built
by :func:`lineage_lens.testing.make_tiny_model` from the family's tiny builder (2 layers, hidden
64, 4 query and 2 key/value heads). For every family the public API must:

* boot through ``load_model`` with bridge logits equal to Hugging Face's (text, and with an image
  for vision-language models);
* capture text activations (and image activations for vision-language models) batched, with
  either padding side, equal to per-example unbatched ``run_with_cache``;
* fit Truth Scores; gate with every placement (alpha 0 and uniform scores bit-identical, ``z`` ==
  ``fold`` within 1e-5, ``fold`` restores the weights bit-exactly), also on image prompts;
* generate with the key/value cache exactly as greedy full forwards (with an image too);
* measure weight drift (from directories and from bridges, equal), CKA and attention to evidence;
* for vision-language models, run POPE on two rendered images in log-prob and generate mode and
  caption them for CHAIR;
* in bfloat16: capture, gate and fold (restoring the weights bit-exactly).

``docs/architectures.md`` is the table this file proves. A new architecture is one new module of
:mod:`lineage_lens.families` (registered with its tiny builder): it is tested here without a change
(``tests/families/test_registry.py`` checks that every registered family is).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from lineage_lens import kvcache
from lineage_lens.attention import evidence_attention
from lineage_lens.batching import pad_batch, pad_token_id
from lineage_lens.capture import collect_head_activations, encode_examples
from lineage_lens.cka import head_cka
from lineage_lens.data import LLAVA_PROBE_TEMPLATE, ProbeExample
from lineage_lens.evals import run_prompts
from lineage_lens.evals.chair import generate_captions
from lineage_lens.evals.pope import evaluate_pope
from lineage_lens.families import FAMILIES, Family
from lineage_lens.gating import TruthGate
from lineage_lens.images import (
    encode_image_prompt,
    greedy_generate,
    image_batch_kwargs,
    image_inputs,
)
from lineage_lens.kvcache import (
    KVCacheCheck,
    KVCacheWarning,
    check_kv_cache,
    forget_kv_cache_verdict,
    kv_cache_ok,
)
from lineage_lens.models import attn_hook_name, head_geometry, load_model
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores
from lineage_lens.testing import make_tiny_model
from lineage_lens.weights import weight_drift
from lineage_lens.zoo.images import render_scene, sample_scenes
from tests.test_kv_cache import PROMPT, greedy_full_forward, paired_examples, prompt_items

pytestmark = pytest.mark.model

#: Every registered family with a tiny config, in registry order: the conformance parametrisation.
CONFORMANCE: list[Family] = [f for f in FAMILIES if f.tiny is not None]
MULTIMODAL = [f for f in CONFORMANCE if f.multimodal]
#: Key/value heads of a family's conformance config where not 2: Llama is tested with multi-head
#: attention (grouped-query attention is everywhere else), Phi3 as its checkpoints come.
N_KV_HEADS = {"llama": 4, "phi3": 4}

N_HEADS, D_HEAD = 4, 16  # hidden 64
N_NEW = 4  # generated tokens


def _build(root: Path, family: Family, seed: int, dtype: torch.dtype = torch.float32) -> Path:
    directory = root / f"{family.name}-{seed}-{str(dtype).removeprefix('torch.')}"
    return make_tiny_model(
        directory,
        family.name,
        n_heads=N_HEADS,
        n_kv_heads=N_KV_HEADS.get(family.name, 2),
        d_head=D_HEAD,
        seed=seed,
        dtype=dtype,
    )


@dataclass
class Loaded:
    family: Family
    directory: Path
    model: Any
    #: a second model of the family (another seed): the "descendant" of drift and CKA
    other_directory: Path


@pytest.fixture(scope="module")
def loaded_families(tmp_path_factory) -> dict[str, Loaded]:
    """Each family built and loaded once for the module (``fam`` and ``mm`` share them)."""
    return {}


def _load(family: Family, store: dict[str, Loaded], tmp_path_factory) -> Loaded:
    if family.name not in store:
        root = tmp_path_factory.mktemp(f"family-{family.name}")
        directory = _build(root, family, seed=11)
        other = _build(root, family, seed=12)
        store[family.name] = Loaded(family, directory, load_model(directory, device="cpu"), other)
    return store[family.name]


@pytest.fixture(scope="module", params=CONFORMANCE, ids=str)
def fam(request, loaded_families, tmp_path_factory) -> Loaded:
    return _load(request.param, loaded_families, tmp_path_factory)


@pytest.fixture(scope="module", params=MULTIMODAL, ids=str)
def mm(request, loaded_families, tmp_path_factory) -> Loaded:
    return _load(request.param, loaded_families, tmp_path_factory)


@pytest.fixture(scope="module")
def scene_dir(tmp_path_factory) -> Path:
    """Two rendered scenes of different sizes (any-resolution families tile them differently)
    and a POPE file about them."""
    root = tmp_path_factory.mktemp("scenes")
    (root / "images").mkdir()
    rows = []
    for i, (scene, size) in enumerate(zip(sample_scenes(2, 7), (32, 24), strict=True)):
        name = f"scene{i}.png"
        Image.fromarray(render_scene(scene, size)).save(root / "images" / name)
        present, absent = (
            scene.objects[0],
            next(o for o in ("cat", "dog", "car") if o not in scene.objects),
        )
        for obj, label in ((present, "yes"), (absent, "no")):
            rows.append(
                {
                    "question_id": len(rows) + 1,
                    "image": name,
                    "text": f"is there a {obj} ?",
                    "label": label,
                }
            )
    (root / "pope.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


def _image_examples(n: int = 5) -> list[ProbeExample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        h, w = 16 + 8 * (i % 3), 16 + 16 * (i % 2)
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        q = "what is in the image ?" + " the" * i
        out.append(
            ProbeExample("", q, "a cat" if i % 2 else "a dog and a car", i % 2, f"s{i}", img)
        )
    return out


def _hf_model(directory: Path) -> Any:
    """The checkpoint loaded by Hugging Face alone (no bridge), in eval mode."""
    import transformers

    arch = json.loads((directory / "config.json").read_text())["architectures"][0]
    return getattr(transformers, arch).from_pretrained(directory, dtype=torch.float32).eval()


def _reference(model, examples, template=None, images=None) -> np.ndarray:
    """Per example, unbatched ``run_with_cache``: ``hook_z`` at the probed token."""
    inputs = image_inputs(model) if images is not None else None
    rows = []
    for i, ex in enumerate(examples):
        kw: dict[str, Any] = {}
        if inputs is not None:
            text = inputs.image_text(images[i])
            enc = encode_examples(model, [ex], prompt_template=template, image_text=text)[0]
        else:
            enc = encode_examples(model, [ex], prompt_template=template)[0]
        ids = torch.tensor([enc.input_ids])
        if inputs is not None:
            kw = image_batch_kwargs(inputs, [images[i]], ids)
        with torch.inference_mode():
            _, cache = model.run_with_cache(ids, **kw)
        rows.append(
            np.stack(
                [
                    cache[attn_hook_name(layer)][0, enc.position].float().numpy()
                    for layer in range(model.cfg.n_layers)
                ]
            )
        )
    return np.stack(rows)


def _image_prompt(model, image) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One image prompt's tokens and every extra forward input."""
    inputs = image_inputs(model)
    ids = torch.tensor(
        [encode_image_prompt(model.tokenizer, "what is in the image ?", inputs, image=image)]
    )
    return ids, image_batch_kwargs(inputs, [image], ids)


def _text_prompt(model) -> torch.Tensor:
    tok = model.tokenizer
    ids = tok(PROMPT, add_special_tokens=False).input_ids
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return torch.tensor([bos + ids])


def _scores(model, seed: int = 5) -> TruthScores:
    rng = np.random.default_rng(seed)
    return TruthScores({"accuracy": rng.uniform(0.45, 0.95, size=head_geometry(model).shape)})


def _o_weights(model) -> list[torch.Tensor]:
    """The O-projection weights of every block (what a fold scales), as in tests/test_gating.py."""
    return [block.attn.o.original_component.weight.detach().clone() for block in model.blocks]


# ------------------------------------------------------------------------------ boot, logits
def test_boots_with_logits_equal_to_hugging_face(fam):
    model = fam.model
    geo = head_geometry(model)
    assert geo.shape == (2, N_HEADS) and geo.d_model == N_HEADS * D_HEAD
    config = json.loads((fam.directory / "config.json").read_text())  # the registry says true
    assert config["architectures"] == [fam.family.architecture]
    assert config["model_type"] in fam.family.model_types
    hf = _hf_model(fam.directory)
    ids = _text_prompt(model)
    with torch.inference_mode():
        torch.testing.assert_close(model(ids), hf(input_ids=ids).logits, rtol=0, atol=1e-5)
        if fam.family.multimodal:
            img = _image_examples(2)[1].image
            ids, kw = _image_prompt(model, img)
            torch.testing.assert_close(
                model(ids, **kw),
                hf(input_ids=ids, attention_mask=torch.ones_like(ids), **kw).logits,
                rtol=0,
                atol=1e-5,
            )


# ------------------------------------------------------------------------------ capture
def test_text_capture_equals_unbatched_run_with_cache(fam):
    model = fam.model
    examples = paired_examples(2)
    reference = _reference(model, examples)
    for side in ("left", "right"):
        acts = collect_head_activations(
            model,
            examples,
            batch_size=4,
            padding_side=side,
            share_prefix=False,
            dtype=torch.float32,
            progress=False,
        )
        np.testing.assert_allclose(acts.acts, reference, atol=1e-4)
    shared = collect_head_activations(
        model, examples, batch_size=4, dtype=torch.float32, progress=False
    )
    np.testing.assert_allclose(shared.acts, reference, atol=1e-4)


def test_image_capture_equals_unbatched_run_with_cache(mm):
    model = mm.model
    examples = _image_examples()
    reference = _reference(model, examples, LLAVA_PROBE_TEMPLATE, [ex.image for ex in examples])
    for side in ("left", "right"):
        acts = collect_head_activations(
            model, examples, batch_size=3, padding_side=side, dtype=torch.float32, progress=False
        )
        assert acts.meta["condition"] == "image"
        assert acts.meta["image_inputs"]["model_type"] in mm.family.model_types
        np.testing.assert_allclose(acts.acts, reference, atol=1e-4)
    black = collect_head_activations(
        model, examples, condition="black_image", batch_size=3, dtype=torch.float32, progress=False
    )
    black_ref = image_inputs(model).black_image()
    np.testing.assert_allclose(
        black.acts,
        _reference(model, examples, LLAVA_PROBE_TEMPLATE, [black_ref] * len(examples)),
        atol=1e-4,
    )
    assert not np.allclose(black.acts, acts.acts, atol=1e-4)


def test_image_tokens_match_hugging_face_processors(mm):
    """The image tokens of a prompt are those Hugging Face's own processor writes (LLaVA-NeXT's
    any-resolution count is computed here; Gemma3's sequence is fixed; Qwen-VL's processor needs
    torchvision for its video half, so its count is checked by the forward pass instead)."""
    import transformers

    model = mm.model
    inputs = image_inputs(model)
    images = [Image.new("RGB", (w, h)) for h, w in ((16, 16), (24, 16), (16, 40), (33, 17))]
    if mm.family.name == "llava_next":
        processor = transformers.LlavaNextProcessor(
            image_processor=inputs.processor,
            tokenizer=model.tokenizer,
            patch_size=model.original_model.config.vision_config.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    elif mm.family.name == "llava":
        processor = transformers.LlavaProcessor(
            image_processor=inputs.processor,
            tokenizer=model.tokenizer,
            patch_size=model.original_model.config.vision_config.patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        )
    else:
        for im in images:  # the tokens the model consumes: checked by its own forward pass
            ids, kw = _image_prompt(model, im)
            assert int((ids == inputs.image_token_id).sum()) == inputs.n_image_tokens(im)
            model(ids, **kw)
        return
    for im in images:
        ids = processor(images=[im], text=[inputs.image_token], return_tensors="pt")["input_ids"]
        assert int((ids == inputs.image_token_id).sum()) == inputs.n_image_tokens(im)


def test_truth_scores_fit(fam):
    examples = paired_examples(3) * 2
    acts = collect_head_activations(
        fam.model, examples, batch_size=8, dtype=torch.float32, progress=False
    )
    scores = fit_truth_scores(acts, folds=2, progress=False)
    values = scores.get("accuracy")
    assert values.shape == head_geometry(fam.model).shape and np.isfinite(values).all()


# ------------------------------------------------------------------------------ gating
def _inputs(loaded: Loaded) -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    out = [(_text_prompt(loaded.model), {})]
    if loaded.family.multimodal:
        out.append(_image_prompt(loaded.model, _image_examples(2)[1].image))
    return out


@pytest.mark.parametrize("placement", ["z", "fold", "reference"])
def test_identity_gates_leave_logits_bit_identical(fam, placement):
    model = fam.model
    scores = _scores(model)
    for ids, kw in _inputs(fam):
        base = model(ids, **kw)
        for gate in (
            TruthGate(scores, alpha=0.0, placement=placement),
            TruthGate.uniform_control(scores, alpha=4.5, norm="center", placement=placement),
        ):
            with gate.applied(model):
                assert torch.equal(model(ids, **kw), base)


def test_z_equals_fold_and_fold_restores_weights(fam):
    model = fam.model
    gate = TruthGate(_scores(model), alpha=4.5)
    before = _o_weights(model)
    for ids, kw in _inputs(fam):
        base = model(ids, **kw)
        with gate.applied(model, "z"):
            z_logits = model(ids, **kw)
        with gate.applied(model, "fold"):
            folded = model(ids, **kw)
        assert not torch.equal(z_logits, base)
        torch.testing.assert_close(z_logits, folded, rtol=0, atol=1e-5)
        assert torch.equal(model(ids, **kw), base)
    assert all(torch.equal(a, b) for a, b in zip(_o_weights(model), before, strict=True))


# ------------------------------------------------------------------------------ generation
@pytest.mark.parametrize("gated", [False, True])
def test_cached_generate_equals_greedy_full_forwards(fam, gated):
    """Text: TransformerBridge.generate with its cache. Images: lineage-lens' own decoding
    (images.greedy_generate, what POPE and CHAIR use), cached and uncached, on a left-padded
    batch of two images of different sizes."""
    model = fam.model
    gate = TruthGate(_scores(model), alpha=4.5) if gated else None
    ids = _text_prompt(model)
    with gate.applied(model) if gate else contextlib.nullcontext(), torch.no_grad():
        generated = model.generate(
            ids,
            max_new_tokens=N_NEW,
            do_sample=False,
            verbose=False,
            return_type="tokens",
            use_past_kv_cache=True,
            stop_at_eos=False,
        )
        assert torch.equal(generated.cpu(), greedy_full_forward(model, ids, {}, N_NEW))
        if not fam.family.multimodal:
            return
        inputs = image_inputs(model)
        images = [ex.image for ex in _image_examples(3)[1:]]
        prompts = [
            encode_image_prompt(model.tokenizer, "what is in the image ?", inputs, image=im)
            for im in images
        ]
        batch = pad_batch(prompts, pad_token_id(model.tokenizer), "left")
        cached = greedy_generate(
            model, batch.input_ids, batch.attention_mask, inputs, images, N_NEW
        )
        if not gated:  # the uncached path (a model whose cache check fails) decodes the same
            full = greedy_generate(
                model, batch.input_ids, batch.attention_mask, inputs, images, N_NEW, use_cache=False
            )
            assert torch.equal(cached, full)
        for row, (prompt, image) in enumerate(zip(prompts, images, strict=True)):
            tokens = torch.tensor([prompt])
            for _ in range(N_NEW):  # greedy full forwards, one prompt, no padding
                kw = image_batch_kwargs(inputs, [image], tokens)
                nxt = model(tokens, **kw)[:, -1].argmax(-1, keepdim=True)
                tokens = torch.cat([tokens, nxt], dim=1)
            assert torch.equal(cached[row], tokens[0, len(prompt) :])


def test_kv_cache_check_and_shared_prefix_scoring(fam):
    """The once-per-model cache check passes, and yes/no scoring on a shared prefix's cache equals
    scoring the full prompts (the evaluators' fast path)."""
    model = fam.model
    assert check_kv_cache(model).ok
    items = prompt_items(model)
    shared = run_prompts(model, items, batch_size=2, progress=False)
    full = run_prompts(model, items, batch_size=2, progress=False, share_prefix=False)
    for key, rec in full.items():
        assert shared[key]["log_p_yes"] == pytest.approx(rec["log_p_yes"], abs=1e-5)
        assert shared[key]["log_p_no"] == pytest.approx(rec["log_p_no"], abs=1e-5)


# ------------------------------------------------------------------------------ drift, CKA, attention
def test_weight_drift_from_directories_equals_from_bridges(fam):
    from_dirs = weight_drift(fam.directory, fam.other_directory)
    other = load_model(fam.other_directory, device="cpu")
    from_bridges = weight_drift(fam.model, other)
    shape = head_geometry(fam.model).shape
    for key in ("q_rel", "k_rel", "v_rel", "o_rel", "qk_rel", "ov_rel", "q_cos", "ov_cos"):
        a, b = from_dirs.heads[key], from_bridges.heads[key]
        assert a.shape == shape and np.isfinite(a).all()
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)
    assert all((from_dirs.heads[f"{p}_rel"] > 0).all() for p in ("q", "k", "v", "o"))
    same = weight_drift(fam.directory, fam.directory)
    assert all((same.heads[f"{p}_rel"] == 0).all() for p in ("q", "k", "v", "o"))

    examples = paired_examples(3)
    kw = dict(batch_size=8, dtype=torch.float32, progress=False)
    mine = collect_head_activations(fam.model, examples, **kw)
    cka = head_cka(mine, collect_head_activations(other, examples, **kw), progress=False)
    assert cka.values.shape == head_geometry(fam.model).shape
    assert np.isfinite(cka.values).all() and (cka.values <= 1 + 1e-9).all()
    self_cka = head_cka(mine, mine.acts.copy(), progress=False)
    np.testing.assert_allclose(self_cka.values, 1.0, atol=1e-6)


def test_attention_to_evidence(fam):
    model = fam.model
    prompts = ["Context : the cat is red . Question : what is the cat ? Answer : red"] * 2
    start = prompts[0].index("the cat is red")
    spans = [[(start, start + len("the cat is red"))]] * 2
    att = evidence_attention(model, prompts, spans, batch_size=2, progress=False)
    assert att.values.shape == head_geometry(model).shape
    assert ((att.values > 0) & (att.values < 1)).all()
    if fam.family.multimodal:
        inputs = image_inputs(model)
        images = [ex.image for ex in _image_examples(3)]
        texts = [
            f"USER : {inputs.image_text(im)} what is in the image ? ASSISTANT :" for im in images
        ]
        img_att = evidence_attention(
            model, texts, image_evidence=True, images=images, batch_size=2, progress=False
        )
        assert ((img_att.values > 0) & (img_att.values < 1)).all()
        one = evidence_attention(
            model, texts[:1], image_evidence=True, images=images[:1], progress=False
        )
        np.testing.assert_allclose(img_att.per_example[0], one.per_example[0], atol=1e-5)


# ------------------------------------------------------------------------------ POPE, CHAIR
@pytest.mark.parametrize("mode", ["logprob", "generate"])
def test_pope_on_rendered_images(mm, scene_dir, mode):
    gate = TruthGate(_scores(mm.model), alpha=4.5)
    result = evaluate_pope(
        mm.model,
        scene_dir / "images",
        [scene_dir / "pope.json"],
        mode=mode,
        batch_size=4,
        max_new_tokens=3,
        progress=False,
    )
    assert len(result.examples) == 4 and result.config["mode"] == mode
    if mode == "logprob":
        assert result.examples["log_p_yes"].notna().all()
        # batched (mixed image sizes) == one prompt at a time
        single = evaluate_pope(
            mm.model, scene_dir / "images", [scene_dir / "pope.json"], batch_size=1, progress=False
        )
        np.testing.assert_allclose(
            result.examples["log_p_yes"], single.examples["log_p_yes"], atol=1e-4
        )
        gated = evaluate_pope(
            mm.model,
            scene_dir / "images",
            [scene_dir / "pope.json"],
            gate=gate,
            batch_size=4,
            progress=False,
        )
        assert not np.allclose(gated.examples["log_p_yes"], result.examples["log_p_yes"], atol=1e-6)
    else:
        assert result.examples["text"].map(lambda t: isinstance(t, str)).all()
        single = evaluate_pope(
            mm.model,
            scene_dir / "images",
            [scene_dir / "pope.json"],
            mode=mode,
            batch_size=1,
            max_new_tokens=3,
            progress=False,
        )
        assert result.examples["text"].tolist() == single.examples["text"].tolist()


def test_chair_captions_on_rendered_images(mm, scene_dir, monkeypatch):
    """Captions batched == one at a time == without the key/value cache (the path taken when a
    model fails the cache check; TransformerLens' own uncached generate drops the image after
    the first step, so image prompts never go through it)."""

    def captions(batch_size: int) -> list[str]:
        out = generate_captions(
            mm.model,
            scene_dir / "images",
            ["0", "1"],
            file_pattern="scene{image_id}.png",
            max_new_tokens=4,
            batch_size=batch_size,
            progress=False,
        )
        return [c.caption for c in out]

    batched = captions(2)
    assert batched == captions(1)
    # A model that fails the cache check (as under transformers 5.24 with TransformerLens 4.3.0)
    # has its captions decoded without the cache.
    failed = KVCacheCheck(False, 1.0, 1e-4, "simulated mismatch")
    monkeypatch.setattr(kvcache, "check_kv_cache", lambda model: failed)
    forget_kv_cache_verdict(mm.model)
    try:
        with pytest.warns(KVCacheWarning):
            assert not kv_cache_ok(mm.model)
        assert captions(2) == batched
    finally:
        forget_kv_cache_verdict(mm.model)  # the next test checks the model afresh


# ------------------------------------------------------------------------------ bfloat16
def test_bfloat16_captures_gates_and_folds(fam, tmp_path):
    directory = _build(tmp_path, fam.family, seed=11, dtype=torch.bfloat16)
    model = load_model(directory, device="cpu", dtype=torch.bfloat16)
    examples = paired_examples(2)
    acts = collect_head_activations(model, examples, batch_size=4, progress=False)
    assert np.isfinite(acts.acts).all()
    gate = TruthGate(_scores(model), alpha=4.5)
    before = _o_weights(model)
    assert before[0].dtype == torch.bfloat16
    for ids, kw in _inputs(Loaded(fam.family, directory, model, directory)):
        base = model(ids, **kw)
        with gate.applied(model, "z"):
            z_logits = model(ids, **kw)
        with gate.applied(model, "fold"):
            folded = model(ids, **kw)
        assert torch.isfinite(z_logits).all() and torch.isfinite(folded).all()
        assert not torch.equal(z_logits, base)
        assert torch.equal(model(ids, **kw), base)
    assert all(torch.equal(a, b) for a, b in zip(_o_weights(model), before, strict=True))
