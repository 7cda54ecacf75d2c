"""One exception hierarchy for lineage-lens.

Every error raised on purpose by the library is a :class:`LineageLensError`. Messages say what was
wrong and how to fix it: data errors name the file and line, shape errors name both shapes.
"""

from __future__ import annotations

import numbers
from pathlib import Path


class LineageLensError(Exception):
    """Base class of every error lineage-lens raises on purpose."""


class ConfigError(LineageLensError, ValueError):
    """A parameter or option has an invalid value (unknown name, non-finite number, ...)."""


class DataError(LineageLensError, ValueError):
    """Input data is malformed. Carries the file and (1-based) line when they are known."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        where = ""
        if self.path is not None:
            where = f"{self.path}:{line}: " if line is not None else f"{self.path}: "
        super().__init__(where + message)


class ShapeMismatchError(LineageLensError, ValueError):
    """Two objects that must share a shape (scores and a model, two models, ...) do not."""

    def __init__(self, what: str, expected: object, got: object, hint: str = ""):
        self.expected = expected
        self.got = got
        msg = f"{what}: expected shape {expected}, got {got}."
        if hint:
            msg += " " + hint
        super().__init__(msg)


class ModelLoadError(LineageLensError, OSError):
    """A model could not be found or loaded; the message says what to install or where to look."""


class OutputError(LineageLensError, OSError):
    """An output file cannot be written (a directory is in the way, no permission, disk full).

    Raised before anything is written where possible; otherwise no partial file is left behind.
    """


class ModelOutputError(LineageLensError, ArithmeticError):
    """A model's forward returned logits no result can be read from: NaN or inf, or every
    vocabulary logit of a row equal (a gate too strong for the dtype makes the final norm output
    zeros). The message names the prompt, what was wrong and how to fix it."""


#: The largest seed: numpy's legacy ``RandomState`` (and scikit-learn's ``random_state``) take
#: seeds from 0 to ``2**32 - 1``; every seed lineage-lens takes is held to that range.
MAX_SEED = 2**32 - 1


def check_count(value: object, name: str, *, optional: bool = False) -> int | None:
    """``value`` as an ``int`` if it is an integer >= 1 (or ``None`` when ``optional``), else a
    :class:`ConfigError` naming the option ``name`` (a limit, a batch size, a count)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """``seed`` as an ``int`` if it is an integer from 0 to :data:`MAX_SEED`, else a
    :class:`ConfigError` naming ``name`` (numpy would raise a bare ``ValueError`` later)."""
    if (
        isinstance(seed, bool)
        or not isinstance(seed, numbers.Integral)
        or not (0 <= int(seed) <= MAX_SEED)
    ):
        raise ConfigError(
            f"{name} must be an integer from 0 to {MAX_SEED} (2**32 - 1, numpy's seed range), "
            f"got {seed!r}."
        )
    return int(seed)
