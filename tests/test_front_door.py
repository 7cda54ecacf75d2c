"""The notebook front door: ``import lineage_lens as ll`` gives the whole workflow, lazily."""

from __future__ import annotations

import subprocess
import sys

import lineage_lens as ll


def test_every_export_resolves_to_its_module():
    eager = {"ConfigError", "DataError", "LineageLensError", "ModelLoadError", "ShapeMismatchError"}
    lazy = set(ll.__all__) - eager - {"__version__"}
    assert eager < set(ll.__all__) and lazy
    for name in lazy:  # each resolves (lazily) to the object its defining module holds
        obj = getattr(ll, name)
        module = sys.modules[obj.__module__]
        assert obj.__module__.startswith("lineage_lens.") and getattr(module, name) is obj, name
    assert set(ll.__all__) <= set(dir(ll))


def test_unknown_name_is_an_attribute_error():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ll.nope  # noqa: B018


def test_import_is_lazy():
    """``import lineage_lens`` (and its errors) must not load TransformerLens or torch."""
    code = (
        "import sys, lineage_lens\n"
        "from lineage_lens.errors import DataError\n"
        "print(sorted(m for m in ('torch', 'transformer_lens') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
