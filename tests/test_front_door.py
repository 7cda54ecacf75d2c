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


def test_all_and_the_type_checking_imports_mirror_the_lazy_table():
    """``_EXPORTS`` is the one list of public names: ``__all__`` is built from it, and the
    ``if TYPE_CHECKING`` imports (for type checkers and IDEs) import exactly its names, each from
    its module, as explicit re-exports (``X as X``)."""
    import ast
    from pathlib import Path

    assert ll.__all__ == sorted(["__version__", *ll._EXPORTS])
    tree = ast.parse(Path(ll.__file__).read_text(encoding="utf-8"))
    (block,) = [
        n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"
    ]
    mirrored = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom), ast.unparse(node)
        for alias in node.names:
            assert alias.asname == alias.name, ast.unparse(node)
            mirrored[alias.name] = node.module
    assert mirrored == ll._EXPORTS
