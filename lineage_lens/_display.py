"""How result objects show themselves: a one-line ``repr`` and a small HTML table for Jupyter.

Every result class a user meets lists a few ``(name, text)`` fields (what it is: shape, model,
``n``, the metric and a couple of numbers) in ``_repr_fields``; :class:`ShortRepr` turns them into
``Class(name=text, ...)`` of at most :data:`MAX_REPR` characters and into an HTML table. Arrays,
frames and per-example lists never appear in either.
"""

from __future__ import annotations

import html
from typing import Any

#: Longest ``repr`` of a result object, in characters.
MAX_REPR = 500
#: Longest text of one field (labels such as a model path are shortened with an ellipsis).
MAX_FIELD = 80


def shorten(text: str, width: int = MAX_FIELD) -> str:
    """``text`` cut to ``width`` characters, with ``...`` where it was cut."""
    return text if len(text) <= width else text[: width - 3] + "..."


def label(value: Any) -> str:
    """A label (model name, dataset, task) for a field: quoted and shortened, ``'?'`` if empty."""
    return repr(shorten(str(value) if value else "?", MAX_FIELD - 2))


def number(value: Any) -> str:
    """A number for a field: 4 significant digits for floats, ``None`` as is."""
    if value is None:
        return "None"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ShortRepr:
    """Mixin: ``__repr__`` and ``_repr_html_`` from the class's ``_repr_fields()``."""

    def _repr_fields(self) -> list[tuple[str, str]]:
        """``(name, text)`` pairs, already formatted (see :func:`label`, :func:`number`)."""
        raise NotImplementedError(f"{type(self).__name__} must define _repr_fields")

    def _html_rows(self) -> list[tuple[str, str]]:
        """Rows of the HTML table; the repr fields unless a class shows more."""
        return self._repr_fields()

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={shorten(text)}" for name, text in self._repr_fields())
        text = f"{type(self).__name__}({body})"
        return text if len(text) <= MAX_REPR else text[: MAX_REPR - 4] + "...)"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(name)}</th>"
            f"<td style='text-align:left'>{html.escape(text)}</td></tr>"
            for name, text in self._html_rows()
        )
        return f"<table><caption><b>{html.escape(type(self).__name__)}</b></caption>{rows}</table>"
