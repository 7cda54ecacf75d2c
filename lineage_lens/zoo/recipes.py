"""Recipes of the zoo members, per profile, and their content addresses.

A recipe is a JSON-able dict that fully determines a member given its parent. A member's address is
the SHA-256 of its recipe (JSON, sorted keys), its parent's address and :data:`ZOO_CODE_VERSION`;
its directory is ``{member}-{address[:12]}``. Changing a recipe (or a parent) therefore rebuilds the
member and everything below it, and an unchanged recipe reuses the directory already built.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from lineage_lens.errors import ConfigError

#: Bumped when a builder changes in a way that changes its output.
ZOO_CODE_VERSION = "zoo-3"

Profile = Literal["test", "demo", "full"]
PROFILES: tuple[str, ...] = ("test", "demo", "full")

#: The published ancestor of the real family (a packaged alias of :mod:`lineage_lens.models`).
ANCESTOR = "smollm2-135m-instruct"


@dataclass(frozen=True)
class MemberSpec:
    """One member to build: its name, builder kind, parent (member name, alias or None), recipe."""

    name: str
    kind: str
    parent: str | None
    recipe: dict[str, Any] = field(default_factory=dict)
    description: str = ""


TINY_ARCH = {"n_layers": 4, "n_heads": 8, "n_kv_heads": 4, "d_head": 8}

#: CPU threads the tiny members train with, whatever the caller's setting: a matrix product's
#: rounding depends on how it is split over threads, so a fixed count makes their builds
#: bit-reproducible across machines (and one thread is the fastest for models this small).
TINY_THREADS = 1

_TINY_BASE = {
    "world_seed": 0,
    "n_people": 24,
    "arch": TINY_ARCH,
    "n_docs": 6000,
    "steps": 400,
    "batch_size": 32,
    "lr": 3e-3,
    "seed": 0,
    "threads": TINY_THREADS,
}

TINY_MEMBERS: list[MemberSpec] = [
    MemberSpec(
        "base",
        "tiny_base",
        None,
        _TINY_BASE,
        "tiny Llama (4 layers x 8 heads, 4 KV heads) pretrained from scratch on synthetic world 0",
    ),
    MemberSpec(
        "instruct",
        "tiny_instruct",
        "base",
        {
            "n_docs": 3000,
            "steps": 120,
            "batch_size": 32,
            "lr": 1e-3,
            "seed": 1,
            "threads": TINY_THREADS,
        },
        "base fine-tuned on the instruction format 'User : context question Assistant : answer'",
    ),
    MemberSpec(
        "vlm",
        "vlm",
        "base",
        {
            "vision": {
                "image_size": 32,
                "patch_size": 8,
                "hidden_size": 32,
                "layers": 2,
                "heads": 2,
            },
            "n_scenes": 2000,
            "align_steps": 150,
            "align_lr": 3e-3,
            "e2e_steps": 1000,
            "e2e_lr": 3e-3,
            "lm_lr": 3e-3,
            "lm_trainable": "all",
            "batch_size": 32,
            "seed": 2,
            "n_eval_scenes": 100,
            "threads": TINY_THREADS,
        },
        "tiny LLaVA: base as language model, a tiny CLIP ViT (32x32 images, 16 image tokens) "
        "trained on rendered scenes with yes/no existence questions and captions",
    ),
    MemberSpec(
        "control",
        "tiny_base",
        None,
        {**_TINY_BASE, "world_seed": 1, "seed": 7},
        "unrelated-family control: same shape as base, another seed and another fact base",
    ),
]

REAL_MEMBERS: list[MemberSpec] = [
    MemberSpec(
        "smollm2-ft",
        "smollm2_ft",
        ANCESTOR,
        {
            "n_rows": 500,
            "first_row": 0,
            "steps": 80,
            "batch_size": 8,
            "max_len": 128,
            "lr": 5e-5,
            "trainable": "attn+mlp of all layers",
            "seed": 0,
        },
        "SmolLM2-135M-Instruct fully fine-tuned (attention + MLP weights) on HaluEval knowledge "
        "rendered in a different prompt format",
    ),
    MemberSpec(
        "smollm2-vlm",
        "vlm",
        ANCESTOR,
        {
            "vision": {
                "image_size": 64,
                "patch_size": 16,
                "hidden_size": 64,
                "layers": 2,
                "heads": 4,
            },
            "n_scenes": 3000,
            "align_steps": 300,
            "align_lr": 3e-3,
            "e2e_steps": 250,
            "e2e_lr": 1e-3,
            "lm_lr": 8e-5,
            "lm_trainable": "layers",
            "batch_size": 8,
            "seed": 3,
            "n_eval_scenes": 100,
        },
        "LLaVA with SmolLM2-135M-Instruct as language model and a small CLIP ViT (64x64 images, "
        "16 image tokens) trained on rendered scenes",
    ),
]

PROFILE_MEMBERS: dict[str, list[str]] = {
    "test": ["base", "instruct", "vlm", "control"],
    "demo": ["smollm2-vlm"],
    "full": ["base", "instruct", "vlm", "control", "smollm2-ft", "smollm2-vlm"],
}


def profile_specs(
    profile: str, overrides: dict[str, dict[str, Any]] | None = None
) -> list[MemberSpec]:
    """The members of ``profile`` in build order; ``overrides`` updates recipes by member name."""
    if profile not in PROFILE_MEMBERS:
        raise ConfigError(f"unknown zoo profile {profile!r}; use one of {', '.join(PROFILES)}.")
    overrides = overrides or {}
    by_name = {s.name: s for s in TINY_MEMBERS + REAL_MEMBERS}
    unknown = set(overrides) - set(by_name)
    if unknown:
        raise ConfigError(f"recipe overrides name unknown members {sorted(unknown)}.")
    out = []
    for name in PROFILE_MEMBERS[profile]:
        spec = by_name[name]
        recipe = copy.deepcopy(spec.recipe)
        recipe.update(copy.deepcopy(overrides.get(name, {})))
        out.append(MemberSpec(spec.name, spec.kind, spec.parent, recipe, spec.description))
    return out


def recipe_hash(kind: str, recipe: dict[str, Any], parent_hash: str | None) -> str:
    """Content address of a member: SHA-256 of kind, recipe, parent address and code version."""
    payload = json.dumps(
        {"kind": kind, "recipe": recipe, "parent": parent_hash, "code": ZOO_CODE_VERSION},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()
