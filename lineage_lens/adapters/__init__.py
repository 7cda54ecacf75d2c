"""The TransformerBridge adapters lineage-lens adds where TransformerLens 4.3 has none, kept under
their old import path: they live with their families in :mod:`lineage_lens.families`
(:mod:`~lineage_lens.families.qwen2_5_omni`: Qwen2.5-Omni's thinker, a full checkpoint booting as
its thinker; :mod:`~lineage_lens.families.internvl`: HF-native InternVL), and
:func:`register_adapters` (:func:`lineage_lens.families.register_adapters`, which
:func:`lineage_lens.models.load_model` calls before every boot) registers every family's adapter.
Tiny checkpoints of both: :mod:`lineage_lens.adapters.tiny`.
"""

from __future__ import annotations

from lineage_lens.families import adapters, register_adapters
from lineage_lens.families.internvl import InternVLAdapter
from lineage_lens.families.qwen2_5_omni import Qwen25OmniThinkerAdapter

__all__ = [
    "ADAPTERS",
    "InternVLAdapter",
    "Qwen25OmniThinkerAdapter",
    "register_adapters",
]

#: HF architecture class name -> the lineage-lens adapter that boots it (every registered family
#: with its own adapter; :func:`lineage_lens.families.adapters`).
ADAPTERS: dict[str, type] = adapters()
