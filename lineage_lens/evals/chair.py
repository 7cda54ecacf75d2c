"""CHAIR: object hallucination in image captions (Rohrbach et al., 2018).

For each caption, the objects it mentions are mapped to object classes (the 80 COCO classes by
default) and compared with the image's ground-truth objects:

* ``CHAIR_s``: fraction of captions that mention at least one object not in the image;
* ``CHAIR_i``: hallucinated object mentions / all object mentions (over all captions);
* ``recall``: ground-truth objects mentioned / all ground-truth objects (over all captions);
* ``mean_length``: mean number of words per caption.

Caption processing follows the original CHAIR code:

1. lowercase; split into words: runs of letters, hyphenated compounds kept whole as NLTK's
   tokenizer does (``"remote-controlled"`` is one word and does not fire *remote*);
2. singularise each word (:func:`singularize`: a small rule set plus irregular forms, checked
   against the vocabulary; no ``pattern``/``nltk`` dependency);
3. join multi-word phrases, longest first: every multi-word synonym of the vocabulary
   (``"hot dog"``, ``"teddy bear"``, ``"motor bike"``, ``"cell phone"``, ``"stove top oven"``, ...)
   plus the vocabulary's rewrite phrases (for COCO, as in the original: ``"baby bird"`` -> ``bird``
   and ``"adult cow"`` -> ``cow`` so that *baby*/*adult* do not fire *person*, ``"passenger
   jet"`` -> ``jet``, ``"toilet seat"`` -> ``toilet``, and ``"home plate"`` / ``"train track"``,
   which are no objects);
4. exclusions (COCO: ``seat`` is dropped from a caption that mentions ``toilet``);
5. every remaining word or phrase that is a synonym is mapped to its class.

Differences from the original, on purpose: phrases of any length are matched (the original only
joins pairs, so its ``"stove top oven"`` never fires), and by default each class counts **once per
caption** (``count_once=True``, as the lineage-lens issue asks; ``count_once=False`` counts every
mention as the original does). Captions whose image has no ground truth are skipped and reported
(``n_skipped``), or raise with ``on_missing="error"``.

The vocabulary (:class:`ObjectVocabulary`) and the ground truth are parameters, so another object
vocabulary (for example the zoo's rendered objects) plugs in.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from lineage_lens._io import atomic_open
from lineage_lens._resources import resource_path
from lineage_lens.errors import ConfigError, DataError

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: The prompt and decoding length of the paper's caption generation.
CAPTION_PROMPT = "Please describe this image in detail."
CAPTION_MAX_NEW_TOKENS = 64

# ------------------------------------------------------------------------------ singularize
#: Irregular plurals (and the few regular ones the rules get wrong).
IRREGULAR_PLURALS: dict[str, str] = {
    "people": "person",
    "persons": "person",
    "children": "child",
    "men": "man",
    "women": "woman",
    "gentlemen": "gentleman",
    "policemen": "policeman",
    "firemen": "fireman",
    "mice": "mouse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "oxen": "ox",
    "knives": "knife",
    "wives": "wife",
    "lives": "life",
    "leaves": "leaf",
    "loaves": "loaf",
    "halves": "half",
    "calves": "calf",
    "shelves": "shelf",
    "wolves": "wolf",
    "scarves": "scarf",
    "buses": "bus",
    "busses": "bus",
    "minibuses": "minibus",
    "tomatoes": "tomato",
    "potatoes": "potato",
    "ties": "tie",
    "pies": "pie",
    "cookies": "cookie",
    "movies": "movie",
    "hoodies": "hoodie",
    "brownies": "brownie",
    "dice": "die",
    "skis": "ski",
}

#: Words that look plural but are not (or whose plural is the same word).
UNINFLECTED: frozenset[str] = frozenset(
    {
        "sheep",
        "deer",
        "fish",
        "bison",
        "series",
        "species",
        "scissors",
        "pants",
        "jeans",
        "shorts",
        "news",
    }
)


def _plural_candidates(w: str) -> list[str]:
    """Singular candidates of a regular plural, the default first."""
    if w.endswith("ies"):
        return [w[:-3] + "y", w[:-1]]  # cherries -> cherry, (ties -> tie)
    if w.endswith("ves"):
        return [w[:-1], w[:-3] + "f", w[:-3] + "fe"]  # gloves -> glove, (shelves -> shelf)
    if w.endswith(("sses", "shes", "ches", "xes", "zes")):
        return [w[:-2], w[:-1]]  # glasses -> glass, benches -> bench, boxes -> box
    if w.endswith("oes"):
        return [w[:-1], w[:-2]]  # shoes -> shoe, (tomatoes -> tomato)
    return [w[:-1]]  # cars -> car, skis -> ski, horses -> horse, vases -> vase


def singularize(word: str, vocabulary: Iterable[str] | None = None) -> str:
    """The singular of an English noun, good enough for object vocabularies such as COCO's.

    Irregular forms come from :data:`IRREGULAR_PLURALS` (``people`` -> ``person``, ``mice`` ->
    ``mouse``, ``knives`` -> ``knife``, ``buses`` -> ``bus``); :data:`UNINFLECTED` words and words
    ending in ``ss``/``us``/``is`` (``glass``, ``bus``, ``tennis``) are kept; other words ending in
    ``s`` get a suffix rule (``benches`` -> ``bench``, ``cherries`` -> ``cherry``, ``skis`` ->
    ``ski``). With a ``vocabulary``, a word already in it is kept (``scissors``) and the first rule
    candidate that is in it wins (``ties`` -> ``tie`` rather than ``ty``).
    """
    w = word.lower()
    vocab = (
        vocabulary
        if vocabulary is None or isinstance(vocabulary, (set, frozenset))
        else set(vocabulary)
    )
    if w in IRREGULAR_PLURALS:
        return IRREGULAR_PLURALS[w]
    if vocab is not None and w in vocab:
        return w
    if (
        w in UNINFLECTED
        or len(w) <= 3
        or not w.endswith("s")
        or w.endswith(("ss", "us", "is", "ics"))
    ):
        return w
    candidates = _plural_candidates(w)
    if vocab is not None:
        for cand in candidates:
            if cand in vocab:
                return cand
    return candidates[0]


_WORD = re.compile(r"[a-z]+(?:-[a-z]+)*")


def tokenize(caption: str) -> list[str]:
    """Lowercased words of a caption: runs of ASCII letters, hyphenated compounds kept whole."""
    return _WORD.findall(caption.lower())


# ------------------------------------------------------------------------------ vocabulary
#: COCO animal words: "baby X" / "adult X" mean the animal, not a person (original CHAIR rule).
COCO_ANIMAL_WORDS = (
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "animal",
    "cub",
)
#: "passenger X" is the vehicle, not a person (original CHAIR rule).
COCO_VEHICLE_WORDS = ("jet", "train")


def coco_rewrite_phrases() -> dict[str, str]:
    """The original CHAIR's COCO special cases as phrase -> replacement word."""
    phrases: dict[str, str] = {}
    for animal in COCO_ANIMAL_WORDS:
        phrases[f"baby {animal}"] = animal
        phrases[f"adult {animal}"] = animal
    for vehicle in COCO_VEHICLE_WORDS:
        phrases[f"passenger {vehicle}"] = vehicle
    phrases["bow tie"] = "tie"
    phrases["toilet seat"] = "toilet"
    phrases["home plate"] = "home plate"  # not an object: keeps "plate" from matching
    phrases["train track"] = "train track"  # the tracks, not a train
    return phrases


@dataclass(frozen=True)
class Mention:
    """One object mention in a caption: the surface ``word`` (singularised), its ``cls`` and the
    index of the word among the caption's processed words."""

    word: str
    cls: str
    index: int


@dataclass
class ObjectVocabulary:
    """Object classes, their synonyms, multi-word phrases and exclusions for CHAIR.

    Args:
        synonyms: surface word or phrase -> class (every class should map to itself).
        phrases: extra multi-word phrase -> replacement word (e.g. ``"baby bird"`` -> ``"bird"``);
            every multi-word synonym is a phrase automatically.
        exclusions: ``(trigger, dropped)`` pairs: when ``trigger`` is among a caption's words,
            ``dropped`` is ignored (COCO: ``("toilet", "seat")``).
        name: a label for reports.
    """

    synonyms: dict[str, str]
    phrases: dict[str, str] = field(default_factory=dict)
    exclusions: tuple[tuple[str, str], ...] = ()
    name: str = "custom"

    def __post_init__(self) -> None:
        if not self.synonyms:
            raise ConfigError("an object vocabulary needs at least one class.")
        self.synonyms = {k.lower().strip(): v.lower().strip() for k, v in self.synonyms.items()}
        all_phrases = {k: k for k in self.synonyms if " " in k}
        all_phrases.update({k.lower(): v.lower() for k, v in self.phrases.items()})
        self.phrases = all_phrases
        self._max_phrase = max((len(p.split()) for p in self.phrases), default=1)
        self._vocab_words = set(self.synonyms) | {w for p in self.phrases for w in p.split()}

    @property
    def classes(self) -> list[str]:
        """The object classes, sorted."""
        return sorted(set(self.synonyms.values()))

    @classmethod
    def from_synonyms_file(
        cls,
        path: str | Path,
        *,
        phrases: Mapping[str, str] | None = None,
        exclusions: Sequence[tuple[str, str]] = (),
        name: str | None = None,
    ) -> ObjectVocabulary:
        """Read a synonyms file: one class per line, then its synonyms, comma separated."""
        p = Path(path)
        if not p.is_file():
            raise DataError("synonyms file not found.", path=p)
        synonyms: dict[str, str] = {}
        for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
            words = [w.strip().lower() for w in line.split(",") if w.strip()]
            if not words:
                continue
            for w in words:
                if w in synonyms and synonyms[w] != words[0]:
                    raise DataError(
                        f"synonym {w!r} belongs to both {synonyms[w]!r} and {words[0]!r}.",
                        path=p,
                        line=lineno,
                    )
                synonyms[w] = words[0]
        if not synonyms:
            raise DataError("synonyms file holds no classes.", path=p)
        return cls(synonyms, dict(phrases or {}), tuple(exclusions), name or p.stem)

    @classmethod
    def from_classes(cls, classes: Iterable[str], name: str = "custom") -> ObjectVocabulary:
        """A vocabulary whose classes are their own only synonyms (e.g. the zoo's objects)."""
        return cls({c: c for c in classes}, name=name)

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """The 80 COCO classes with the vendored CHAIR synonyms and the original COCO rules."""
        return cls.from_synonyms_file(
            resource_path("chair", "synonyms.txt"),
            phrases=coco_rewrite_phrases(),
            exclusions=(("toilet", "seat"),),
            name="coco",
        )

    def words(self, caption: str) -> list[str]:
        """The caption's processed words: tokenised, singularised, phrases joined."""
        words = [singularize(w, self._vocab_words) for w in tokenize(caption)]
        out: list[str] = []
        i = 0
        while i < len(words):
            for n in range(min(self._max_phrase, len(words) - i), 1, -1):
                phrase = " ".join(words[i : i + n])
                if phrase in self.phrases:
                    out.append(self.phrases[phrase])
                    i += n
                    break
            else:
                out.append(words[i])
                i += 1
        return out

    def mentions(self, caption: str) -> list[Mention]:
        """Every object mention of ``caption``, in order (a class may repeat)."""
        words = self.words(caption)
        present = set(words)
        dropped = {d for trigger, d in self.exclusions if trigger in present}
        return [
            Mention(w, self.synonyms[w], i)
            for i, w in enumerate(words)
            if w in self.synonyms and w not in dropped
        ]


# ------------------------------------------------------------------------------ data files
@dataclass(frozen=True)
class Caption:
    """A generated caption of one image."""

    image_id: str
    caption: str


def _decode_json_values(text: str, path: Path) -> list[Any]:
    """All JSON values of a file: one document, JSON lines, or concatenated objects."""
    decoder = json.JSONDecoder()
    values: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        try:
            value, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"invalid JSON ({exc.msg}); expected a JSON list, JSON lines or concatenated "
                "JSON objects.",
                path=path,
                line=text.count("\n", 0, exc.pos) + 1,
            ) from exc
        values.append(value)
    if len(values) == 1 and isinstance(values[0], list):
        return values[0]
    return values


def load_captions(path: str | Path) -> list[Caption]:
    """Read captions: a JSON list, JSON lines, or concatenated JSON objects (POPE repository).

    Each object needs ``image_id`` and ``caption`` (or ``text``, as in the POPE/LLaVA files).
    """
    p = Path(path)
    if not p.is_file():
        raise DataError("caption file not found.", path=p)
    values = _decode_json_values(p.read_text(encoding="utf-8"), p)
    if not values:
        raise DataError("caption file holds no captions (it is empty).", path=p)
    return captions_from_records(values, path=p)


def captions_from_records(
    records: Iterable[Mapping[str, Any]], path: str | Path | None = None
) -> list[Caption]:
    """:class:`Caption` objects from dicts with ``image_id`` and ``caption`` or ``text``."""
    out = []
    for k, rec in enumerate(records, start=1):
        if isinstance(rec, Caption):
            out.append(rec)
            continue
        if not isinstance(rec, Mapping):
            raise DataError(f"caption #{k} is a {type(rec).__name__}, not an object.", path=path)
        if "image_id" not in rec:
            raise DataError(f"caption #{k} has no 'image_id' field.", path=path)
        text = rec.get("caption", rec.get("text"))
        if not isinstance(text, str):
            raise DataError(
                f"caption #{k} (image {rec['image_id']}) has no string 'caption' or 'text'.",
                path=path,
            )
        out.append(Caption(str(rec["image_id"]), text))
    if not out:
        raise DataError("no captions given.", path=path)
    return out


def load_ground_truth(
    path: str | Path | None = None, vocabulary: ObjectVocabulary | None = None
) -> dict[str, set[str]]:
    """Per-image ground-truth classes ``{image_id: {class, ...}}`` (default: vendored COCO).

    With a ``vocabulary``, every class must be one of its classes.
    """
    p = Path(path) if path is not None else resource_path("chair", "coco_gt_objects.json")
    if not p.is_file():
        raise DataError("ground-truth file not found.", path=p)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
    except UnicodeDecodeError as exc:
        raise DataError(
            f"not UTF-8 text (byte {exc.start}); save the file as UTF-8 JSON.", path=p
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc.strerror or exc}).", path=p) from exc
    if not isinstance(raw, dict):
        raise DataError("expected a JSON object {image_id: [classes]}.", path=p)
    for key, value in raw.items():
        if not isinstance(value, list) or not all(isinstance(c, str) for c in value):
            raise DataError(
                f"image {key!r}: expected a list of class names (strings), got {value!r}; "
                'write e.g. {"42": ["dog", "person"]}.',
                path=p,
            )
    gt = {str(k): {c.lower() for c in v} for k, v in raw.items()}
    if vocabulary is not None:
        known = set(vocabulary.classes)
        unknown = sorted({c for v in gt.values() for c in v} - known)
        if unknown:
            raise DataError(
                f"ground-truth classes {unknown[:5]} are not in the vocabulary "
                f"{vocabulary.name!r}; use the vocabulary the ground truth was made with.",
                path=p,
            )
    return gt


# ------------------------------------------------------------------------------ metrics
@dataclass
class ChairResult:
    """CHAIR metrics and per-caption details.

    Attributes:
        metrics: ``chair_s, chair_i, recall, mean_length, n, n_mentions, n_hallucinated,
            n_skipped``.
        per_caption: one row per scored caption: ``image_id, caption, n_words, mentioned``
            (classes), ``hallucinated`` (classes), ``hallucinated_words``, ``ground_truth``,
            ``chair_s``, ``chair_i``.
        skipped_ids: image ids of captions without ground truth (not scored).
        config: vocabulary name and counting rule.
    """

    metrics: dict[str, float]
    per_caption: pd.DataFrame
    skipped_ids: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.metrics[key]

    def to_frame(self) -> pd.DataFrame:
        """The per-caption details (one row per scored caption)."""
        return self.per_caption.copy()

    def summary(self) -> str:
        m = self.metrics
        return (
            f"CHAIR_s {m['chair_s']:.4f}  CHAIR_i {m['chair_i']:.4f}  recall {m['recall']:.4f}  "
            f"mean length {m['mean_length']:.1f}  n {int(m['n'])}"
            + (f"  (skipped {int(m['n_skipped'])} without ground truth)" if m["n_skipped"] else "")
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": self.metrics,
            "config": self.config,
            "skipped_ids": self.skipped_ids,
            "per_caption": self.per_caption.to_dict(orient="records"),
        }

    def save(self, path: str | Path) -> Path:
        """Write metrics and per-caption details as JSON (atomically)."""
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> ChairResult:
        p = Path(path)
        if not p.is_file():
            raise DataError("CHAIR result file not found.", path=p)
        d = json.loads(p.read_text(encoding="utf-8"))
        return cls(d["metrics"], pd.DataFrame(d["per_caption"]), d["skipped_ids"], d["config"])

    def plot(self, ax: Axes | None = None) -> Axes:
        """Bar chart of CHAIR_s, CHAIR_i and recall."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(4, 3))
        keys = ["chair_s", "chair_i", "recall"]
        ax.bar(["CHAIR_s", "CHAIR_i", "recall"], [self.metrics[k] for k in keys])
        ax.set_ylim(0, 1)
        ax.set_title(f"CHAIR (n={int(self.metrics['n'])})")
        return ax


def compute_chair(
    captions: str | Path | Iterable[Caption | Mapping[str, Any]],
    *,
    vocabulary: ObjectVocabulary | None = None,
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None,
    count_once: bool = True,
    on_missing: Literal["skip", "error"] = "skip",
) -> ChairResult:
    """CHAIR_s, CHAIR_i, recall and mean caption length of ``captions``.

    Args:
        captions: a caption file (see :func:`load_captions`), or records with ``image_id`` and
            ``caption``/``text``, or :class:`Caption` objects.
        vocabulary: object vocabulary (default: COCO, :meth:`ObjectVocabulary.coco`).
        ground_truth: ``{image_id: [classes]}`` or its JSON file (default: vendored COCO).
        count_once: count each class once per caption (default) instead of every mention.
        on_missing: captions whose image has no ground truth are skipped and reported
            (``"skip"``) or raise :class:`DataError` (``"error"``).
    """
    if on_missing not in ("skip", "error"):
        raise ConfigError(f"on_missing must be 'skip' or 'error', got {on_missing!r}.")
    vocab = vocabulary or ObjectVocabulary.coco()
    if isinstance(captions, (str, Path)):
        caps = load_captions(captions)
    else:
        caps = captions_from_records(captions)
    if ground_truth is None or isinstance(ground_truth, (str, Path)):
        gt = load_ground_truth(ground_truth, vocab)
    else:
        gt = {str(k): {str(c).lower() for c in v} for k, v in ground_truth.items()}

    skipped = [c.image_id for c in caps if c.image_id not in gt]
    if skipped:
        msg = (
            f"{len(skipped)} of {len(caps)} captions have an image id without ground truth "
            f"(e.g. {skipped[:5]})"
        )
        if on_missing == "error" or len(skipped) == len(caps):
            raise DataError(msg + "; check the image ids and the ground-truth file.")
        log.warning("%s; they are skipped.", msg)

    rows = []
    n_mentions = n_halluc = n_gt = n_covered = 0
    for cap in caps:
        if cap.image_id not in gt:
            continue
        truth = gt[cap.image_id]
        mentions = vocab.mentions(cap.caption)
        classes = list(dict.fromkeys(m.cls for m in mentions))
        hallucinated = [c for c in classes if c not in truth]
        if count_once:
            cap_mentions, cap_halluc = len(classes), len(hallucinated)
        else:
            cap_mentions = len(mentions)
            cap_halluc = sum(m.cls not in truth for m in mentions)
        n_mentions += cap_mentions
        n_halluc += cap_halluc
        covered = truth & set(classes)
        n_gt += len(truth)
        n_covered += len(covered)
        rows.append(
            {
                "image_id": cap.image_id,
                "caption": cap.caption,
                "n_words": len(tokenize(cap.caption)),
                "mentioned": classes,
                "hallucinated": hallucinated,
                "hallucinated_words": list(
                    dict.fromkeys(m.word for m in mentions if m.cls not in truth)
                ),
                "ground_truth": sorted(truth),
                "chair_s": int(bool(hallucinated)),
                "chair_i": cap_halluc / cap_mentions if cap_mentions else 0.0,
            }
        )
    frame = pd.DataFrame(rows)
    n = len(frame)
    metrics = {
        "chair_s": float(frame["chair_s"].mean()),
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_covered / n_gt if n_gt else 0.0,
        "mean_length": float(frame["n_words"].mean()),
        "n": n,
        "n_mentions": n_mentions,
        "n_hallucinated": n_halluc,
        "n_skipped": len(skipped),
    }
    config = {"vocabulary": vocab.name, "count_once": count_once, "on_missing": on_missing}
    return ChairResult(metrics, frame, skipped, config)


# ------------------------------------------------------------------------------ generation
#: File names of COCO val2014 images by image id.
COCO_FILE_PATTERN = "COCO_val2014_{image_id:0>12}.jpg"


def generate_captions(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    file_pattern: str = COCO_FILE_PATTERN,
    prompt: str = CAPTION_PROMPT,
    prompt_template: str | None = None,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    gate: Any = None,
    limit: int | None = None,
    batch_size: int = 4,
    cache: Any = None,
    progress: bool = True,
) -> list[Caption]:
    """Greedy captions of images by a LLaVA-type ``model`` (the paper's setting by default).

    Args:
        image_dir: folder of the images; file names are ``file_pattern.format(image_id=...)``.
        image_ids: which images (default: those of the vendored COCO ground truth, sorted).
        prompt, max_new_tokens: the paper's "Please describe this image in detail." and 64.
        prompt_template: ``{image}``/``{question}`` template (default: LLaVA-1.5's).
        gate: a TruthGate applied while generating.
        limit: caption only the first ``limit`` images.
        cache: a :class:`~lineage_lens.evals._common.ResultCache` or its path.
    """
    from lineage_lens.evals._common import PromptItem, maybe_cache, run_prompts
    from lineage_lens.images import (
        LLAVA_TEMPLATE,
        encode_image_prompt,
        load_pixel_values,
        vision_settings,
    )

    if image_ids is None:
        image_ids = sorted(load_ground_truth(), key=lambda s: (len(s), s))
    ids = [str(i) for i in image_ids]
    if limit is not None:
        if limit < 1:
            raise ConfigError(f"limit must be positive, got {limit}.")
        ids = ids[:limit]
    if not ids:
        raise DataError("no images to caption.")
    folder = Path(image_dir)
    if not folder.is_dir():
        raise DataError("image folder not found.", path=folder)
    files = {i: folder / file_pattern.format(image_id=i) for i in ids}
    missing = [str(f.name) for f in files.values() if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(files)} images are missing from {folder} "
            f"(e.g. {', '.join(missing[:3])}); pass the right folder or file_pattern."
        )
    settings = vision_settings(model)
    template = prompt_template or LLAVA_TEMPLATE
    prompt_ids = tuple(encode_image_prompt(model.tokenizer, prompt, settings, template))
    items = [PromptItem(i, prompt_ids, str(files[i])) for i in ids]
    setting = {"task": "chair", "prompt": prompt, "template": template, "dir": str(folder)}
    with maybe_cache(cache) as c:
        records = run_prompts(
            model,
            items,
            mode="generate",
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            gate=gate,
            cache=c,
            setting=setting,
            progress=progress,
            desc="captions",
            pixel_loader=lambda paths: load_pixel_values(paths, settings),
        )
    return [Caption(i, records[i]["text"]) for i in ids]


def evaluate_chair(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    vocabulary: ObjectVocabulary | None = None,
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None,
    count_once: bool = True,
    **generate_kwargs: Any,
) -> ChairResult:
    """Caption images with :func:`generate_captions` and score them with :func:`compute_chair`.

    ``image_ids`` default to the ground truth's ids; ``generate_kwargs`` go to
    :func:`generate_captions` (``file_pattern``, ``gate``, ``limit``, ``batch_size``, ...).
    """
    if image_ids is None and ground_truth is not None:
        gt_ids = (
            load_ground_truth(ground_truth, vocabulary)
            if isinstance(ground_truth, (str, Path))
            else ground_truth
        )
        image_ids = sorted(gt_ids, key=lambda s: (len(str(s)), str(s)))
    captions = generate_captions(model, image_dir, image_ids, **generate_kwargs)
    result = compute_chair(
        captions, vocabulary=vocabulary, ground_truth=ground_truth, count_once=count_once
    )
    gate = generate_kwargs.get("gate")
    result.config["gate"] = None if gate is None else gate.params()
    return result
