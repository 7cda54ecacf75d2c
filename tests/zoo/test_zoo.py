"""The lineage zoo: the tiny synthetic family (profile "test"), its world, images and caching.

The session fixture builds the "test" profile once into the zoo cache (``$LINEAGE_LENS_CACHE/zoo``);
it is content-addressed, so later sessions reuse it. The real family is never built here; its
fine-tuning code path runs on a tiny model with a couple of steps.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from lineage_lens.data import check_two_classes
from lineage_lens.errors import ConfigError
from lineage_lens.zoo import MANIFEST, build_zoo, default_zoo_dir, load_zoo
from lineage_lens.zoo.images import (
    OBJECTS,
    pope_questions,
    render_scene,
    sample_scenes,
    to_pixel_values,
    write_eval_set,
)
from lineage_lens.zoo.recipes import profile_specs, recipe_hash
from lineage_lens.zoo.world import INSTRUCT_TEMPLATE, World, world_probe_examples

#: Builds or loads models: the model tier (make test-fast skips it).
pytestmark = pytest.mark.model

TINY = ["base", "instruct", "vlm", "control"]


@pytest.fixture(scope="session")
def zoo():
    """The "test" profile, built once (or reused from the cache)."""
    return build_zoo(default_zoo_dir(), "test", threads=1)


def _hf(path: Path):
    import transformers as tf

    tok = tf.AutoTokenizer.from_pretrained(path)
    cfg = json.loads((path / "config.json").read_text())
    cls = (
        tf.LlavaForConditionalGeneration
        if "LlavaForConditionalGeneration" in cfg["architectures"]
        else tf.LlamaForCausalLM
    )
    return cls.from_pretrained(path, dtype=torch.float32).eval(), tok


def test_manifest_complete(zoo):
    manifest = json.loads((zoo.root / MANIFEST).read_text())
    for name in TINY:
        rec = manifest["members"][name]
        assert (zoo.root / rec["path"]).is_dir()
        assert rec["path"] == zoo.path(name).name
        assert rec["path"].startswith(f"{name}-") and rec["hash"].startswith(rec["path"][-12:])
        for key in ("data", "steps", "lr", "frozen", "init"):
            assert key in rec["trained"], (name, key)
        assert rec["wall_time_s"] > 0
        assert rec["losses"] and all(math.isfinite(v) for v in rec["losses"].values())
        assert rec["recipe"]
    assert manifest["members"]["instruct"]["parent"] == "base"
    assert manifest["members"]["vlm"]["parent"] == "base"
    assert manifest["members"]["base"]["parent"] is None
    assert (
        manifest["members"]["control"]["recipe"]["world_seed"]
        != (manifest["members"]["base"]["recipe"]["world_seed"])
    )
    frame = zoo.to_frame()
    assert set(TINY) <= set(frame.index)


def test_members_boot_as_bridges_and_share_geometry(zoo):
    from lineage_lens.models import head_geometry, is_multimodal, load_model

    geoms = {}
    for name in TINY:
        bridge = load_model(zoo.path(name), device="cpu")
        geoms[name] = head_geometry(bridge)
        assert is_multimodal(bridge) == (name == "vlm")
    assert geoms["base"].shape == (4, 8) and geoms["base"].n_kv_heads == 4
    for name in TINY[1:]:
        geoms["base"].check_same(geoms[name])


def _context_vs_prior(model, tok, world: World, template: str | None, seed: int) -> float:
    from lineage_lens.zoo.synthetic import context_following_rate

    return context_following_rate(model, tok, world, n=100, seed=seed, template=template or "")


@pytest.mark.parametrize(("member", "template"), [("base", None), ("instruct", INSTRUCT_TEMPLATE)])
def test_follows_context_on_heldout_counterfactuals(zoo, member, template):
    model, tok = _hf(zoo.path(member))
    world = zoo.world(member)
    rate = _context_vs_prior(model, tok, world, template, seed=99)
    # held-out counterfactual contexts: context answer vs memorised answer; chance = 0.5
    assert binomtest(round(rate * 100), 100, 0.5, alternative="greater").pvalue < 0.01, rate


def test_base_memorised_its_world(zoo):
    from lineage_lens.zoo.synthetic import memorised_rate

    model, tok = _hf(zoo.path("base"))
    n_objects = 10  # about 10 objects per relation: chance ~ 0.1
    assert memorised_rate(model, tok, zoo.world("base")) > 3 / n_objects


def test_vlm_answers_its_existence_questions(zoo):
    from lineage_lens.zoo.train import vlm_yes_no_accuracy

    model, tok = _hf(zoo.path("vlm"))
    scenes = sample_scenes(100, seed=777)
    questions = pope_questions(scenes, "random", seed=777)
    acc = vlm_yes_no_accuracy(model, tok, scenes, questions)
    n = len(questions)
    assert binomtest(round(acc * n), n, 0.5, alternative="greater").pvalue < 0.01, acc
    eval_dir = zoo.path("vlm") / "eval"
    assert (eval_dir / "pope_adversarial.json").is_file() and (
        eval_dir / "gt_objects.json"
    ).is_file()


def test_vlm_bridge_runs_on_rendered_images(zoo):
    from lineage_lens.models import load_model
    from lineage_lens.testing import IMAGE_TOKEN

    bridge = load_model(zoo.path("vlm"), device="cpu")
    cfg = json.loads((zoo.path("vlm") / "config.json").read_text())["vision_config"]
    n_img = (cfg["image_size"] // cfg["patch_size"]) ** 2
    text = IMAGE_TOKEN * n_img + "\nQuestion: Is there a cat in the image?\nAnswer:"
    tokens = bridge.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    px = to_pixel_values([render_scene(sample_scenes(1, seed=3)[0], cfg["image_size"])], 32)
    logits = bridge(tokens, pixel_values=px)
    assert logits.shape[:2] == tokens.shape and torch.isfinite(logits).all()


def test_world_probe_examples_schema():
    world = World.generate(0, 12)
    ex = world_probe_examples(world, n=20, seed=1)
    assert len(ex) == 40
    check_two_classes(ex)
    for truthful, hallucinated in zip(ex[::2], ex[1::2], strict=True):
        assert truthful.label == 1 and hallucinated.label == 0
        assert truthful.source_id == hallucinated.source_id
        assert truthful.context == hallucinated.context
        assert f" {truthful.answer} " in f" {truthful.context} "
        assert truthful.answer != hallucinated.answer
    assert world_probe_examples(world, n=20, seed=1) == ex
    with pytest.raises(ConfigError):
        world_probe_examples(world, n=0)


def test_world_roundtrip_and_heldout(tmp_path):
    world = World.generate(3, 10)
    assert World.generate(3, 10) == world
    path = world.save(tmp_path / "w.json")
    assert World.load(path) == world
    held = set(world.heldout)
    assert held and all((f.entity, f.relation, f.obj) not in held for f in world.facts)
    with pytest.raises(ConfigError):
        World.generate(0, 0)


def test_images_render_and_preprocess(tmp_path):
    scenes = sample_scenes(8, seed=1)
    assert scenes == sample_scenes(8, seed=1)
    img = render_scene(scenes[0], 32)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img, render_scene(scenes[0], 32))
    px = to_pixel_values([img, render_scene(scenes[1], 64)], 32)
    assert px.shape == (2, 3, 32, 32) and torch.isfinite(px).all()
    for kind in ("random", "popular", "adversarial"):
        qs = pope_questions(scenes, kind)
        labels = [lab for *_, lab in qs]
        assert labels.count("yes") == labels.count("no")
        assert all((obj in scenes[i].objects) == (lab == "yes") for i, obj, lab in qs)
    paths = write_eval_set(tmp_path / "ev", n=4, seed=0, size=32)
    rows = [json.loads(x) for x in paths["pope_random"].read_text().splitlines()]
    assert set(rows[0]) == {"question_id", "image", "text", "label"}
    assert (paths["images"] / rows[0]["image"]).is_file()
    assert to_pixel_values([paths["images"] / rows[0]["image"]], 32).shape == (1, 3, 32, 32)
    gt = json.loads(paths["gt_objects"].read_text())
    assert all(set(v) <= set(OBJECTS) for v in gt.values())
    with pytest.raises(ConfigError):
        render_scene(scenes[0], 15)


def test_cache_reuses_and_changed_recipe_rebuilds(tmp_path):
    small = {
        "base": {"steps": 3, "n_docs": 40, "arch": {**profile_specs("test")[0].recipe["arch"]}}
    }
    first = build_zoo(tmp_path, "test", members=["base"], overrides=small, threads=2)
    again = build_zoo(tmp_path, "test", members=["base"], overrides=small, threads=1)
    assert not first.members["base"].reused and again.members["base"].reused
    assert again.path("base") == first.path("base")
    # the build records what bit-for-bit reproduction needs besides the recipe; the tiny
    # recipes' own thread count wins over the caller's
    env = json.loads((tmp_path / MANIFEST).read_text())["members"]["base"]["environment"]
    assert env["torch"] == torch.__version__
    assert env["threads"] == first.members["base"].recipe["threads"] == 1
    assert again.members["base"].environment == env  # read back from the member's record
    changed = {"base": {**small["base"], "steps": 4}}
    third = build_zoo(tmp_path, "test", members=["base"], overrides=changed, threads=1)
    assert not third.members["base"].reused and third.path("base") != first.path("base")
    assert first.path("base").is_dir()  # the old version stays
    assert load_zoo(tmp_path).path("base") == third.path("base")
    assert not list(tmp_path.glob(".*"))  # no temporary directory left behind


def test_a_member_finished_meanwhile_by_another_process_is_kept(tmp_path):
    """Parallel builders of one address (pytest-xdist workers sharing a cache): the one that
    finishes second must not delete the directory the first one may already be loading."""
    from lineage_lens.zoo import MEMBER_RECORD, build_member
    from lineage_lens.zoo.recipes import MemberSpec

    spec = MemberSpec("toy", "toy", None, {"steps": 1})
    final = tmp_path / f"toy-{recipe_hash('toy', spec.recipe, None)[:12]}"

    def theirs_appears_meanwhile(recipe, parent, out):
        (out / "weights.txt").write_text("ours")
        if not final.exists():  # the other process renames its complete build into place
            final.mkdir()
            (final / "weights.txt").write_text("theirs")
            record = {"name": "toy", "kind": "toy", "parent": None, "parent_path": None}
            (final / MEMBER_RECORD).write_text(json.dumps({**record, "recipe": {}, "hash": "x"}))
        return {}

    member = build_member(spec, tmp_path, theirs_appears_meanwhile, force=False)
    assert member.reused and Path(member.path) == final
    assert (final / "weights.txt").read_text() == "theirs"
    assert not list(tmp_path.glob(".*"))  # our copy is gone, nothing half-written is left
    # force replaces it, by renaming the old one aside first
    member = build_member(spec, tmp_path, theirs_appears_meanwhile, force=True)
    assert not member.reused and (final / "weights.txt").read_text() == "ours"
    assert json.loads((final / MEMBER_RECORD).read_text())["hash"] == member.hash
    assert not list(tmp_path.glob(".*"))


def test_recipe_hash_depends_on_recipe_and_parent():
    h = recipe_hash("tiny_base", {"a": 1, "b": 2}, None)
    assert h == recipe_hash("tiny_base", {"b": 2, "a": 1}, None)
    assert h != recipe_hash("tiny_base", {"a": 1, "b": 3}, None)
    assert h != recipe_hash("tiny_base", {"a": 1, "b": 2}, "parent")


def test_bad_profile_and_member():
    with pytest.raises(ConfigError, match="profile"):
        profile_specs("huge")
    with pytest.raises(ConfigError, match="unknown members"):
        profile_specs("test", {"nope": {}})
    with pytest.raises(ConfigError, match="not in profile"):
        build_zoo(Path("/nonexistent-never-created"), "test", members=["smollm2-ft"])


def test_vlm_builder_takes_any_lm_dir(tiny_dirs, tmp_path):
    """The LLaVA builder used for smollm2-vlm, on a tiny random Llama with a couple of steps."""
    from lineage_lens.models import head_geometry, load_model
    from lineage_lens.zoo.synthetic import build_vlm

    recipe = {
        "vision": {"image_size": 32, "patch_size": 16, "hidden_size": 16, "layers": 1, "heads": 2},
        "n_scenes": 16,
        "align_steps": 2,
        "align_lr": 1e-3,
        "e2e_steps": 2,
        "e2e_lr": 1e-3,
        "lm_lr": 1e-4,
        "lm_trainable": "layers",
        "batch_size": 4,
        "seed": 0,
        "n_eval_scenes": 4,
    }
    info = build_vlm(recipe, tiny_dirs["llama"], tmp_path / "vlm")
    assert "language model (align stage)" in info["trained"]["frozen"]
    bridge = load_model(tmp_path / "vlm", device="cpu")
    head_geometry(load_model(tiny_dirs["llama"], device="cpu")).check_same(head_geometry(bridge))


def test_finetune_builder_code_path(tiny_dirs, tmp_path):
    """The smollm2-ft builder, on a tiny Llama with two steps (never the real model in tests)."""
    from lineage_lens.zoo.real import build_smollm2_ft

    recipe = {
        "n_rows": 8,
        "first_row": 0,
        "steps": 2,
        "batch_size": 2,
        "max_len": 32,
        "lr": 1e-4,
        "trainable": "attn+mlp of all layers",
        "seed": 0,
    }
    info = build_smollm2_ft(recipe, tiny_dirs["llama"], tmp_path / "ft")
    assert math.isfinite(info["losses"]["ft_final"])
    assert (tmp_path / "ft" / "config.json").is_file()


def test_cli_build_and_list(zoo):
    from typer.testing import CliRunner

    from lineage_lens.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "build", "--profile", "test", "-o", str(zoo.root)])
    assert res.exit_code == 0, res.output
    assert "reused" in res.output and "manifest" in res.output
    res = runner.invoke(app, ["zoo", "list", "-o", str(zoo.root)])
    assert res.exit_code == 0, res.output
    assert all(name in res.output for name in TINY)


@pytest.mark.parametrize("adds_bos", [False, True], ids=["no-bos", "bos"])
def test_vlm_training_prompt_is_the_evaluators_prompt(adds_bos):
    """train_vlm tokenises its questions exactly as the evaluators and the capture do
    (images.encode_image_prompt): with BOS first when the tokenizer adds one (SmolLM2's does),
    without when it does not. A mismatch moved smollm2-vlm's POPE from 0.85 to 0.69."""
    from tokenizers import processors

    from lineage_lens.images import VisionSettings, encode_image_prompt
    from lineage_lens.zoo.images import POPE_QUESTION
    from lineage_lens.zoo.train import VLM_PROMPT, encode_vlm
    from lineage_lens.zoo.train import adds_bos as tokenizer_adds_bos
    from lineage_lens.zoo.world import make_world_tokenizer

    tok = make_world_tokenizer()
    if adds_bos:
        bos = (tok.bos_token, tok.bos_token_id)
        tok._tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos[0]} $A", special_tokens=[bos]
        )
    assert tokenizer_adds_bos(tok) is adds_bos
    image_id = tok.convert_tokens_to_ids(tok.image_token)
    settings = VisionSettings(16, 8, 4, image_id)
    question = POPE_QUESTION.format(obj="cat")
    ids, _, mask = encode_vlm(tok, 4, [(question, "")], eos=False)
    trained = ids[0, : int(mask[0].sum())].tolist()
    assert trained == encode_image_prompt(tok, question, settings, template=VLM_PROMPT)
    assert (trained[0] == tok.bos_token_id) is adds_bos
