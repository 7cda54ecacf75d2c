"""CHAIR's object vocabulary: classes, synonyms, multi-word objects and exclusions.

After the text handling (:mod:`lineage_lens.evals.chair.text`), the reference CHAIR

3. joins pairs of consecutive words, left to right, that are in the two-word table
   (:func:`coco_double_words`): ``"hot dog"``, ``"teddy bear"``, ``"cell phone"``, ...;
   ``"baby bird"`` / ``"adult cow"`` -> the animal, ``"passenger jet"`` -> ``jet``, ``"bow tie"`` ->
   ``tie``, ``"toilet seat"`` -> ``toilet``; ``"home plate"`` and ``"train track"`` are consumed
   and are no object;
4. drops ``seat`` when the caption also says ``toilet``;
5. takes every remaining word that is in the synonym list (parsed as the reference does: lines
   split on ``", "``, so ``" motor bike"`` with its leading space and ``"iPhone"`` never match)
   as a mention of its class.

:class:`ObjectVocabulary` holds these tables (:meth:`ObjectVocabulary.coco` is the reference's);
another vocabulary (for example the zoo's rendered objects) plugs in the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lineage_lens._resources import resource_path
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.evals.chair.text import singularize, tokenize
from lineage_lens.fileio import read_text

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

    def mentions_of_words(self, words: Sequence[str]) -> list[Mention]:
        """The object mentions among processed words (those of :meth:`words`), in order, with the
        exclusions applied (a class may repeat)."""
        present = set(words)
        dropped = {d for trigger, d in self.exclusions if trigger in present}
        return [
            Mention(w, self.synonyms[w], i)
            for i, w in enumerate(words)
            if w in self.synonyms and w not in dropped
        ]

    def mentions(self, caption: str) -> list[Mention]:
        """Every object mention of ``caption``, in order (a class may repeat)."""
        return self.mentions_of_words(self.words(caption))
