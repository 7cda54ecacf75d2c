"""TransformerBridge architecture adapters that TransformerLens 4.3 lacks, and their registration.

* ``Qwen2_5OmniThinkerForConditionalGeneration`` -- Qwen2.5-Omni's thinker (Qwen2.5 decoder with
  mRoPE, vision and audio towers); a full ``Qwen2_5OmniForConditionalGeneration`` checkpoint boots
  as its thinker (:mod:`lineage_lens.adapters.qwen2_5_omni`).
* ``InternVLForConditionalGeneration`` -- HF-native InternVL (:mod:`lineage_lens.adapters.internvl`).

:func:`register_adapters` adds them to TransformerLens' adapter factory; :func:`lineage_lens.models.
load_model` calls it before every boot, so ``load_model(directory)`` boots these checkpoints like
any architecture TransformerLens supports. Tiny random checkpoints of both families, for tests and
examples, come from :mod:`lineage_lens.adapters.tiny`.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from lineage_lens.adapters.internvl import ARCHITECTURE as INTERNVL_ARCHITECTURE
from lineage_lens.adapters.internvl import InternVLAdapter
from lineage_lens.adapters.qwen2_5_omni import (
    FULL_ARCHITECTURE as OMNI_FULL_ARCHITECTURE,
)
from lineage_lens.adapters.qwen2_5_omni import (
    THINKER_ARCHITECTURE as OMNI_THINKER_ARCHITECTURE,
)
from lineage_lens.adapters.qwen2_5_omni import (
    Qwen25OmniThinkerAdapter,
    thinker_config_of,
)

log = logging.getLogger(__name__)

__all__ = [
    "ADAPTERS",
    "InternVLAdapter",
    "Qwen25OmniThinkerAdapter",
    "register_adapters",
]

#: HF architecture class name -> the lineage-lens adapter that boots it.
ADAPTERS: dict[str, type] = {
    OMNI_THINKER_ARCHITECTURE: Qwen25OmniThinkerAdapter,
    INTERNVL_ARCHITECTURE: InternVLAdapter,
}

_PATCH_MARK = "_lineage_lens_omni_thinker"


def _patch_autoconfig() -> None:
    """Make TransformerLens' boot read a full Qwen2.5-Omni config as its thinker config.

    ``boot_transformers`` derives the bridge config from the checkpoint's top-level config, which
    for a full Omni checkpoint holds only sub-configs (thinker, talker, token2wav); the thinker is
    the language model lineage-lens studies. The wrapper leaves every other config unchanged.
    """
    from transformer_lens.utilities import hf_utils

    original = hf_utils.autoconfig_with_remote_post_init_compat
    if getattr(original, _PATCH_MARK, False):
        return

    @functools.wraps(original)
    def autoconfig(*args: Any, **kwargs: Any) -> Any:
        config = original(*args, **kwargs)
        thinker = thinker_config_of(config)
        if thinker is not config:
            log.info("Booting the thinker of a full Qwen2.5-Omni checkpoint (talker unread).")
        return thinker

    setattr(autoconfig, _PATCH_MARK, True)
    hf_utils.autoconfig_with_remote_post_init_compat = autoconfig


@functools.cache
def register_adapters() -> None:
    """Register the lineage-lens adapters with TransformerLens (idempotent; cheap to call again).

    Adds each architecture to TransformerLens' adapter factory (its runtime registry and the
    table ``boot_transformers`` matches a config's ``architectures`` against), loads them with
    ``AutoModelForImageTextToText`` like TransformerLens' own vision-language adapters, lets a
    full Qwen2.5-Omni checkpoint boot as its thinker, and registers the families' image-input
    builders with :data:`lineage_lens.images.IMAGE_INPUT_BUILDERS` where none is registered yet.
    """
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.utilities import architectures

    for name, adapter in ADAPTERS.items():
        factory.SUPPORTED_ARCHITECTURES.setdefault(name, adapter)
        factory.ArchitectureAdapterFactory._adapters.setdefault(name, adapter)
        architectures.MULTIMODAL_ARCHITECTURES.add(name)
    architectures.MULTIMODAL_ARCHITECTURES.add(OMNI_FULL_ARCHITECTURE)
    _patch_autoconfig()
    # Imported here, not at module import: lineage_lens.images imports the zoo, which loads models.
    from lineage_lens import images
    from lineage_lens.adapters.image_inputs import IMAGE_INPUTS

    for model_type, builder in IMAGE_INPUTS.items():
        images.IMAGE_INPUT_BUILDERS.setdefault(model_type, builder)
    log.debug("lineage-lens adapters registered: %s", ", ".join(ADAPTERS))
