"""Export a run to the Hugging Face ecosystem: a merged model directory, or the updated base plus a peft adapter.

merged  OUT/                       config.json, model*.safetensors, tokenizer files: the ZO-updated base with the LoRA
                                   update merged in (peft merge_and_unload). Loads with
                                   AutoModelForCausalLM.from_pretrained(OUT), no hyft needed.
peft    OUT/base/                  the ZO-updated base as a plain HF model directory (with the tokenizer)
        OUT/adapter/               the adapter in peft's layout; adapter_config.json's base_model_name_or_path is the
                                   absolute path of OUT/base, so AutoPeftModelForCausalLM / PeftModel.from_pretrained
                                   and `lm_eval --model hf --model_args pretrained=OUT/base,peft=OUT/adapter` work.

Both write to a temporary sibling directory first and rename it into place when complete, with a model card
(OUT/README.md, model_card.py) saying how the weights were made and how to load them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from hyft.checkpoint import CheckpointError, check_safetensors, find_checkpoint, load_base_model, verify
from hyft.errors import ConfigError
from hyft.model_card import write_card


def _prepare_out(out: Path, overwrite: bool) -> Path:
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"{out}: exists and is not empty; pass --overwrite or choose another directory")
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _finish(tmp: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.rename(tmp, out)


@contextlib.contextmanager
def staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of `out` to write into; renamed to `out` on success, removed on failure."""
    tmp = _prepare_out(out, overwrite)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _finish(tmp, out)


def save_model_dir(model, tok, out: Path) -> None:
    model.save_pretrained(str(out))
    tok.save_pretrained(str(out))
    if not list(out.glob("*.safetensors")):
        raise CheckpointError(f"{out}: transformers wrote no safetensors files")


def adapter_info(c: Path) -> dict[str, Any] | None:
    path = c / "adapter" / "adapter_config.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None


def export(
    run_dir: str | Path,
    *,
    merged: str | Path | None = None,
    peft_out: str | Path | None = None,
    original: str | None = None,
    device: str = "cpu",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write the exports asked for from the latest complete checkpoint of `run_dir` (or a checkpoint directory)."""
    from hyft.config import load_config

    if merged is None and peft_out is None:
        raise ConfigError("export: give --merged OUT and/or --peft OUT")
    c = find_checkpoint(run_dir)
    verify(c)
    cfg = load_config(c / "config.yaml")
    adapter = adapter_info(c)
    if merged is not None and adapter is not None and adapter.get("peft_type") in ("PREFIX_TUNING", "PROMPT_TUNING"):
        raise ConfigError(
            f"--merged: a {adapter['peft_type'].lower().replace('_', ' ')} module adds virtual tokens, not weight "
            "deltas, so it cannot be merged into the model; use --peft OUT"
        )
    if adapter is not None:
        check_safetensors(c / "adapter" / "adapter_model.safetensors")
    model_cfg = replace(cfg.model, device=device, gradient_checkpointing=False)
    model, tok = load_base_model(c, model_cfg, original=original)
    model.eval()
    report: dict[str, Any] = {"checkpoint": str(c)}
    if peft_out is not None:
        out = Path(peft_out)
        with staged(out, overwrite) as tmp:
            save_model_dir(model, tok, tmp / "base")
            if adapter is not None:
                shutil.copytree(c / "adapter", tmp / "adapter")
                adapter["base_model_name_or_path"] = str((out / "base").resolve())
                (tmp / "adapter" / "adapter_config.json").write_text(json.dumps(adapter, indent=2), encoding="utf-8")
            write_card(tmp, c, cfg, kind="peft", adapter=adapter)
        report["peft"] = {"base": str(out / "base"), "adapter": str(out / "adapter") if adapter else None}
    if merged is not None:
        out = Path(merged)
        with staged(out, overwrite) as tmp:
            if adapter is not None:
                from peft import PeftModel

                model = PeftModel.from_pretrained(model, str(c / "adapter")).merge_and_unload()
            save_model_dir(model, tok, tmp)
            write_card(tmp, c, cfg, kind="merged", adapter=adapter)
        report["merged"] = str(out)
    return report
