"""Where a model's weights live: device maps and Accelerate's CPU/disk offload.

:func:`lineage_lens.models.load_model` passes ``device_map`` (and ``max_memory``,
``offload_folder``) to Hugging Face through TransformerLens, which spreads a model larger than one
device over several, or offloads layers to CPU memory or disk. An offloaded layer's parameters
sit on the ``meta`` device between forwards; Accelerate's hook on the module loads their values
from a weights map before each forward. Hooks (capture, gating) see real activations either way;
code that reads or edits a weight (W_O folding) goes through :class:`WeightSlot`, which reads and
replaces the values where they really are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lineage_lens.errors import ConfigError

log = logging.getLogger(__name__)


def offload_map(module: nn.Module) -> Mapping[str, Tensor] | None:
    """The weights map Accelerate loads ``module``'s offloaded parameters from, else ``None``."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None or not getattr(hook, "offload", False):
        return None
    return getattr(hook, "weights_map", None)


def device_map_of(model: Any) -> dict[str, Any] | None:
    """The Hugging Face ``hf_device_map`` of a bridge loaded with a device map, else ``None``."""
    hf = getattr(model, "original_model", None)
    return getattr(hf, "hf_device_map", None)


def is_offloaded(model: Any) -> bool:
    """Whether any of the model's layers are offloaded to CPU memory or disk."""
    dm = device_map_of(model) or {}
    return any(str(v) in ("cpu", "disk") for v in dm.values()) and len(set(dm.values())) > 1


@dataclass
class WeightSlot:
    """One parameter of a module (``name``, default ``weight``), resident or offloaded.

    :meth:`read` gives its real values; :meth:`write` replaces them (in place for a resident
    parameter; in Accelerate's weights map for an offloaded one, so that the next forward loads
    them); :meth:`release` forgets an offloaded replacement (the values are read from their
    offload folder again).
    """

    module: nn.Module
    name: str = "weight"

    @property
    def parameter(self) -> Tensor:
        return getattr(self.module, self.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.parameter.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.parameter.dtype

    def _offloaded(self) -> tuple[Mapping[str, Tensor], str] | None:
        wmap = offload_map(self.module)
        if wmap is None or self.parameter.device.type != "meta":
            return None
        return wmap, f"{getattr(wmap, 'prefix', '')}{self.name}"

    def read(self) -> Tensor:
        """The parameter's values (a copy for an offloaded parameter)."""
        off = self._offloaded()
        if off is None:
            return self.parameter.detach()
        wmap, _ = off
        return wmap[self.name].detach().clone()

    def write(self, value: Tensor) -> None:
        """Replace the parameter's values by ``value`` (same shape)."""
        off = self._offloaded()
        with torch.no_grad():
            if off is None:
                self.parameter.copy_(value)
                return
            wmap, key = off
            store = getattr(wmap, "dataset", wmap)
            state = getattr(store, "state_dict", None)
            if not isinstance(state, dict):
                raise ConfigError(
                    f"cannot replace an offloaded weight stored in {type(store).__name__}; "
                    "load the model without offloading (or gate with hooks, placement='z')."
                )
            state[key] = value.detach().clone().to(self.dtype)

    def release(self, original: Tensor) -> None:
        """Put back ``original`` (what :meth:`read` gave before any write): a resident parameter
        is copied back; an offloaded one drops its replacement and is read from disk again
        (its map keeps ``original`` if the values lived in memory already)."""
        off = self._offloaded()
        if off is None:
            with torch.no_grad():
                self.parameter.copy_(original)
            return
        wmap, key = off
        store = getattr(wmap, "dataset", wmap)
        state = getattr(store, "state_dict", None)
        index = getattr(store, "index", {})
        if isinstance(state, dict):
            if key in index:
                state.pop(key, None)  # on disk: read from the offload folder again
            else:
                state[key] = original
