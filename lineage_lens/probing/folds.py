"""Cross-validation folds of the head probes: fold and group checks, identical examples, splits.

Every solver fits exactly the folds :func:`cv_splits` gives. ``"newton"`` and ``"adamw"`` use
``StratifiedGroupKFold`` by source row whenever groups are known (so the two answers of one
HaluEval row never sit on both sides of a split) and ``StratifiedKFold`` otherwise;
``"truthprobe"`` uses the authors' unstratified, ungrouped ``KFold``. Identical examples -- the
same label and the same ``example_keys``, or without keys exactly the same activations
(:func:`identical_pairs`) -- are joined into one group with everything their groups hold
(:func:`join_identical`), so copies never sit on both sides of a split; copies across groups are
reported with ``warnings.warn`` (:func:`warn_identical`).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import KFold, StratifiedGroupKFold, StratifiedKFold
from torch import Tensor

from lineage_lens.errors import ConfigError, DataError, ShapeMismatchError

log = logging.getLogger(__name__)


def check_folds(labels: np.ndarray, folds: int, *, stratified: bool = True) -> None:
    """Check that ``labels`` ``[N]`` can be split into ``folds`` folds.

    ``folds`` must be an integer ``>= 2`` (:class:`~lineage_lens.errors.ConfigError`); both
    classes must be present, with at least ``folds`` examples of each class when the folds are
    ``stratified``, else at least ``folds`` examples (:class:`~lineage_lens.errors.DataError`)."""
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ConfigError(f"folds must be an integer >= 2, got {folds!r}.")
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    if min(n_pos, n_neg) == 0:
        raise DataError(
            f"labels hold only one class ({n_pos} truthful, {n_neg} hallucinated); a probe needs "
            "both. Add examples of the missing label."
        )
    if not stratified:
        if len(labels) < folds:
            raise DataError(
                f"{folds}-fold cross-validation needs at least {folds} examples; got "
                f"{len(labels)}. Use more examples or fewer folds."
            )
        return
    if min(n_pos, n_neg) < folds:
        raise DataError(
            f"{folds}-fold cross-validation needs at least {folds} examples of each class; got "
            f"{n_pos} truthful and {n_neg} hallucinated. Use more examples or fewer folds."
        )


def as_groups(groups: Any, n: int, folds: int) -> np.ndarray | None:
    """Validated group labels ``[N]`` (or ``None``); at least ``folds`` distinct groups."""
    if groups is None:
        return None
    if isinstance(groups, Tensor):
        groups = groups.detach().cpu().numpy()
    arr = np.asarray(groups)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeMismatchError(
            "groups vs activations",
            (n,),
            tuple(arr.shape),
            "groups (e.g. source_id) need one entry per example (axis 0 of acts).",
        )
    n_groups = len(np.unique(arr))
    if n_groups < folds:
        raise ConfigError(
            f"{folds}-fold grouped cross-validation needs at least {folds} groups; the "
            f"{n} examples fall into {n_groups} group(s) (source_id). Use fewer folds, more "
            "source rows, or groups=None if the examples really are independent."
        )
    return arr


def _duplicate_rows(acts: Any, labels: np.ndarray) -> list[tuple[int, int]]:
    """Pairs ``(first, later)`` of examples with the same label whose activations are exactly
    equal in every head.

    A fingerprint of three heads finds candidates (cheap, one pass over ``3 * d`` values per
    example); candidates are confirmed on the whole row."""
    n = int(acts.shape[0])
    flat = acts.reshape(n, -1, acts.shape[-1])
    g = flat.shape[1]
    probe_heads = sorted({0, g // 2, g - 1})
    sample = flat[:, probe_heads, :]
    sample = sample.detach().cpu().numpy() if isinstance(sample, Tensor) else np.asarray(sample)
    sample = np.ascontiguousarray(sample.reshape(n, -1))
    first: dict[bytes, list[int]] = {}
    pairs: list[tuple[int, int]] = []
    for i in range(n):
        key = int(labels[i]).to_bytes(8, "little", signed=True) + sample[i].tobytes()
        for j in first.get(key, []):
            a, b = flat[j], flat[i]
            same = bool(torch.equal(a, b)) if isinstance(a, Tensor) else np.array_equal(a, b)
            if same:
                pairs.append((j, i))
                break
        else:
            first.setdefault(key, []).append(i)
    return pairs


def identical_pairs(acts: Any, labels: np.ndarray, keys: Any) -> list[tuple[int, int]]:
    """Pairs ``(first, later)`` of identical examples, both with the same label: with ``keys``
    (what each example is: prompt text, image) those with the same key, else -- the activations
    being all there is to go by -- those with exactly the same activations
    (:func:`_duplicate_rows`).

    With keys, examples of different keys stay apart even where their activations are equal (a
    model that cannot tell prompts apart, e.g. one whose activations are constant); that is
    logged."""
    if keys is None:
        return _duplicate_rows(acts, labels)
    keys = list(keys)
    if len(keys) != len(labels):
        raise ShapeMismatchError(
            "example_keys vs activations",
            (len(labels),),
            (len(keys),),
            "example_keys need one entry per example (axis 0 of acts).",
        )
    pairs: list[tuple[int, int]] = []
    first: dict[tuple[Any, int], int] = {}
    for i, key in enumerate(keys):
        j = first.setdefault((key, int(labels[i])), i)
        if j != i:
            pairs.append((j, i))
    alike = [(a, b) for a, b in _duplicate_rows(acts, labels) if keys[a] != keys[b]]
    if alike:
        log.warning(
            "%d examples have exactly the activations of an example with another prompt (e.g. "
            "examples %d and %d): the model does not tell them apart",
            len(alike),
            *alike[0],
        )
    return pairs


def join_identical(
    groups: np.ndarray | None, pairs: list[tuple[int, int]], n: int
) -> np.ndarray | None:
    """The groups with identical examples joined: the connected components of "same group" and
    "identical" (a union of both), each labelled by the group of its first example (or, without
    ``groups``, that example's index). Unchanged when no pair crosses two groups."""
    if groups is not None:
        pairs = [(a, b) for a, b in pairs if groups[a] != groups[b]]
    if not pairs:
        return groups
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    src, dst = [a for a, _ in pairs], [b for _, b in pairs]
    if groups is not None:  # link every example to the first example of its group
        codes, _ = pd.factorize(groups)
        _, first = np.unique(codes, return_index=True)  # codes are 0, 1, ...: first[code]
        src += list(range(n))
        dst += first[codes].tolist()
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    _, head = np.unique(comp, return_index=True)  # the first example of each component
    rep = head[comp]
    return np.asarray(groups)[rep] if groups is not None else rep


def warn_identical(pairs: list[tuple[int, int]], groups: np.ndarray | None) -> None:
    """``warnings.warn`` (visible in notebooks) about identical examples in different groups:
    they are kept in one fold, but they still weigh more than once in training."""
    crossing = pairs if groups is None else [(a, b) for a, b in pairs if groups[a] != groups[b]]
    if not crossing:
        if pairs:
            log.info("%d duplicate examples, each within its own group (one fold)", len(pairs))
        return
    j, i = crossing[0]
    where = (
        "another example"
        if groups is None
        else f"an example in another group (groups {str(groups[j])!r} and {str(groups[i])!r})"
    )
    warnings.warn(
        f"{len(crossing)} examples duplicate {where} exactly: the same label and the same "
        f"prompt or activations (e.g. examples {j} and {i}). Each set of copies is kept in one "
        "cross-validation fold, so they cannot inflate the Truth Scores, but each copy still "
        "weighs as one more example in training; drop the duplicates.",
        UserWarning,
        stacklevel=3,
    )


def cv_splits(
    labels: np.ndarray, groups: np.ndarray | None, *, folds: int, solver: str, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The cross-validation folds: the authors' unstratified ``KFold`` for ``"truthprobe"`` (over
    ``groups`` of identical examples when there are any), ``StratifiedGroupKFold`` when groups
    are known, else ``StratifiedKFold`` (all shuffled with ``random_state=seed``). Every solver
    and backend fits exactly these folds."""
    n = len(labels)
    if solver == "truthprobe":
        cv_k = KFold(folds, shuffle=True, random_state=seed)
        if groups is None:
            return list(cv_k.split(np.zeros(n)))
        # KFold over the groups (identical examples) in order of first appearance: with every
        # group a single example this is the authors' KFold over the examples, index for index
        codes, uniques = pd.factorize(groups)
        return [
            (np.flatnonzero(np.isin(codes, tr)), np.flatnonzero(np.isin(codes, te)))
            for tr, te in cv_k.split(np.zeros(len(uniques)))
        ]
    if groups is None:
        cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
        return list(cv.split(np.zeros(n), labels))
    cv_g = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    return list(cv_g.split(np.zeros(n), labels, groups))
