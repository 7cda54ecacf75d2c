"""The registry of supported architectures: ``model_type`` -> :class:`Family`.

A family module of :mod:`lineage_lens.families` declares its :class:`Family` records and registers
each with one line (``LLAVA = register(Family(...))``); :mod:`lineage_lens.families` imports every
family module, so importing it fills :data:`REGISTRY`. Registering a family also registers its
image-input builder with :mod:`lineage_lens.images` (so :func:`lineage_lens.images.image_inputs`
finds it); :func:`register_adapters` (which :func:`lineage_lens.models.load_model` calls before
every boot) adds the families' own TransformerBridge adapters to TransformerLens.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lineage_lens.errors import ConfigError
from lineage_lens.families.tiny import TinyBuilder
from lineage_lens.images import FamilyImageInputs, hf_model, register_image_inputs

log = logging.getLogger(__name__)

#: Config fields that name a vision tower, for model types no family registers (``vision_tower``
#: and ``visual``: remote-code LLaVA and Qwen-VL configs).
VISION_CONFIG_KEYS = ("vision_config", "vision_tower", "visual")


@dataclass(frozen=True)
class Family:
    """One supported architecture.

    Attributes:
        name: its short name, also the architecture of
            :func:`lineage_lens.testing.make_tiny_model` (usually its main ``model_type``).
        model_types: the Hugging Face config ``model_type`` values it covers (unique across the
            registry).
        architecture: the Hugging Face class of its checkpoints (``config.architectures[0]``).
        multimodal: whether it takes images (then ``image_inputs`` is set).
        image_inputs: its :class:`~lineage_lens.images.FamilyImageInputs` subclass (built by its
            ``from_model`` classmethod), ``None`` for a language model.
        adapter: the TransformerBridge ``ArchitectureAdapter`` that boots ``architecture``, only
            where TransformerLens has none (:func:`register_adapters` adds it).
        on_register: extra one-time TransformerLens set-up :func:`register_adapters` runs with the
            adapter (e.g. booting a whole Qwen2.5-Omni checkpoint as its thinker).
        tiny: its tiny-config builder (:class:`~lineage_lens.families.tiny.TinyBuilder`), which
            :func:`lineage_lens.testing.make_tiny_model` and the conformance test use.
    """

    name: str
    model_types: tuple[str, ...]
    architecture: str
    multimodal: bool = False
    image_inputs: type[FamilyImageInputs] | None = None
    adapter: type | None = None
    on_register: Callable[[], None] | None = None
    tiny: TinyBuilder | None = None

    def __post_init__(self) -> None:
        if not self.model_types:
            raise ConfigError(f"family {self.name!r} lists no model_type.")
        if self.multimodal != (self.image_inputs is not None):
            raise ConfigError(
                f"family {self.name!r}: a multimodal family needs its image_inputs class, and "
                "only a multimodal family has one."
            )

    def __str__(self) -> str:
        return self.name


#: Every registered family, in registration order.
FAMILIES: list[Family] = []
#: ``model_type`` -> its family.
REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    """Add ``family`` to the registry (and its image inputs to :mod:`lineage_lens.images`);
    return it. A name or ``model_type`` another family holds is a
    :class:`~lineage_lens.errors.ConfigError`."""
    if any(f.name == family.name for f in FAMILIES):
        raise ConfigError(f"a family named {family.name!r} is registered already.")
    taken = [t for t in family.model_types if t in REGISTRY]
    if taken or len(set(family.model_types)) != len(family.model_types):
        raise ConfigError(
            f"family {family.name!r}: model_type(s) {taken or list(family.model_types)} belong "
            "to another family or repeat; a model_type belongs to one family."
        )
    if family.image_inputs is not None:
        register_image_inputs(family.model_types, family.image_inputs.from_model)
    FAMILIES.append(family)
    REGISTRY.update(dict.fromkeys(family.model_types, family))
    return family


def family_by_name(name: str) -> Family:
    """The registered family called ``name`` (a :class:`~lineage_lens.errors.ConfigError` naming
    the registered ones otherwise)."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise ConfigError(
        f"unknown family {name!r}; registered: {', '.join(f.name for f in FAMILIES)}."
    )


def _config(model: Any) -> Any:
    """The config of a bridge, Hugging Face model, Hugging Face config or config dict."""
    if isinstance(model, Mapping):
        return model
    cfg = getattr(hf_model(model), "config", None)
    return cfg if cfg is not None else model


def _field(cfg: Any, name: str) -> Any:
    return cfg.get(name) if isinstance(cfg, Mapping) else getattr(cfg, name, None)


def family_of(model: Any) -> Family | None:
    """The registered family of ``model`` (a bridge, Hugging Face model, Hugging Face config or
    ``config.json`` dict) by its ``model_type``; ``None`` for an unregistered type."""
    return REGISTRY.get(_field(_config(model), "model_type") or "")


def is_multimodal(model: Any) -> bool:
    """Whether ``model`` is a vision-language model: a loaded bridge, a Hugging Face model, its
    config or a ``config.json`` dict (for a model on disk see
    :func:`lineage_lens.models.is_multimodal_source`). Its registered family says; a model type
    no family registers is multimodal when its config names a vision tower
    (:data:`VISION_CONFIG_KEYS`)."""
    cfg = _config(model)
    family = family_of(cfg)
    if family is not None:
        return family.multimodal
    return any(_field(cfg, key) is not None for key in VISION_CONFIG_KEYS)


def adapters() -> dict[str, type]:
    """HF architecture class name -> the lineage-lens adapter that boots it (the registered
    families whose architecture TransformerLens has no adapter for)."""
    return {f.architecture: f.adapter for f in FAMILIES if f.adapter is not None}


_REGISTERED: set[str] = set()


def register_adapters() -> None:
    """Register the families' own adapters with TransformerLens (idempotent; cheap to call again).

    Adds each architecture to TransformerLens' adapter factory (its runtime registry and the
    table ``boot_transformers`` matches a config's ``architectures`` against), loads the
    multimodal ones with ``AutoModelForImageTextToText`` like TransformerLens' own vision-language
    adapters (its ``MULTIMODAL_ARCHITECTURES``), and runs each family's ``on_register`` once.
    """
    pending = [f for f in FAMILIES if f.adapter is not None and f.name not in _REGISTERED]
    if not pending:
        return
    from transformer_lens.factories import architecture_adapter_factory as factory
    from transformer_lens.utilities import architectures

    for family in pending:
        factory.SUPPORTED_ARCHITECTURES.setdefault(family.architecture, family.adapter)
        factory.ArchitectureAdapterFactory._adapters.setdefault(family.architecture, family.adapter)
        if family.multimodal:
            architectures.MULTIMODAL_ARCHITECTURES.add(family.architecture)
        if family.on_register is not None:
            family.on_register()
        _REGISTERED.add(family.name)
    log.debug("lineage-lens adapters registered: %s", ", ".join(f.architecture for f in pending))
