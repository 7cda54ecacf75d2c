"""CHAIR: object hallucination in image captions (Rohrbach et al., 2018), as published.

For each caption, the objects it mentions are mapped to object classes (the 80 COCO classes by
default) and compared with the image's ground-truth objects:

* ``CHAIR_s``: fraction of captions that mention at least one object not in the image;
* ``CHAIR_i``: hallucinated object mentions / all object mentions (over all captions);
* ``recall``: ground-truth classes mentioned / all ground-truth classes (over all captions), as
  in the Python 3 ports of the reference that report it;
* ``mean_length``: mean number of tokens per caption after two-word objects are joined (the
  ports' ``Len``; punctuation tokens count).

The default is the reference algorithm, ``utils/chair.py`` of LisaAnne/Hallucination, which the
POPE repository and most MLLM papers reuse (our own implementation of the same steps):

1. lowercase the caption and tokenise it as NLTK's ``word_tokenize`` does (sentence split, then
   the Treebank rules: ``"dog's"`` -> ``dog``, ``'s``; ``"hot-dog"`` and ``"cat/dog"`` stay one
   token);
2. singularise every token with the rules of ``pattern.en.singularize`` (:func:`singularize`),
   quirks included: ``bus`` -> ``bu``, ``glass`` -> ``glas``, ``ties`` -> ``ty``, ``tennis`` ->
   ``tenni``, ``canoes`` -> ``cano``;
3. join pairs of consecutive words, left to right, that are in the two-word table
   (:func:`coco_double_words`): ``"hot dog"``, ``"teddy bear"``, ``"cell phone"``, ...;
   ``"baby bird"`` / ``"adult cow"`` -> the animal, ``"passenger jet"`` -> ``jet``, ``"bow tie"`` ->
   ``tie``, ``"toilet seat"`` -> ``toilet``; ``"home plate"`` and ``"train track"`` are consumed
   and are no object;
4. drop ``seat`` when the caption also says ``toilet``;
5. every remaining word that is in the synonym list (parsed as the reference does: lines split
   on ``", "``, so ``" motor bike"`` with its leading space and ``"iPhone"`` never match) is a
   mention of its class; **every mention counts**.

``counting="once_per_caption"`` counts each class once per caption instead (CHAIR_i then is
hallucinated classes / mentioned classes; CHAIR_s and recall do not change). Every known
difference from the reference is listed in ``docs/chair.md``. Captions whose image has no ground
truth are skipped and reported (``n_skipped``), or raise with ``on_missing="error"``.

The vocabulary (:class:`ObjectVocabulary`) and the ground truth are parameters, so another object
vocabulary (for example the zoo's rendered objects) plugs in.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from lineage_lens._display import ShortRepr, label
from lineage_lens._resources import resource_path
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.fileio import atomic_open, read_text
from lineage_lens.stats import chair_i_of_counts as chair_i_of_counts  # re-exported

if TYPE_CHECKING:
    from matplotlib.axes import Axes

log = logging.getLogger(__name__)

#: The prompt and decoding length of the paper's caption generation.
CAPTION_PROMPT = "Please describe this image in detail."
CAPTION_MAX_NEW_TOKENS = 64

#: How mentions are counted: every mention (the reference) or each class once per caption.
Counting = Literal["every_mention", "once_per_caption"]
COUNTINGS: tuple[str, ...] = ("every_mention", "once_per_caption")

# ------------------------------------------------------------------------------ singularize
# The noun rules of pattern.en.singularize (CLiPS Pattern 3.6, BSD; its rules adapted from Bermi
# Ferrer's Inflector, MIT), which the reference CHAIR applies to every token. Kept as they are,
# including the rules that misfire on singular words, because CHAIR's numbers depend on them.


def _split(text: str) -> list[str]:
    return text.split()


#: Second halves of compounds that are singularised on their first half ("mothers-in-law").
_COMPOUND_LINKS = frozenset(
    _split(
        "about above across after among around at athwart before behind below beneath beside "
        "besides between betwixt beyond but by during except for from in into near of off on onto "
        "out over since till to under until unto upon with"
    )
)
#: A word that is the end of one of these is returned unchanged ("sheep" is not among them).
_UNINFLECTED = _split(
    "bison bream breeches britches carp chassis christmas clippers cod contretemps corps debris "
    "diabetes djinn eland elk flounder gallows georgia graffiti headquarters herpes high-jinks "
    "homework innings jackanapes mackerel measles mews mumps news pincers pliers proceedings "
    "rabies salmon scissors series shears species swine swiss trout tuna whiting wildebeest "
    # uncountable nouns
    "advice bread butter cheese electricity equipment fruit furniture garbage gravel happiness "
    "information ketchup knowledge love luggage mathematics mayonnaise meat mustard news "
    "progress research rice sand software understanding water"
)
#: A word ending in one of these plus "s" is returned unchanged (Pattern 3.6: "cookies" stays;
#: "^pie" and "^tie" are literal, so they never match and "ties" becomes "ty").
_IE_WORDS = _split(
    "alergie auntie beanie birdie bogie bombie collie cookie cutie doggie eyrie freebie goonie "
    "groupie hankie hippie hoagie hottie indie junkie laddie laramie lingerie meanie newbie "
    "nightie oldie ^pie pixie quickie reverie rookie softie sortie stoolie sweetie techie ^tie "
    "toughie valkyrie veggie weenie yuppie zombie"
)
#: Irregular plural endings -> singular endings, tried in this order ("women" -> "woman").
_IRREGULAR: tuple[tuple[str, str], ...] = tuple(
    tuple(pair.split(":"))  # type: ignore[misc]
    for pair in _split(
        "atlantes:atlas atlases:atlas axes:axe beeves:beef brethren:brother children:child "
        "corpora:corpus corpuses:corpus ephemerides:ephemeris feet:foot ganglia:ganglion "
        "geese:goose genera:genus genii:genie graffiti:graffito helves:helve kine:cow "
        "leaves:leaf loaves:loaf men:man mongooses:mongoose monies:money moves:move "
        "mythoi:mythos numena:numen occipita:occiput octopodes:octopus opera:opus opuses:opus "
        "our:my oxen:ox penes:penis penises:penis people:person sexes:sex "
        "soliloquies:soliloquy teeth:tooth testes:testis trilbys:trilby turves:turf zoa:zoon"
    )
)
#: Suffix rules, the first that matches wins; the flag marks a case-insensitive rule (the -ves rules
#: of the original are case-sensitive). ``[octop|vir]`` and ``[m|l]`` are character classes in
#: the original too ("spaghetti" -> "spaghettus", "slice" -> "slouse").
_RULES_SPEC: tuple[tuple[str, str, bool], ...] = (
    (r"(.)ae$", r"\1a", True),
    (r"(.)itis$", r"\1itis", True),
    (r"(.)eaux$", r"\1eau", True),
    (r"(quiz)zes$", r"\1", True),
    (r"(matr)ices$", r"\1ix", True),
    (r"(ap|vert|ind)ices$", r"\1ex", True),
    (r"^(ox)en", r"\1", True),
    (r"(alias|status)es$", r"\1", True),
    (r"([octop|vir])i$", r"\1us", True),
    (r"(cris|ax|test)es$", r"\1is", True),
    (r"(shoe)s$", r"\1", True),
    (r"(o)es$", r"\1", True),
    (r"(bus)es$", r"\1", True),
    (r"([m|l])ice$", r"\1ouse", True),
    (r"(x|ch|ss|sh)es$", r"\1", True),
    (r"(m)ovies$", r"\1ovie", True),
    (r"(.)ombies$", r"\1ombie", True),
    (r"(s)eries$", r"\1eries", True),
    (r"([^aeiouy]|qu)ies$", r"\1y", True),
    (r"([aeo]l)ves$", r"\1f", False),
    (r"([^d]ea)ves$", r"\1f", False),
    (r"arves$", r"arf", False),
    (r"erves$", r"erve", False),
    (r"([nlw]i)ves$", r"\1fe", False),
    (r"([lr])ves$", r"\1f", True),
    (r"([aeo])ves$", r"\1ve", False),
    (r"(sive)s$", r"\1", True),
    (r"(tive)s$", r"\1", True),
    (r"(hive)s$", r"\1", True),
    (r"([^f])ves$", r"\1fe", True),
    (r"(^analy)ses$", r"\1sis", True),
    (r"((a)naly|(b)a|(d)iagno|(p)arenthe|(p)rogno|(s)ynop|(t)he)ses$", r"\1\2sis", True),
    (r"(.)opses$", r"\1opsis", True),
    (r"(.)yses$", r"\1ysis", True),
    (r"(h|d|r|o|n|b|cl|p)oses$", r"\1ose", True),
    (r"(fruct|gluc|galact|lact|ket|malt|rib|sacchar|cellul)ose$", r"\1ose", True),
    (r"(.)oses$", r"\1osis", True),
    (r"([ti])a$", r"\1um", True),
    (r"(n)ews$", r"\1ews", True),
    (r"s$", "", True),
)
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE if ci else 0), r) for p, r, ci in _RULES_SPEC
)


@lru_cache(maxsize=65536)
def singularize(word: str) -> str:
    """The singular of a word as ``pattern.en.singularize`` (Pattern 3.6) gives it.

    This is the reference CHAIR's singulariser, applied to every token (not only nouns), with its
    misfires: ``"bus"`` -> ``"bu"``, ``"glass"`` -> ``"glas"``, ``"tennis"`` -> ``"tenni"``,
    ``"ties"`` -> ``"ty"``, ``"canoes"`` -> ``"cano"``, ``"cookies"`` unchanged. Plurals that
    matter for COCO come out right: ``people`` -> ``person``, ``women`` -> ``woman``, ``mice`` ->
    ``mouse``, ``knives`` -> ``knife``, ``buses`` -> ``bus``, ``glasses`` -> ``glass``,
    ``benches`` -> ``bench``, ``skis`` -> ``ski``, ``cherries`` -> ``cherry``.
    """
    if "-" in word:
        parts = word.split("-")
        if parts[1] in _COMPOUND_LINKS:  # mothers-in-law -> mother-in-law
            return singularize(parts[0]) + "-" + "-".join(parts[1:])
    if word.endswith("'"):  # dogs' -> dog's
        return singularize(word[:-1]) + "'s"
    low = word.lower()
    if any(u.endswith(low) for u in _UNINFLECTED):
        return word
    if any(low.endswith(ie + "s") for ie in _IE_WORDS):
        return low
    for plural, singular in _IRREGULAR:
        if low.endswith(plural):
            return re.sub(f"(?i){plural}$", singular, word)
    for pattern, replacement in _RULES:
        if pattern.search(word):
            return pattern.sub(replacement, word, count=1)
    return word


# ------------------------------------------------------------------------------ tokenize
@lru_cache(maxsize=1)
def _nltk_tokenizers() -> tuple[Any, Any]:
    from nltk.tokenize import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(), NLTKWordTokenizer()


def tokenize(caption: str) -> list[str]:
    """The lowercased tokens of a caption as the reference CHAIR gets them.

    ``nltk.word_tokenize(caption.lower())``: Punkt sentence split, then NLTK's Treebank word
    rules on each sentence (punctuation tokens included). The sentence splitter is Punkt without
    NLTK's trained English parameters (which need a data download), so abbreviations such as
    ``"e.g."`` end a sentence here; that changes only the abbreviation's own token.
    """
    sentences, words = _nltk_tokenizers()
    text = caption.lower()
    return [tok for sent in sentences.tokenize(text) for tok in words.tokenize(sent)]


# ------------------------------------------------------------------------------ vocabulary
#: Animal words: "baby X" / "adult X" mean the animal, not a person (reference rule).
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
#: "passenger X" is the vehicle, not a person (reference rule).
COCO_VEHICLE_WORDS = ("jet", "train")
#: The reference's two-word objects, each joined into one word (then matched as a synonym).
COCO_DOUBLE_WORDS = (
    "motor bike",
    "motor cycle",
    "air plane",
    "traffic light",
    "street light",
    "traffic signal",
    "stop light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "suit case",
    "sports ball",
    "baseball bat",
    "baseball glove",
    "tennis racket",
    "wine glass",
    "hot dog",
    "cell phone",
    "mobile phone",
    "teddy bear",
    "hair drier",
    "potted plant",
    "bow tie",
    "laptop computer",
    "stove top oven",
    "home plate",
    "train track",
)


def coco_double_words() -> dict[str, str]:
    """The reference's COCO two-word table: singularised word pair -> the word it becomes.

    Pairs are matched after singularisation, so ``"sports ball"`` (``sport ball``) and
    ``"tennis racket"`` (``tenni racket``) never join (``ball`` and ``racket`` still fire alone),
    ``"wine glas"`` is listed to catch ``"wine glass"``, and the three-word ``"stove top oven"``
    never matches. ``"home plate"`` and ``"train track"`` are no synonym: joined, they drop out.
    """
    table = {w: w for w in COCO_DOUBLE_WORDS}
    for animal in COCO_ANIMAL_WORDS:
        table[f"baby {animal}"] = animal
        table[f"adult {animal}"] = animal
    for vehicle in COCO_VEHICLE_WORDS:
        table[f"passenger {vehicle}"] = vehicle
    table["bow tie"] = "tie"
    table["toilet seat"] = "toilet"
    table["wine glas"] = "wine glass"
    return table


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
        phrases: word sequence (singularised words joined by spaces) -> the word it becomes, e.g.
            ``"baby bird"`` -> ``"bird"``; with ``phrases_from_synonyms`` every multi-word
            synonym is a phrase too.
        exclusions: ``(trigger, dropped)`` pairs: when ``trigger`` is among a caption's words,
            ``dropped`` is ignored (COCO: ``("toilet", "seat")``).
        name: a label for reports.
        phrases_from_synonyms: add every multi-word synonym to ``phrases`` (the COCO vocabulary
            uses the reference's table only).
        max_phrase_words: longest phrase matched (the reference joins pairs only: 2); default
            the longest phrase.
        exact: take synonyms and phrases as given (the reference's parsing: no lowercasing or
            stripping); otherwise they are lowercased and stripped.
    """

    synonyms: dict[str, str]
    phrases: dict[str, str] = field(default_factory=dict)
    exclusions: tuple[tuple[str, str], ...] = ()
    name: str = "custom"
    phrases_from_synonyms: bool = True
    max_phrase_words: int | None = None
    exact: bool = False

    def __post_init__(self) -> None:
        if not self.synonyms:
            raise ConfigError("an object vocabulary needs at least one class.")

        def norm(s: str) -> str:
            return s if self.exact else s.lower().strip()

        self.synonyms = {norm(k): norm(v) for k, v in self.synonyms.items()}
        all_phrases = (
            {k: k for k in self.synonyms if " " in k.strip()} if self.phrases_from_synonyms else {}
        )
        all_phrases.update({norm(k): norm(v) for k, v in self.phrases.items()})
        self.phrases = all_phrases
        longest = max((len(p.split()) for p in self.phrases), default=1)
        if self.max_phrase_words is not None:
            if self.max_phrase_words < 1:
                raise ConfigError(f"max_phrase_words must be >= 1, got {self.max_phrase_words}.")
            longest = min(longest, self.max_phrase_words)
        self._max_phrase = longest

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
        exact: bool = False,
        **kwargs: Any,
    ) -> ObjectVocabulary:
        """Read a synonyms file: one class per line, then its synonyms, comma separated.

        With ``exact`` the file is parsed as the reference CHAIR parses ``synonyms.txt``: each
        line stripped and split on ``", "``, entries kept verbatim (``" motor bike"`` keeps its
        leading space), and a synonym listed under two classes belongs to the later one.
        Otherwise entries are split on commas, stripped and lowercased, and a synonym under two
        classes is an error. ``kwargs`` go to the constructor.
        """
        p = Path(path)
        if not p.is_file():
            raise DataError("synonyms file not found.", path=p)
        synonyms: dict[str, str] = {}
        text = read_text(p, "synonyms file")
        for lineno, line in enumerate(text.splitlines(), start=1):
            if exact:
                words = [w for w in line.strip().split(", ") if w]
            else:
                words = [w.strip().lower() for w in line.split(",") if w.strip()]
            if not words:
                continue
            for w in words:
                if not exact and w in synonyms and synonyms[w] != words[0]:
                    raise DataError(
                        f"synonym {w!r} belongs to both {synonyms[w]!r} and {words[0]!r}.",
                        path=p,
                        line=lineno,
                    )
                synonyms[w] = words[0]
        if not synonyms:
            raise DataError("synonyms file holds no classes.", path=p)
        return cls(
            synonyms,
            dict(phrases or {}),
            tuple(exclusions),
            name or p.stem,
            exact=exact,
            **kwargs,
        )

    @classmethod
    def from_classes(cls, classes: Iterable[str], name: str = "custom") -> ObjectVocabulary:
        """A vocabulary whose classes are their own only synonyms (e.g. the zoo's objects)."""
        return cls({c: c for c in classes}, name=name)

    @classmethod
    def coco(cls) -> ObjectVocabulary:
        """The 80 COCO classes as the reference CHAIR reads them: the vendored ``synonyms.txt``
        parsed exactly, the two-word table (:func:`coco_double_words`, pairs only) and the
        toilet/seat exclusion."""
        return cls.from_synonyms_file(
            resource_path("chair", "synonyms.txt"),
            phrases=coco_double_words(),
            exclusions=(("toilet", "seat"),),
            name="coco",
            exact=True,
            phrases_from_synonyms=False,
            max_phrase_words=2,
        )

    def words(self, caption: str) -> list[str]:
        """The caption's processed words: tokenised, singularised, phrases joined (greedy, left
        to right, longest first); exclusions are not applied."""
        words = [singularize(w) for w in tokenize(caption)]
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

    def _mentions(self, words: Sequence[str]) -> list[Mention]:
        present = set(words)
        dropped = {d for trigger, d in self.exclusions if trigger in present}
        return [
            Mention(w, self.synonyms[w], i)
            for i, w in enumerate(words)
            if w in self.synonyms and w not in dropped
        ]

    def mentions(self, caption: str) -> list[Mention]:
        """Every object mention of ``caption``, in order (a class may repeat)."""
        return self._mentions(self.words(caption))


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
    values = _decode_json_values(read_text(p, "caption file"), p)
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
    text = read_text(p, "ground-truth file")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
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


def _read_coco_json(path: str | Path, kind: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"COCO {kind} file not found.", path=p)
    text = read_text(p, f"COCO {kind} file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise DataError(f"expected a COCO {kind} file with an 'annotations' list.", path=p)
    return data


def coco_ground_truth(
    instances: str | Path | Sequence[str | Path],
    captions: str | Path | Sequence[str | Path] = (),
    *,
    image_ids: Iterable[str | int] | None = None,
    vocabulary: ObjectVocabulary | None = None,
    progress: bool = True,
) -> dict[str, list[str]]:
    """Per-image ground-truth classes built as the reference CHAIR builds them.

    The classes of an image are those of its COCO instance annotations (category name -> class
    through the synonym list) plus every class its human captions mention, found with the same
    word handling as the generated captions (:meth:`ObjectVocabulary.mentions`). The reference
    reads the train and the val 2014 files together; pass both.

    Args:
        instances: ``instances_{train,val}2014.json`` path(s).
        captions: ``captions_{train,val}2014.json`` path(s).
        image_ids: keep only these images (default: every annotated image).
        vocabulary: default COCO (:meth:`ObjectVocabulary.coco`).

    Returns:
        ``{image_id: sorted classes}``, the layout :func:`load_ground_truth` reads; write it with
        ``json.dump`` to use it as ``ground_truth``.
    """
    from tqdm.auto import tqdm

    vocab = vocabulary or ObjectVocabulary.coco()
    keep = None if image_ids is None else {str(i) for i in image_ids}
    gt: dict[str, set[str]] = {}
    inst_paths = [instances] if isinstance(instances, (str, Path)) else list(instances)
    cap_paths = [captions] if isinstance(captions, (str, Path)) else list(captions)
    for path in inst_paths:
        data = _read_coco_json(path, "instances")
        names = {c["id"]: c["name"] for c in data.get("categories", [])}
        for ann in data["annotations"]:
            image = str(ann["image_id"])
            if keep is not None and image not in keep:
                continue
            name = names.get(ann["category_id"])
            if name not in vocab.synonyms:
                raise DataError(
                    f"category {ann['category_id']} ({name!r}) of image {image} is not in the "
                    f"vocabulary {vocab.name!r}; use the synonym list of the annotations.",
                    path=path,
                )
            gt.setdefault(image, set()).add(vocab.synonyms[name])
    for path in cap_paths:
        data = _read_coco_json(path, "captions")
        anns = [a for a in data["annotations"] if keep is None or str(a["image_id"]) in keep]
        for ann in tqdm(anns, disable=not progress, desc="ground-truth captions", unit="cap"):
            classes = {m.cls for m in vocab.mentions(str(ann["caption"]))}
            gt.setdefault(str(ann["image_id"]), set()).update(classes)
    if not gt:
        raise DataError("no annotations for the requested images in the COCO files.")
    return {k: sorted(v) for k, v in gt.items()}


# ------------------------------------------------------------------------------ metrics
@dataclass(repr=False)
class ChairResult(ShortRepr):
    """CHAIR metrics and per-caption details.

    Attributes:
        metrics: ``chair_s, chair_i, recall, mean_length, n, n_mentions, n_hallucinated,
            n_skipped``.
        per_caption: one row per scored caption: ``image_id, caption, n_words`` (tokens),
            ``mentioned`` and ``hallucinated`` (classes, each once), ``hallucinated_words``
            (as counted: one entry per hallucinated mention, or per class with
            ``once_per_caption``), ``n_mentions``, ``n_hallucinated`` (as counted),
            ``ground_truth``, ``chair_s``, ``chair_i``.
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

    def _repr_fields(self) -> list[tuple[str, str]]:
        m = self.metrics
        fields = [(k, f"{float(m[k]):.4f}") for k in ("chair_s", "chair_i", "recall") if k in m]
        fields += [(k, str(int(m[k]))) for k in ("n", "n_skipped") if k in m]
        return [
            *fields,
            ("vocabulary", label(self.config.get("vocabulary"))),
            ("counting", label(self.config.get("counting"))),
        ]

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
        try:
            d = json.loads(read_text(p, "CHAIR result file"))
            return cls(d["metrics"], pd.DataFrame(d["per_caption"]), d["skipped_ids"], d["config"])
        except json.JSONDecodeError as exc:
            raise DataError(f"invalid JSON ({exc.msg}).", path=p, line=exc.lineno) from exc
        except (KeyError, TypeError) as exc:
            raise DataError(
                f"not a CHAIR result file (no {exc}); write it with ChairResult.save.", path=p
            ) from exc

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
    counting: Counting = "every_mention",
    on_missing: Literal["skip", "error"] = "skip",
) -> ChairResult:
    """CHAIR_s, CHAIR_i, recall and mean caption length of ``captions``.

    Args:
        captions: a caption file (see :func:`load_captions`), or records with ``image_id`` and
            ``caption``/``text``, or :class:`Caption` objects.
        vocabulary: object vocabulary (default: COCO as the reference reads it,
            :meth:`ObjectVocabulary.coco`).
        ground_truth: ``{image_id: [classes]}`` or its JSON file (default: vendored COCO).
        counting: ``"every_mention"`` (the reference CHAIR, default) or ``"once_per_caption"``
            (each class counted once per caption; changes CHAIR_i only).
        on_missing: captions whose image has no ground truth are skipped and reported
            (``"skip"``) or raise :class:`DataError` (``"error"``).
    """
    if counting not in COUNTINGS:
        raise ConfigError(f"counting must be one of {COUNTINGS}, got {counting!r}.")
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
        words = vocab.words(cap.caption)
        mentions = vocab._mentions(words)
        if counting == "once_per_caption":
            first = {m.cls: m for m in reversed(mentions)}  # the first mention of each class
            mentions = [m for m in mentions if first[m.cls] is m]
        classes = list(dict.fromkeys(m.cls for m in mentions))
        halluc = [m for m in mentions if m.cls not in truth]
        n_mentions += len(mentions)
        n_halluc += len(halluc)
        n_gt += len(truth)
        n_covered += len(truth & set(classes))
        rows.append(
            {
                "image_id": cap.image_id,
                "caption": cap.caption,
                "n_words": len(words),
                "mentioned": classes,
                "hallucinated": list(dict.fromkeys(m.cls for m in halluc)),
                "hallucinated_words": [m.word for m in halluc],
                "n_mentions": len(mentions),
                "n_hallucinated": len(halluc),
                "ground_truth": sorted(truth),
                "chair_s": int(bool(halluc)),
                "chair_i": len(halluc) / len(mentions) if mentions else 0.0,
            }
        )
    frame = pd.DataFrame(rows)
    metrics = {
        "chair_s": float(frame["chair_s"].mean()),
        "chair_i": n_halluc / n_mentions if n_mentions else 0.0,
        "recall": n_covered / n_gt if n_gt else 0.0,
        "mean_length": float(frame["n_words"].mean()),
        "n": len(frame),
        "n_mentions": n_mentions,
        "n_hallucinated": n_halluc,
        "n_skipped": len(skipped),
    }
    config = {"vocabulary": vocab.name, "counting": counting, "on_missing": on_missing}
    return ChairResult(metrics, frame, skipped, config)


# ------------------------------------------------------------------------------ generation
#: File names of COCO val2014 images by image id.
COCO_FILE_PATTERN = "COCO_val2014_{image_id:0>12}.jpg"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def find_image_files(
    folder: str | Path, image_ids: Sequence[str | int], file_pattern: str | None = None
) -> dict[str, Path]:
    """Each image id's file in ``folder``.

    With ``file_pattern`` the name is ``file_pattern.format(image_id=id)``. Without it, COCO's
    val2014 names (:data:`COCO_FILE_PATTERN`) when the folder has them; otherwise the image whose
    name (without suffix) is the id, or whose name's last number equals a numeric id
    (``zoo_00042.png`` for id ``42``). A missing or ambiguous image is a
    :class:`~lineage_lens.errors.DataError` naming the folder and a few of the ids.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder not found.", path=folder)
    ids = [str(i) for i in image_ids]

    def by_pattern(pattern: str) -> dict[str, Path]:
        return {i: folder / pattern.format(image_id=i) for i in ids}

    if file_pattern is not None:
        files = by_pattern(file_pattern)
        how = f"file_pattern {file_pattern!r}"
    else:
        files = by_pattern(COCO_FILE_PATTERN)
        how = "COCO's file names or the ids' numbers"
        if not all(f.is_file() for f in files.values()):
            images = [f for f in folder.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES]
            by_name = {f.stem: f for f in images}
            by_number: dict[int, list[Path]] = {}
            for f in images:
                digits = re.findall(r"\d+", f.stem)
                if digits:
                    by_number.setdefault(int(digits[-1]), []).append(f)
            ambiguous = [i for i in ids if i not in by_name and len(by_number.get(_num(i), [])) > 1]
            if ambiguous:
                names = ", ".join(p.name for p in by_number[_num(ambiguous[0])][:3])
                raise DataError(
                    f"image id {ambiguous[0]!r} matches several files in {folder} ({names}); "
                    "pass file_pattern to say which."
                )
            files = {
                i: by_name.get(i) or next(iter(by_number.get(_num(i), [])), folder / i) for i in ids
            }
    missing = [i for i, f in files.items() if not f.is_file()]
    if missing:
        raise DataError(
            f"{len(missing)} of {len(files)} images are missing from {folder} by {how} "
            f"(e.g. ids {', '.join(missing[:3])}); pass the right folder or file_pattern."
        )
    return files


def _num(image_id: str) -> int:
    """A numeric id's number (-1 for other ids, which match by name only)."""
    return int(image_id) if image_id.isascii() and image_id.isdigit() else -1


def generate_captions(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    file_pattern: str | None = None,
    prompt: str = CAPTION_PROMPT,
    prompt_template: str | None = None,
    max_new_tokens: int = CAPTION_MAX_NEW_TOKENS,
    gate: Any = None,
    limit: int | None = None,
    batch_size: int = 4,
    cache: Any = None,
    progress: bool = True,
) -> list[Caption]:
    """Greedy captions of images by a vision-language ``model`` (the paper's setting by default).

    Args:
        image_dir: folder of the images, each found by :func:`find_image_files` (``file_pattern``
            gives the names as ``file_pattern.format(image_id=...)``; default: COCO's names, else
            the ids' numbers).
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
        image_inputs,
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
    files = find_image_files(folder, ids, file_pattern)
    img_in = image_inputs(model)  # the family's image tokens and inputs (lineage_lens.images)
    template = prompt_template or LLAVA_TEMPLATE
    items = [
        PromptItem(
            i,
            tuple(encode_image_prompt(model.tokenizer, prompt, img_in, template, image=files[i])),
            str(files[i]),
        )
        for i in ids
    ]
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
            image_inputs=img_in,
        )
    return [Caption(i, records[i]["text"]) for i in ids]


def evaluate_chair(
    model: Any,
    image_dir: str | Path,
    image_ids: Sequence[str | int] | None = None,
    *,
    vocabulary: ObjectVocabulary | None = None,
    ground_truth: str | Path | Mapping[str, Iterable[str]] | None = None,
    counting: Counting = "every_mention",
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
        captions, vocabulary=vocabulary, ground_truth=ground_truth, counting=counting
    )
    gate = generate_kwargs.get("gate")
    result.config["gate"] = None if gate is None else gate.params()
    return result
