"""Procedurally rendered scenes of simple objects, their questions and captions, and preprocessing.

A *scene* places 1-3 objects from :data:`OBJECTS` in the cells of a 2x2 grid. Each object is drawn
as its own icon (a shape in a colour, see :data:`ICONS`): the icons stand for the words. Some objects
usually appear together (:data:`COOCCUR`), so captions and questions carry a language prior that a
multimodal model can follow against the image: object hallucination.

Everything is numpy (and PIL for files and resizing); no torchvision, no image processor. The
questions follow POPE ("Is there a cat in the image?" yes/no) and the vendored POPE file layout;
ground-truth objects follow the vendored CHAIR layout (``{image_id: [objects]}``).

:func:`scene_probe_examples` turns rendered scenes into image-grounded probing examples (a question
about the scene, a truthful and a hallucinated answer; the hallucination names a usual companion
object that is absent) and :func:`write_scene_probe_set` writes them in the authors' image layout,
so the zoo's multimodal members get image-context Truth Scores offline.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from lineage_lens.data import HALLUCINATED, TRUTHFUL, ProbeExample
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.fileio import atomic_open, atomic_path
from lineage_lens.images import CLIP_MEAN, CLIP_STD

#: Object words (single tokens in the tiny tokenizer, common words for real tokenizers).
OBJECTS = ["cat", "dog", "car", "tree", "house", "ball", "bird", "fish", "cup", "book"]

#: object -> (shape, RGB colour) of its icon.
ICONS: dict[str, tuple[str, tuple[int, int, int]]] = {
    "cat": ("circle", (220, 40, 40)),
    "dog": ("square", (40, 60, 220)),
    "car": ("triangle", (30, 170, 60)),
    "tree": ("cross", (230, 200, 20)),
    "house": ("diamond", (170, 40, 190)),
    "ball": ("circle", (20, 190, 200)),
    "bird": ("triangle", (240, 130, 20)),
    "fish": ("square", (120, 80, 30)),
    "cup": ("diamond", (20, 20, 20)),
    "book": ("cross", (240, 240, 240)),
}

#: Objects that usually appear together (both directions): the language prior.
COOCCUR: dict[str, str] = {}
for _a, _b in [
    ("cat", "dog"),
    ("car", "tree"),
    ("cup", "book"),
    ("ball", "bird"),
    ("house", "fish"),
]:
    COOCCUR[_a], COOCCUR[_b] = _b, _a

POPE_QUESTION = "Is there a {obj} in the image?"
CAPTION_PROMPT = "Describe the image."

PopeKind = Literal["random", "popular", "adversarial"]

#: Question kinds of the image-grounded probing examples (:func:`scene_probe_examples`).
SCENE_PROBE_KINDS: tuple[str, ...] = ("existence", "caption")


@dataclass(frozen=True)
class Scene:
    """Objects and the grid cells (0..3, reading order) they occupy; ``seed`` fixes the pixels."""

    objects: tuple[str, ...]
    cells: tuple[int, ...]
    seed: int

    def caption(self) -> str:
        """``"There is a cat and a dog."``, objects in reading order."""
        names = [o for _, o in sorted(zip(self.cells, self.objects, strict=True))]
        if len(names) == 1:
            listed = f"a {names[0]}"
        else:
            listed = ", ".join(f"a {n}" for n in names[:-1]) + f" and a {names[-1]}"
        return f"There is {listed}."

    @property
    def layout(self) -> tuple[tuple[int, str], ...]:
        """``(cell, object)`` pairs in reading order: what the scene shows, whatever its pixels."""
        return tuple(sorted(zip(self.cells, self.objects, strict=True)))

    def replaced(self, old: str, new: str) -> Scene:
        """The scene with ``new`` where ``old`` is (same cells, same pixel seed)."""
        if old not in self.objects or new in self.objects:
            raise ConfigError(f"cannot replace {old!r} by {new!r} in a scene of {self.layout}.")
        return Scene(tuple(new if o == old else o for o in self.objects), self.cells, self.seed)


def sample_scenes(
    n: int, seed: int = 0, *, p_cooccur: float = 0.8, max_objects: int = 3
) -> list[Scene]:
    """``n`` random scenes; a scene of 2+ objects holds a co-occurring pair with ``p_cooccur``."""
    if n < 1 or not 1 <= max_objects <= 4:
        raise ConfigError(f"need n >= 1 and 1 <= max_objects <= 4 (got n={n}, {max_objects}).")
    rng = np.random.default_rng(seed)
    return [_draw_scene(rng, p_cooccur, max_objects) for _ in range(n)]


def _draw_scene(rng: np.random.Generator, p_cooccur: float, max_objects: int) -> Scene:
    """One random scene (the draws of :func:`sample_scenes`, in its order)."""
    k = int(rng.integers(1, max_objects + 1))
    objs = [OBJECTS[int(rng.integers(len(OBJECTS)))]]
    if k >= 2 and rng.random() < p_cooccur:
        objs.append(COOCCUR[objs[0]])
    while len(objs) < k:
        cand = OBJECTS[int(rng.integers(len(OBJECTS)))]
        # non-pair extras avoid completing a pair, so pairs stay informative
        if cand not in objs and COOCCUR[cand] not in objs[1:]:
            objs.append(cand)
    cells = rng.permutation(4)[:k]
    return Scene(tuple(objs), tuple(int(c) for c in cells), int(rng.integers(2**31)))


def _shape_mask(shape: str, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    c = (size - 1) / 2
    r = size / 2
    if shape == "circle":
        return (yy - c) ** 2 + (xx - c) ** 2 <= r**2
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":
        return np.abs(xx - c) <= (yy + 1) / 2
    if shape == "diamond":
        return np.abs(xx - c) + np.abs(yy - c) <= r
    if shape == "cross":
        w = max(1, size // 6)
        return (np.abs(xx - c) <= w) | (np.abs(yy - c) <= w)
    raise ConfigError(f"unknown icon shape {shape!r}")


def render_scene(scene: Scene, size: int = 32) -> UInt8[np.ndarray, "size size 3"]:
    """Draw ``scene`` as an RGB uint8 image of ``size`` x ``size`` (a noisy grey background)."""
    if size < 16 or size % 2:
        raise ConfigError(f"image size must be an even number >= 16, got {size}.")
    rng = np.random.default_rng(scene.seed)
    img = rng.normal(150, 12, size=(size, size, 3))
    cell = size // 2
    for obj, c in zip(scene.objects, scene.cells, strict=True):
        shape, colour = ICONS[obj]
        s = round(cell * rng.uniform(0.6, 0.85))
        y0 = (c // 2) * cell + int(rng.integers(0, cell - s + 1))
        x0 = (c % 2) * cell + int(rng.integers(0, cell - s + 1))
        mask = _shape_mask(shape, s)
        patch = img[y0 : y0 + s, x0 : x0 + s]
        patch[mask] = np.asarray(colour, dtype=float) + rng.normal(0, 6, size=(int(mask.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def to_pixel_values(
    images: Sequence[Any] | np.ndarray,
    size: int,
    *,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> Float[Tensor, "batch 3 size size"]:
    """Resize and normalise images (uint8 arrays ``HxWx3``, PIL images or file paths) for a ViT.

    A numpy/PIL replacement for CLIP's image processor: RGB, bicubic resize to ``size`` x ``size``,
    scale to [0, 1], subtract ``mean``, divide by ``std``; returns ``[batch, 3, size, size]``.
    """
    from PIL import Image

    out = []
    for im in images:
        if isinstance(im, (str, Path)):
            if not Path(im).is_file():
                raise DataError("image file not found.", path=im)
            im = Image.open(im)
        if isinstance(im, Image.Image):
            im = im.convert("RGB")
            if im.size != (size, size):
                im = im.resize((size, size), Image.BICUBIC)
            arr = np.asarray(im, dtype=np.float32)
        else:
            arr = np.asarray(im)
            if arr.ndim != 3 or arr.shape[2] != 3:
                raise ConfigError(f"expected an HxWx3 RGB image, got shape {arr.shape}.")
            if arr.shape[:2] != (size, size):
                pil = Image.fromarray(arr.astype(np.uint8)).resize((size, size), Image.BICUBIC)
                arr = np.asarray(pil)
            arr = arr.astype(np.float32)
        out.append((arr / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32))
    if not out:
        raise ConfigError("no images given.")
    return torch.from_numpy(np.stack(out).transpose(0, 3, 1, 2).copy())


def pope_questions(
    scenes: Sequence[Scene], kind: PopeKind = "random", seed: int = 0
) -> list[tuple[int, str, str]]:
    """POPE-style ``(scene index, object, "yes"|"no")`` questions, balanced yes/no per scene.

    Absent objects are drawn at random (``random``), among the most frequent objects of the scene
    set (``popular``), or as the usual companions of the present objects (``adversarial``).
    """
    if kind not in ("random", "popular", "adversarial"):
        raise ConfigError(f"unknown POPE kind {kind!r}; use random, popular or adversarial.")
    rng = np.random.default_rng(seed)
    freq = Counter(o for s in scenes for o in s.objects)
    popular = [o for o, _ in freq.most_common()] + [o for o in OBJECTS if o not in freq]
    out = []
    for i, scene in enumerate(scenes):
        absent = [o for o in OBJECTS if o not in scene.objects]
        if kind == "random":
            order = [absent[int(j)] for j in rng.permutation(len(absent))]
        elif kind == "popular":
            order = [o for o in popular if o in absent]
        else:
            partners = [COOCCUR[o] for o in scene.objects if COOCCUR[o] in absent]
            rest = [absent[int(j)] for j in rng.permutation(len(absent))]
            order = list(dict.fromkeys(partners + rest))
        for obj in scene.objects:
            out.append((i, obj, "yes"))
        for obj in order[: len(scene.objects)]:
            out.append((i, obj, "no"))
    return out


def write_eval_set(
    out_dir: str | Path, n: int = 100, seed: int = 12345, *, size: int = 32
) -> dict[str, Path]:
    """Write ``n`` rendered scenes plus POPE and CHAIR files in the vendored layouts.

    Files: ``images/zoo_{i:05d}.png``, ``pope_{random,popular,adversarial}.json`` (JSON lines:
    question_id, image, text, label), ``gt_objects.json`` (``{image_id: [objects]}``) and
    ``synonyms.txt`` (one object per line). Returns their paths by name.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    scenes = sample_scenes(n, seed)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    gt = {}
    for i, scene in enumerate(scenes):
        name = f"zoo_{i:05d}.png"
        with atomic_path(img_dir / name) as tmp:
            Image.fromarray(render_scene(scene, size)).save(tmp, format="PNG")
        gt[str(i)] = sorted(scene.objects)
    paths = {"images": img_dir}
    for kind in ("random", "popular", "adversarial"):
        path = out_dir / f"pope_{kind}.json"
        with atomic_open(path, "w", encoding="utf-8") as fh:
            for qid, (i, obj, label) in enumerate(pope_questions(scenes, kind, seed), start=1):
                row = {
                    "question_id": qid,
                    "image": f"zoo_{i:05d}.png",
                    "text": POPE_QUESTION.format(obj=obj),
                    "label": label,
                }
                fh.write(json.dumps(row) + "\n")
        paths[f"pope_{kind}"] = path
    with atomic_open(out_dir / "gt_objects.json", "w", encoding="utf-8") as fh:
        json.dump(gt, fh)
    with atomic_open(out_dir / "synonyms.txt", "w", encoding="utf-8") as fh:
        fh.write("\n".join(OBJECTS) + "\n")
    paths["gt_objects"] = out_dir / "gt_objects.json"
    paths["synonyms"] = out_dir / "synonyms.txt"
    return paths


#: Scene draws per probing item before :func:`scene_probe_examples` gives up finding a new one.
_MAX_SCENE_DRAWS = 1000


def _absent_companion(scene: Scene, rng: np.random.Generator) -> str:
    """An object the scene lacks: the usual companion (:data:`COOCCUR`) of a present object when
    one is absent (the language prior's hallucination, POPE's adversarial case), else any."""
    partners = [COOCCUR[o] for o in scene.objects if COOCCUR[o] not in scene.objects]
    pool = list(dict.fromkeys(partners)) or [o for o in OBJECTS if o not in scene.objects]
    return pool[int(rng.integers(len(pool)))]


def _scene_item(
    scene: Scene, kind: str, ask_present: bool, rng: np.random.Generator
) -> tuple[str, str, str]:
    """``(question, truthful answer, hallucinated answer)`` about ``scene``."""
    if kind == "caption":
        old = scene.objects[int(rng.integers(len(scene.objects)))]
        wrong = scene.replaced(old, _absent_companion(scene, rng))
        return CAPTION_PROMPT, scene.caption(), wrong.caption()
    if ask_present:
        obj = scene.objects[int(rng.integers(len(scene.objects)))]
        return POPE_QUESTION.format(obj=obj), "yes", "no"
    return POPE_QUESTION.format(obj=_absent_companion(scene, rng)), "no", "yes"


def scene_probe_examples(
    n: int = 200,
    seed: int = 0,
    *,
    size: int = 32,
    kinds: Sequence[str] = SCENE_PROBE_KINDS,
    image_dir: str | Path | None = None,
    p_cooccur: float = 0.8,
    max_objects: int = 3,
) -> list[ProbeExample]:
    """Image-grounded probing data from rendered scenes: ``n`` items, two :class:`ProbeExample` each.

    Item ``i`` is one newly drawn scene (:func:`sample_scenes`'s distribution) and one question
    about it, of kind ``kinds[i % len(kinds)]``:

    * ``"existence"`` -- ``"Is there a {obj} in the image?"``. Every other existence item asks
      about an object the scene shows (truthful ``"yes"``, hallucinated ``"no"``), the others about
      an absent object, preferably the usual companion of a present one (truthful ``"no"``,
      hallucinated ``"yes"``), so the answer word alone says nothing about the label.
    * ``"caption"`` -- ``"Describe the image."``: truthful the scene's caption (``"There is a cat
      and a car."``), hallucinated the same caption with one object (at random) replaced by an
      absent one, the usual companion of a present object when one is absent (``"There is a cat
      and a dog."``), so both captions name as many objects.

    Both examples of an item carry the same image, ``context=""`` and the source id
    ``"scene{seed}-{i}"``, so grouped cross-validation keeps them in one fold; labels are balanced
    (one truthful and one hallucinated answer per item). No two items show the same layout (objects
    and cells) with the same question: a repeat is drawn again, so no prompt appears in two
    groups. The examples are meant for the ``"image"`` capture condition; text-only, their prompts
    repeat across items.

    Args:
        n: items (scenes).
        seed: seeds scenes, questions and pixels; the same arguments give the same examples.
        size: the rendered image's side (the model's image processor resizes it anyway).
        kinds: question kinds to cycle through (:data:`SCENE_PROBE_KINDS`).
        image_dir: write each scene as ``scene{seed}_{i:05d}.png`` there and give examples the
            path; default: the examples carry PIL images.
        p_cooccur, max_objects: of the scene distribution (:func:`sample_scenes`).
    """
    from PIL import Image

    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}.")
    kinds = tuple(kinds)
    unknown = sorted(set(kinds) - set(SCENE_PROBE_KINDS))
    if not kinds or unknown:
        raise ConfigError(
            f"kinds must be a non-empty selection of {SCENE_PROBE_KINDS}, got {list(kinds)}."
        )
    if not 1 <= max_objects <= 4:
        raise ConfigError(f"max_objects must be in 1..4, got {max_objects}.")
    render_scene(Scene(("cat",), (0,), 0), size)  # checks the size before any work
    rng = np.random.default_rng(seed)
    out_dir = Path(image_dir) if image_dir is not None else None
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    seen: set[tuple[Any, ...]] = set()
    count = dict.fromkeys(kinds, 0)
    examples: list[ProbeExample] = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        ask_present = count[kind] % 2 == 0
        count[kind] += 1
        for _ in range(_MAX_SCENE_DRAWS):
            scene = _draw_scene(rng, p_cooccur, max_objects)
            question, truthful, hallucinated = _scene_item(scene, kind, ask_present, rng)
            key = (scene.layout, question)
            if key not in seen:
                break
        else:
            raise ConfigError(
                f"ran out of distinct scenes after {i} of {n} items ({kind} questions); ask for "
                "fewer items or more kinds."
            )
        seen.add(key)
        pixels = Image.fromarray(render_scene(scene, size))
        image: Any = pixels
        if out_dir is not None:
            image = out_dir / f"scene{seed}_{i:05d}.png"
            with atomic_path(image) as tmp:
                pixels.save(tmp, format="PNG")
        sid = f"scene{seed}-{i}"
        examples.append(ProbeExample("", question, truthful, TRUTHFUL, sid, image))
        examples.append(ProbeExample("", question, hallucinated, HALLUCINATED, sid, image))
    return examples


def write_scene_probe_set(
    out_dir: str | Path,
    n: int = 200,
    seed: int = 0,
    *,
    size: int = 32,
    kinds: Sequence[str] = SCENE_PROBE_KINDS,
) -> Path:
    """Write :func:`scene_probe_examples` in the authors' image layout; return the JSON-lines file.

    Files: ``images/scene{seed}_{i:05d}.png`` and ``probe.jsonl`` (one line per example:
    ``image_path`` relative to the file, ``question``, ``answer``, ``label`` ``"gold"`` or
    ``"hallucinated"``, ``source_id``), readable by
    :func:`lineage_lens.data.load_probe_examples` (``load_probe_examples(path)``).
    """
    out_dir = Path(out_dir)
    examples = scene_probe_examples(n, seed, size=size, kinds=kinds, image_dir=out_dir / "images")
    path = out_dir / "probe.jsonl"
    with atomic_open(path, "w", encoding="utf-8") as fh:
        for ex in examples:
            row = {
                "image_path": Path(ex.image).relative_to(out_dir).as_posix(),  # type: ignore[arg-type]
                "question": ex.question,
                "answer": ex.answer,
                "label": "gold" if ex.label == TRUTHFUL else "hallucinated",
                "source_id": ex.source_id,
            }
            fh.write(json.dumps(row) + "\n")
    return path
