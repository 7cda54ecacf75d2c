"""Signal of ``smollm2-vlm``: ungated POPE on held-out scenes and its image-context Truth Scores
against the answer-only and random-model floors (issue 25, the status quo).

Run: ``.venv/bin/python -m benchmarks.bench_mllm_signal [--pope-n 200 --pope-scenes 100
--pope-seed 2025 --items 400 --kinds caption --probe-seed 0 --out benchmarks/mllm_signal.md]``. Builds (or reuses)
the zoo member ``smollm2-vlm`` (profile ``full``) unless ``--model-dir`` names a built one.

Parts (each timed):

* **POPE, held out** -- ``--pope-scenes`` scenes drawn with ``--pope-seed``
  (:func:`lineage_lens.zoo.images.write_eval_set` into a temporary folder, the images at the
  vision tower's size) and the first ``--pope-n`` questions of each split (random, popular,
  adversarial), answered ungated by the library's evaluator
  (:func:`lineage_lens.evals.pope.evaluate_pope`, log-prob mode, the member's prompt
  :data:`~lineage_lens.zoo.train.VLM_PROMPT`): the way ``experiments.mllm_gating`` scores POPE.
  Accuracy with its Wilson 95 % interval, yes-ratio and AUROC per split. The training scenes are
  ``sample_scenes(n_scenes, seed)`` of the recipe (3,000 scenes, seed 3; questions seeded
  ``seed + 1``), the build-time check and the member's ``eval/`` folder use seed 12345 and the
  probing scenes seed 0, so ``--pope-seed`` must differ from all of them: the pixels (each scene's
  own noise, icon sizes and offsets) are then new. A scene's *layout* (which objects in which
  cells) can still repeat a training layout -- there are only a few thousand -- so the output
  gives the share of held-out scenes whose layout occurs among the training scenes and the
  accuracy on questions about scenes whose layout does not.
  The same questions are also scored the way the build checks them
  (:func:`lineage_lens.zoo.train.vlm_yes_no_accuracy`: the trained answer tokens `` yes`` vs
  `` no`` only, on the training prompt -- since zoo-3 with the BOS the evaluator's prompt has
  too), and the member's own ``eval/`` set is scored by the evaluator for comparison
  with the numbers in BENCHMARKS.md.
* **Image-context Truth Scores** (the paper's set d, ``TruthProbe_MLLM``) --
  :func:`lineage_lens.zoo.scene_probe_examples` (``--items`` items, two examples each, seed
  ``--probe-seed``), each example with its own scene (``condition="image"``,
  :data:`~lineage_lens.zoo.train.VLM_PROBE_TEMPLATE`), 5-fold grouped probes (seed 0): best head,
  median head, share of heads above 0.6 / 0.7 / 0.8; with ``--kinds existence,caption`` also per
  question kind from the same activations (default: caption items only, the set that
  ``experiments.mllm_family`` probes).
* **Floors** (:mod:`lineage_lens.baselines`) on the same examples and folds: answer only
  (``"Answer: {answer}"``, no question, no image) and a random-init twin of the member (same
  config, fresh weights: vision tower included) on the full prompts with the images. As an extra
  reference, the member itself without the image (``condition="text_only"``, the same prompt with
  the image tokens left out): what the question and answer alone give.

Writes ``--out`` (markdown) and the same numbers as JSON beside it (``.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lineage_lens.baselines import ANSWER_ONLY_TEMPLATE, answer_only_examples, random_init_model
from lineage_lens.capture import collect_head_activations
from lineage_lens.errors import DataError
from lineage_lens.evals.pope import evaluate_pope
from lineage_lens.fileio import atomic_open
from lineage_lens.images import vision_settings
from lineage_lens.models import load_model
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores
from lineage_lens.stats import proportion_ci
from lineage_lens.zoo import scene_probe_examples
from lineage_lens.zoo.images import pope_questions, sample_scenes, write_eval_set
from lineage_lens.zoo.recipes import REAL_MEMBERS
from lineage_lens.zoo.train import VLM_PROBE_TEMPLATE, VLM_PROMPT, vlm_yes_no_accuracy

MEMBER = "smollm2-vlm"
SPLITS = ("random", "popular", "adversarial")
#: Seeds of scenes the member has seen or that the project already uses for it.
BUILD_EVAL_SEED = 12345  # build-time POPE check and the member's eval/ folder
PROBE_SCENE_SEED = 0  # experiments.mllm_conditions.SCENE_SEED
THRESHOLDS = (0.6, 0.7, 0.8)
CAPTURE = {"batch_size": 32, "dtype": torch.float32, "progress": False}


def member_recipe(model_dir: Path | None = None) -> dict[str, Any]:
    """The recipe the member at ``model_dir`` was built with (its ``zoo_member.json``), else the
    zoo's recipe of ``smollm2-vlm``."""
    record = Path(model_dir) / "zoo_member.json" if model_dir is not None else None
    if record is not None and record.is_file():
        return json.loads(record.read_text(encoding="utf-8"))["recipe"]
    return next(s.recipe for s in REAL_MEMBERS if s.name == MEMBER)


def head_summary(scores: TruthScores) -> dict[str, Any]:
    """Best head (value, layer, head), median and mean, and the share of heads above thresholds."""
    acc = scores.accuracy
    layer, head = np.unravel_index(int(np.argmax(acc)), acc.shape)
    out = {
        "best": float(acc.max()),
        "best_head": f"L{int(layer)}H{int(head)}",
        "median": float(np.median(acc)),
        "mean": float(acc.mean()),
        "n_heads": int(acc.size),
        "n_examples": scores.n,
    }
    out |= {f"share_above_{t:g}": float((acc > t).mean()) for t in THRESHOLDS}
    return out


def _fit(acts: Any, name: str, dataset: str) -> TruthScores:
    return fit_truth_scores(acts, folds=5, seed=0, model=name, dataset=dataset, progress=False)


def by_kind(acts: Any, kinds: dict[str, list[int]]) -> dict[str, dict[str, Any] | None]:
    """:func:`head_summary` of probes fitted on each question kind's examples alone; ``None`` where
    the kind's prompts are copies of a few (answer-only existence items: ``"Answer: yes"`` and
    ``"Answer: no"`` with both labels), which no probe can separate and CV cannot fold."""
    out: dict[str, dict[str, Any] | None] = {}
    for kind, idx in kinds.items():
        groups = [acts.source_ids[i] for i in idx]
        try:
            sub = fit_truth_scores(
                acts.acts[idx], acts.labels[idx], folds=5, seed=0, groups=groups, progress=False
            )
        except DataError as exc:
            logging.getLogger(__name__).warning("%s items: %s", kind, exc)
            out[kind] = None
            continue
        out[kind] = head_summary(sub)
    return out


def pope_part(
    model: Any, hf_model: Any, model_dir: Path, *, seed: int, n_scenes: int, n_questions: int
) -> dict[str, Any]:
    """Ungated POPE on ``n_scenes`` held-out scenes (seed ``seed``) and on the member's eval/."""
    recipe = member_recipe(model_dir)
    size = vision_settings(model).image_size
    train_layouts = {s.layout for s in sample_scenes(recipe["n_scenes"], recipe["seed"])}
    scenes = sample_scenes(n_scenes, seed)
    seen = [s.layout in train_layouts for s in scenes]
    out: dict[str, Any] = {
        "seed": seed,
        "n_scenes": n_scenes,
        "image_size": size,
        "train_scenes": recipe["n_scenes"],
        "train_seed": recipe["seed"],
        "distinct_train_layouts": len(train_layouts),
        "share_scenes_layout_in_train": float(np.mean(seen)),
        "splits": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_mllm_signal_") as tmp:
        write_eval_set(tmp, n=n_scenes, seed=seed, size=size)
        res = evaluate_pope(
            model,
            Path(tmp) / "images",
            {s: Path(tmp) / f"pope_{s}.json" for s in SPLITS},
            prompt_template=VLM_PROMPT,
            limit=n_questions,
            progress=False,
        )
    ex = res.examples
    tokenizer = model.tokenizer
    for split in SPLITS:
        rows = ex[ex["split"] == split]
        correct = ((rows["answer"] == "yes") == rows["label"].astype(bool)).to_numpy()
        acc, low, high = proportion_ci(int(correct.sum()), len(correct))
        metrics = res.metrics.set_index("split").loc[split]
        scene_idx = [int(name[4:9]) for name in rows["image"]]  # zoo_{i:05d}.png
        novel = np.array([not seen[i] for i in scene_idx])
        nov_acc = nov_low = nov_high = None
        if novel.any():
            nov_acc, nov_low, nov_high = proportion_ci(int(correct[novel].sum()), int(novel.sum()))
        questions = pope_questions(scenes, split, seed)[:n_questions]  # the files' questions
        trained_tokens = vlm_yes_no_accuracy(hf_model, tokenizer, scenes, questions)
        novel_q = [q for q in questions if not seen[q[0]]]
        trained_novel = (
            vlm_yes_no_accuracy(hf_model, tokenizer, scenes, novel_q) if novel_q else None
        )
        out["splits"][split] = {
            "n": len(correct),
            "accuracy": acc,
            "ci_low": low,
            "ci_high": high,
            "yes_ratio": float(metrics["yes_ratio"]),
            "auroc": float(metrics["auroc"]),
            "n_scenes_asked": len(set(scene_idx)),
            "n_novel_layout": int(novel.sum()),
            "novel_layout_accuracy": nov_acc,
            "novel_layout_ci": [nov_low, nov_high],
            "trained_token_accuracy": trained_tokens,
            "trained_token_novel_layout_accuracy": trained_novel,
        }
    eval_dir = model_dir / "eval"
    own = evaluate_pope(
        model,
        eval_dir / "images",
        {s: eval_dir / f"pope_{s}.json" for s in SPLITS},
        prompt_template=VLM_PROMPT,
        limit=n_questions,
        progress=False,
    )
    own_ex = own.examples
    out["member_eval"] = {}
    for split in SPLITS:
        rows = own_ex[own_ex["split"] == split]
        correct = ((rows["answer"] == "yes") == rows["label"].astype(bool)).to_numpy()
        acc, low, high = proportion_ci(int(correct.sum()), len(correct))
        yes_ratio = float(own.metrics.set_index("split").loc[split, "yes_ratio"])
        out["member_eval"][split] = {
            "n": len(correct),
            "accuracy": acc,
            "ci_low": low,
            "ci_high": high,
            "yes_ratio": yes_ratio,
        }
    return out


def probe_part(
    model: Any, *, n_items: int, seed: int, kinds: Sequence[str] = ("existence", "caption")
) -> dict[str, Any]:
    """Image-context Truth Scores, per kind, and the floors, on the same examples."""
    size = vision_settings(model).image_size
    examples = scene_probe_examples(n_items, seed, size=max(size + size % 2, 16), kinds=kinds)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    acts = collect_head_activations(
        model, examples, condition="image", prompt_template=VLM_PROBE_TEMPLATE, **CAPTURE
    )
    timings["capture_image_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    scores = _fit(acts, MEMBER, f"zoo scenes seed {seed} (image)")
    timings["probe_image_s"] = time.perf_counter() - t0
    result: dict[str, Any] = {"n_items": n_items, "seed": seed, "image": head_summary(scores)}
    result["kinds"] = list(kinds)
    by = {k: [] for k in kinds}
    for i, ex in enumerate(examples):
        by["caption" if ex.question.startswith("Describe") else "existence"].append(i)
    kinds = by if len(by) > 1 else {}  # one kind: the whole set is that kind
    result["by_kind"] = {"image": by_kind(acts, kinds)}
    del acts

    t0 = time.perf_counter()
    acts = collect_head_activations(
        model,
        answer_only_examples(examples),
        condition="text_only",
        prompt_template=ANSWER_ONLY_TEMPLATE,
        **CAPTURE,
    )
    answer_only = _fit(acts, f"{MEMBER} (answer only)", "zoo scenes (answer only)")
    result["by_kind"]["answer_only"] = by_kind(acts, kinds)
    timings["answer_only_s"] = time.perf_counter() - t0
    result["answer_only"] = head_summary(answer_only)
    del acts

    t0 = time.perf_counter()
    acts = collect_head_activations(
        model, examples, condition="text_only", prompt_template=VLM_PROBE_TEMPLATE, **CAPTURE
    )
    no_image = _fit(acts, f"{MEMBER} (no image)", "zoo scenes (text only)")
    timings["no_image_s"] = time.perf_counter() - t0
    result["no_image"] = head_summary(no_image)
    del acts

    t0 = time.perf_counter()
    twin = random_init_model(model, seed=0)
    acts = collect_head_activations(
        twin, examples, condition="image", prompt_template=VLM_PROBE_TEMPLATE, **CAPTURE
    )
    random_init = _fit(acts, f"{MEMBER} random init", "zoo scenes (image)")
    result["by_kind"]["random_init"] = by_kind(acts, kinds)
    timings["random_init_s"] = time.perf_counter() - t0
    result["random_init"] = head_summary(random_init)
    del acts, twin
    floor = np.maximum(answer_only.accuracy, random_init.accuracy)
    margin = scores.accuracy - floor
    result["floor"] = {"best": float(floor.max()), "median": float(np.median(floor))}
    result["margin"] = {
        "median": float(np.median(margin)),
        "share_above_0.05": float((margin > 0.05).mean()),
        "share_above_0.1": float((margin > 0.1).mean()),
    }
    result["timings"] = timings
    return result


def _fmt_ci(r: dict[str, Any]) -> str:
    return f"{r['accuracy']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]"


def markdown(res: dict[str, Any], command: str) -> list[str]:
    pope, probe, t = res["pope"], res["probe"], res["timings"]
    load = res["load_average"]
    lines = [
        f"# {MEMBER}: ungated POPE on held-out scenes and image-context Truth Scores",
        "",
        f"Command: `{command}`",
        "",
        f"Date: {res['date']}; machine: {res['machine']}, torch threads {res['torch_threads']}; "
        f"load average at the end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}. Member: "
        f"`{res['model_dir']}`.",
        "",
        f"## POPE (ungated, held out: {pope['n_scenes']} scenes, seed {pope['seed']})",
        "",
        f"Scenes drawn with seed {pope['seed']} at {pope['image_size']}x{pope['image_size']} px: "
        f"the member trained on {pope['train_scenes']} scenes of seed {pope['train_seed']}, its "
        f"build check and `eval/` use seed {BUILD_EVAL_SEED}, its probing scenes seed "
        f"{PROBE_SCENE_SEED}, so every image here is new. Layouts (objects x cells) can repeat: "
        f"{pope['share_scenes_layout_in_train']:.0%} of these scenes have a layout among the "
        f"{pope['distinct_train_layouts']} distinct training layouts. Evaluator: "
        "`evaluate_pope` (log-prob, yes/no variants), the member's prompt (with the tokenizer's "
        "BOS); *trained tokens*: the same questions scored by ` yes` vs ` no` only, the build "
        "check's rule.",
        "",
        "| split | n (scenes) | accuracy [95 % Wilson] | yes-ratio | AUROC | novel-layout "
        "accuracy (n) | trained-token accuracy (novel layouts) | member `eval/` accuracy "
        "(yes-ratio) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLITS:
        r, m = pope["splits"][split], pope["member_eval"][split]
        novel = (
            f"{r['novel_layout_accuracy']:.3f} ({r['n_novel_layout']})"
            if r["novel_layout_accuracy"] is not None
            else "-"
        )
        tn = r["trained_token_novel_layout_accuracy"]
        trained_novel = "-" if tn is None else f"{tn:.3f}"
        lines.append(
            f"| {split} | {r['n']} ({r['n_scenes_asked']}) | {_fmt_ci(r)} | {r['yes_ratio']:.2f} | "
            f"{r['auroc']:.3f} | {novel} | {r['trained_token_accuracy']:.3f} ({trained_novel}) | "
            f"{_fmt_ci(m)} "
            f"({m['yes_ratio']:.2f}) |"
        )
    lines += [
        "",
        f"## Image-context Truth Scores ({probe['n_items']} scene items, "
        f"{2 * probe['n_items']} examples, seed {probe['seed']}; 5-fold, seed 0)",
        "",
        "| probed | best head | median | mean | > 0.6 | > 0.7 | > 0.8 |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        ("member, own image (set d)", probe["image"]),
        *((f"member, own image: {k} items only", v) for k, v in probe["by_kind"]["image"].items()),
        ("floor: answer only", probe["answer_only"]),
        *(
            (f"floor: answer only, {k} items", v)
            for k, v in probe["by_kind"]["answer_only"].items()
        ),
        ("floor: random-init twin, own image", probe["random_init"]),
        *(
            (f"floor: random-init twin, {k} items", v)
            for k, v in probe["by_kind"]["random_init"].items()
        ),
        ("reference: member without the image", probe["no_image"]),
    ]
    for name, s in rows:
        if s is None:
            lines.append(f"| {name} | identical prompts: chance by construction | | | | | |")
            continue
        lines.append(
            f"| {name} ({s['n_examples']} ex.) | {s['best']:.3f} ({s['best_head']}) | "
            f"{s['median']:.3f} | {s['mean']:.3f} | {s['share_above_0.6']:.0%} | "
            f"{s['share_above_0.7']:.0%} | {s['share_above_0.8']:.0%} |"
        )
    lines += [
        "",
        f"Per-head floor (max of the two baselines): best {probe['floor']['best']:.3f}, median "
        f"{probe['floor']['median']:.3f}; the member's score minus the floor: median "
        f"{probe['margin']['median']:+.3f}, share of heads above +0.05 "
        f"{probe['margin']['share_above_0.05']:.0%}, above +0.1 "
        f"{probe['margin']['share_above_0.1']:.0%}.",
        "",
        "## Timings (s)",
        "",
        "| part | seconds |",
        "|---|---|",
        *(f"| {k} | {v:.1f} |" for k, v in t.items()),
        "",
    ]
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model-dir", default=None, help="a built smollm2-vlm (default: the zoo's)")
    ap.add_argument("--pope-n", type=int, default=200, help="POPE questions per split")
    ap.add_argument("--pope-scenes", type=int, default=100, help="held-out POPE scenes")
    ap.add_argument("--pope-seed", type=int, default=2025, help="seed of the held-out scenes")
    ap.add_argument("--items", type=int, default=400, help="probing items (two examples each)")
    ap.add_argument(
        "--kinds", default="caption", help="question kinds, comma-separated (existence,caption)"
    )
    ap.add_argument("--probe-seed", type=int, default=PROBE_SCENE_SEED)
    ap.add_argument("--out", default="benchmarks/mllm_signal.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    recipe = member_recipe(args.model_dir and Path(args.model_dir))
    used = {
        recipe["seed"]: "training scenes",
        BUILD_EVAL_SEED: "build check / eval/",
        args.probe_seed: "probing scenes",
    }
    if args.pope_seed in used:
        ap.error(f"--pope-seed {args.pope_seed} draws the {used[args.pope_seed]}; pick another.")

    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    if args.model_dir is None:
        from lineage_lens.zoo import build_zoo

        model_dir = build_zoo(profile="full", members=[MEMBER]).path(MEMBER)
    else:
        model_dir = Path(args.model_dir)
    model = load_model(model_dir)
    timings["build_or_reuse_and_load"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        pope = pope_part(
            model,
            model.original_model,
            model_dir,
            seed=args.pope_seed,
            n_scenes=args.pope_scenes,
            n_questions=args.pope_n,
        )
    timings["pope"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    probe = probe_part(model, n_items=args.items, seed=args.probe_seed, kinds=kinds)
    timings["probes_total"] = time.perf_counter() - t0
    timings |= {f"probes: {k.removesuffix('_s')}": v for k, v in probe["timings"].items()}
    timings["total"] = time.perf_counter() - t_all

    command = (
        f".venv/bin/python -m benchmarks.bench_mllm_signal --pope-n {args.pope_n} "
        f"--pope-scenes {args.pope_scenes} --pope-seed {args.pope_seed} --items {args.items} "
        f"--kinds {','.join(kinds)} "
        f"--probe-seed {args.probe_seed} --out {args.out}"
        + (f" --model-dir {args.model_dir}" if args.model_dir else "")
    )
    result = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores",
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()),
        "model_dir": str(model_dir),
        "pope": pope,
        "probe": probe,
        "timings": timings,
    }
    lines = markdown(result, command)
    out = Path(args.out)
    with atomic_open(out, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines))
    with atomic_open(out.with_suffix(".json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
