"""A tiny synthetic world of entities, relations and objects, and its training and probing text.

Each person of the world has one object per relation (where they live, their job, their pet): the
*fact base*. Pretraining documents mix

* memorised fact statements (``"Alice lives in Oslo ."``),
* closed-book questions (``"Question: where does Alice live ?\\nAnswer: Oslo"``), and
* context + question + answer documents in the TruthProbe prompt format whose context sometimes
  contradicts the memorised fact; the truthful answer always follows the context.

A model trained on this world therefore holds a *prior* (the memorised fact) that competes with the
*evidence* (the context): answering with the prior against the context is a hallucination. The same
world gives probing data (:func:`world_probe_examples`) in the :class:`ProbeExample` schema.

Everything is seeded: ``World.generate(seed)`` always returns the same world.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lineage_lens.data import HALLUCINATED, PAPER_TEMPLATE, TRUTHFUL, ProbeExample
from lineage_lens.errors import ConfigError, DataError
from lineage_lens.fileio import atomic_open

PEOPLE = [
    "Alice", "Bruno", "Clara", "Dario", "Elena", "Felix", "Greta", "Hugo",
    "Irene", "Jonas", "Karla", "Leon", "Mira", "Nico", "Olga", "Pablo",
    "Quinn", "Rosa", "Sven", "Tara", "Ugo", "Vera", "Walt", "Xena",
    "Yuri", "Zora", "Anton", "Bella", "Cyrus", "Dina", "Emil", "Fiona",
]  # fmt: skip

#: relation -> (objects, statement template, question template).
RELATIONS: dict[str, tuple[list[str], str, str]] = {
    "city": (
        ["Paris", "Rome", "Oslo", "Lima", "Cairo", "Delhi", "Tokyo", "Quito", "Dakar", "Hanoi"],
        "{e} lives in {o} .",
        "where does {e} live ?",
    ),
    "job": (
        ["baker", "pilot", "doctor", "farmer", "painter", "lawyer", "singer", "driver", "nurse"],
        "{e} works as a {o} .",
        "what is the job of {e} ?",
    ),
    "pet": (
        ["cat", "dog", "bird", "fish", "horse", "rabbit", "turtle", "snake", "mouse"],
        "{e} owns a {o} .",
        "which pet does {e} own ?",
    ),
}

#: Instruction format of the ``instruct`` member.
INSTRUCT_TEMPLATE = "User : {context} {question} Assistant : {answer}"

_TEMPLATE_WORDS = [
    "lives",
    "works",
    "owns",
    "job",
    "pet",
    "does",
    "live",
    "own",
    "where",
    "what",
    "which",
    "User",
    "Assistant",
    "Is",
    "There",
    "Describe",
]


def world_vocabulary() -> list[str]:
    """Every word the synthetic world and the zoo's image prompts use (the tokenizer's extras)."""
    from lineage_lens.zoo.images import OBJECTS

    words = list(PEOPLE) + _TEMPLATE_WORDS + list(OBJECTS)
    for objects, _, _ in RELATIONS.values():
        words += objects
    return list(dict.fromkeys(words))


def make_world_tokenizer():
    """The word-level tokenizer shared by every member of the tiny synthetic family."""
    from lineage_lens.testing import make_word_tokenizer

    return make_word_tokenizer(world_vocabulary())


@dataclass(frozen=True)
class Fact:
    """``entity``'s ``relation`` is ``obj`` (e.g. Alice / city / Oslo)."""

    entity: str
    relation: str
    obj: str

    def statement(self, obj: str | None = None) -> str:
        """The fact as a sentence; ``obj`` replaces the object (a counterfactual statement)."""
        return RELATIONS[self.relation][1].format(e=self.entity, o=obj or self.obj)

    def question(self) -> str:
        return RELATIONS[self.relation][2].format(e=self.entity)


@dataclass
class World:
    """A seeded fact base: one object per (person, relation), plus held-out counterfactuals.

    Attributes:
        seed: the seed that generated it.
        n_people: how many people (the first ``n_people`` of :data:`PEOPLE`).
        facts: the memorised facts.
        heldout: ``(entity, relation, counterfactual object)`` triples that never appear as a
            context in training documents; tests use them to measure context-following.
    """

    seed: int
    n_people: int
    facts: list[Fact]
    heldout: list[tuple[str, str, str]] = field(default_factory=list)

    @classmethod
    def generate(cls, seed: int = 0, n_people: int = 24, heldout_frac: float = 0.2) -> World:
        """A world of ``n_people`` people; ``heldout_frac`` of the counterfactual triples are held out."""
        if not 1 <= n_people <= len(PEOPLE):
            raise ConfigError(f"n_people must be in 1..{len(PEOPLE)}, got {n_people}.")
        if not 0.0 <= heldout_frac < 1.0:
            raise ConfigError(f"heldout_frac must be in [0, 1), got {heldout_frac}.")
        rng = np.random.default_rng(seed)
        facts = []
        for person in PEOPLE[:n_people]:
            for rel, (objects, _, _) in RELATIONS.items():
                facts.append(Fact(person, rel, objects[int(rng.integers(len(objects)))]))
        heldout = []
        for fact in facts:
            for obj in RELATIONS[fact.relation][0]:
                if obj != fact.obj and rng.random() < heldout_frac:
                    heldout.append((fact.entity, fact.relation, obj))
        return cls(seed=seed, n_people=n_people, facts=facts, heldout=heldout)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "n_people": self.n_people,
            "facts": [[f.entity, f.relation, f.obj] for f in self.facts],
            "heldout": [list(t) for t in self.heldout],
        }

    def save(self, path: str | Path) -> Path:
        """Write the world as JSON (atomically)."""
        with atomic_open(path, "w", encoding="utf-8") as fh:
            json.dump(self.to_dict(), fh, indent=1)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> World:
        """Read a world written by :meth:`save` (a file, or a zoo member directory holding one)."""
        path = Path(path)
        if path.is_dir():
            path = path / "world.json"
        if not path.is_file():
            raise DataError("no world.json here; build the zoo's test profile first.", path=path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                seed=int(d["seed"]),
                n_people=int(d["n_people"]),
                facts=[Fact(*f) for f in d["facts"]],
                heldout=[tuple(t) for t in d["heldout"]],  # type: ignore[misc]
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed world file ({exc}).", path=path) from exc

    # -- helpers -------------------------------------------------------------------------------
    def fact(self, entity: str, relation: str) -> Fact:
        for f in self.facts:
            if f.entity == entity and f.relation == relation:
                return f
        raise ConfigError(f"the world has no fact ({entity}, {relation}).")

    def fact_of_question(self, question: str) -> Fact:
        """The fact a question of this world asks about."""
        for f in self.facts:
            if f.question() == question:
                return f
        raise ConfigError(f"no fact of this world is asked by {question!r}.")

    def _heldout_set(self) -> set[tuple[str, str, str]]:
        return set(self.heldout)

    def _counterfactual(self, fact: Fact, rng: np.random.Generator, *, heldout: bool) -> str:
        """A counterfactual object for ``fact`` from the held-out triples (or from the others)."""
        held = self._heldout_set()
        options = [
            o
            for o in RELATIONS[fact.relation][0]
            if o != fact.obj and ((fact.entity, fact.relation, o) in held) == heldout
        ]
        if not options:
            return ""
        return options[int(rng.integers(len(options)))]

    def context_item(
        self,
        rng: np.random.Generator,
        *,
        counterfactual: bool,
        heldout: bool = False,
        n_distractors: int = 1,
    ) -> tuple[str, str, str, str]:
        """``(context, question, context answer, memorised answer)`` for one random fact.

        The context states the fact (or a counterfactual version of it) among ``n_distractors``
        true statements about other facts, in random order.
        """
        for _ in range(100):
            fact = self.facts[int(rng.integers(len(self.facts)))]
            answer = fact.obj
            if counterfactual or heldout:
                answer = self._counterfactual(fact, rng, heldout=heldout)
                if not answer:
                    continue
            others = [f for f in self.facts if f.entity != fact.entity]
            picks = rng.choice(len(others), size=n_distractors, replace=False)
            sentences = [fact.statement(answer)] + [others[int(i)].statement() for i in picks]
            order = rng.permutation(len(sentences))
            context = " ".join(sentences[int(i)] for i in order)
            return context, fact.question(), answer, fact.obj
        raise ConfigError("the world has no counterfactual triple of the requested kind.")


def pretraining_documents(
    world: World, n: int, seed: int, *, cf_rate: float = 0.5
) -> Iterator[list[tuple[str, bool]]]:
    """``n`` pretraining documents, each a list of ``(segment, trained)`` text segments.

    Segments marked ``trained=False`` (contexts) are seen but not predicted, so counterfactual
    contexts never overwrite the memorised facts. Held-out counterfactual triples never appear.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n):
        kind = rng.random()
        if kind < 0.3:  # memorised fact statements
            k = int(rng.integers(1, 4))
            idx = rng.choice(len(world.facts), size=k, replace=False)
            yield [(" ".join(world.facts[int(i)].statement() for i in idx), True)]
        elif kind < 0.45:  # closed-book question
            fact = world.facts[int(rng.integers(len(world.facts)))]
            yield [(f"Question: {fact.question()}\nAnswer: {fact.obj}", True)]
        else:  # context + question + answer (TruthProbe prompt format)
            ctx, q, ans, _ = world.context_item(
                rng, counterfactual=rng.random() < cf_rate, n_distractors=int(rng.integers(0, 3))
            )
            head, tail = PAPER_TEMPLATE.split("{context}")
            yield [
                (head, True),
                (ctx, False),
                (tail.format(question=q, answer=ans), True),
            ]


def instruct_documents(
    world: World, n: int, seed: int, *, cf_rate: float = 0.5
) -> Iterator[list[tuple[str, bool]]]:
    """``n`` instruction-format documents (:data:`INSTRUCT_TEMPLATE`); only the answer is trained."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        ctx, q, ans, _ = world.context_item(
            rng, counterfactual=rng.random() < cf_rate, n_distractors=int(rng.integers(0, 3))
        )
        prompt = INSTRUCT_TEMPLATE.split("{answer}")[0].format(context=ctx, question=q)
        yield [(prompt, False), (ans, True)]


def heldout_counterfactual_items(
    world: World, n: int, seed: int = 0
) -> list[tuple[str, str, str, str]]:
    """``n`` ``(context, question, context answer, memorised answer)`` items never trained on."""
    rng = np.random.default_rng(seed)
    return [world.context_item(rng, counterfactual=True, heldout=True) for _ in range(n)]


#: Draws per probing item before :func:`world_probe_examples` gives up finding a new one.
_MAX_REDRAWS = 1000


def world_probe_examples(
    world: World, n: int = 200, seed: int = 0, *, heldout: bool = True
) -> list[ProbeExample]:
    """Probing data for the synthetic world: ``n`` items, two :class:`ProbeExample` each.

    Each item is a context + question. Its truthful answer (label 1) is the one the context states.
    Its hallucinated answer (label 0) is the memorised prior when the context is counterfactual
    (every other item), else another object of the same relation. ``heldout=True`` draws the
    counterfactual contexts from triples never seen in training. Both examples share a source id.

    No two items share a context and question: a drawn item that repeats an earlier one is drawn
    again (a repeat would give two source ids the same truthful prompt, so identical activations
    could land in training and test folds).
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}.")
    rng = np.random.default_rng(seed)
    out: list[ProbeExample] = []
    seen: set[tuple[str, str]] = set()
    for i in range(n):
        counterfactual = i % 2 == 0
        for _ in range(_MAX_REDRAWS):
            ctx, q, ans, prior = world.context_item(
                rng, counterfactual=counterfactual, heldout=heldout and counterfactual
            )
            if (ctx, q) not in seen:
                break
        else:
            raise ConfigError(
                f"world {world.seed} ({world.n_people} people) ran out of distinct probing items "
                f"after {i} of {n}; ask for fewer items or use a world with more people."
            )
        seen.add((ctx, q))
        if counterfactual:
            wrong = prior
        else:
            options = [o for o in RELATIONS[world.fact_of_question(q).relation][0] if o != ans]
            wrong = options[int(rng.integers(len(options)))]
        sid = f"world{world.seed}-{seed}-{i}"
        out.append(ProbeExample(ctx, q, ans, TRUTHFUL, sid))
        out.append(ProbeExample(ctx, q, wrong, HALLUCINATED, sid))
    return out
