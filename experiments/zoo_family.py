"""The zoo lineage shared by the zoo-based experiments: members, activations and Truth Scores.

Every profile uses the tiny synthetic family of the zoo (``base`` -> ``instruct``, ``base`` ->
``vlm``, and the unrelated same-shape ``control``); the profile sets how many probing items are
drawn from the base's world (:func:`lineage_lens.zoo.world_probe_examples`). All members see the
same examples in the same order (the paper's prompt template), so activations can be compared
head by head (CKA) and Truth Scores correlated. Results are cached per process, so
``experiments.run_all`` builds and scores the family once.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from lineage_lens.activations import HeadActivations
from lineage_lens.capture import collect_head_activations
from lineage_lens.models import load_model
from lineage_lens.probing import fit_truth_scores
from lineage_lens.scores import TruthScores
from lineage_lens.zoo import Zoo, build_zoo, default_zoo_dir, world_probe_examples

log = logging.getLogger(__name__)

#: The tiny family in report order: the ancestor first, the unrelated control last.
MEMBERS = ("base", "instruct", "vlm", "control")
ANCESTOR = "base"
DESCENDANTS = ("instruct", "vlm")
CONTROL = "control"

#: Probing items (two examples each: truthful and hallucinated answer) per profile.
N_ITEMS = {"test": 150, "demo": 500, "full": 1000}


@dataclass
class ZooLineage:
    """The built tiny family with each member's head activations and Truth Scores."""

    zoo: Zoo
    acts: dict[str, HeadActivations]
    scores: dict[str, TruthScores]
    n_items: int

    def path(self, name: str) -> Path:
        return self.zoo.path(name)


@functools.lru_cache(maxsize=4)
def zoo_lineage(profile: str, zoo_dir: str | None = None) -> ZooLineage:
    """Build (or reuse) the tiny family under ``zoo_dir`` (default the zoo cache), collect every
    member's ``hook_z`` at the answer's last token on the same world probing examples and fit
    5-fold Truth Scores (seed 0)."""
    zoo = build_zoo(Path(zoo_dir) if zoo_dir else default_zoo_dir(), "test", members=list(MEMBERS))
    n = N_ITEMS[profile]
    examples = world_probe_examples(zoo.world(ANCESTOR), n=n, seed=0)
    acts: dict[str, HeadActivations] = {}
    scores: dict[str, TruthScores] = {}
    for name in MEMBERS:
        model = load_model(zoo.path(name))
        acts[name] = collect_head_activations(
            model, examples, batch_size=32, dtype=torch.float32, progress=False
        )
        scores[name] = fit_truth_scores(
            acts[name], folds=5, seed=0, model=name, dataset="zoo world 0", progress=False
        )
        del model
        log.info("zoo %s: mean Truth Score %.3f", name, scores[name].accuracy.mean())
    return ZooLineage(zoo, acts, scores, n)
