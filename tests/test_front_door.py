"""The notebook front door: ``import lineage_lens as ll`` gives the whole workflow, lazily."""

from __future__ import annotations

import subprocess
import sys

import lineage_lens as ll


def test_every_export_resolves_to_its_module():
    errors = {"ConfigError", "DataError", "LineageLensError", "ModelLoadError"}
    assert set(ll.__all__) == set(ll._EXPORTS) | errors | {"ShapeMismatchError", "__version__"}
    for name, module in ll._EXPORTS.items():
        obj = getattr(ll, name)
        assert obj.__module__.startswith(module), (name, obj.__module__, module)
    assert set(ll._EXPORTS) <= set(dir(ll))


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
