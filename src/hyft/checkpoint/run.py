"""A whole run's checkpoint: what `Trainer` saves and restores (base tensors, adapter, tokenizer, optimizer,
scheduler and trainer state, ledger, config), and loading a run's model from a checkpoint or from its source.

The layout of OUTPUT_DIR/checkpoints/step-00000120/ (docs/checkpoints.md):

    base/           the changeable base tensors under their Hugging Face names, HF sharded layout
                    (model-0000i-of-0000n.safetensors + model.safetensors.index.json whose "hyft" entry says which
                    tensors are ZO / FO and whether the set is the whole model) and the model's config.json
    adapter/        the PEFT module in peft's layout (adapter_config.json + adapter_model.safetensors)
    tokenizer/      the tokenizer (save_pretrained)
    optimizer.*     optimizer state: tensors in .safetensors, the rest in .json
    scheduler.json  learning-rate scheduler state
    trainer.*       step, data order, metric window, guard, elapsed time; the global torch RNG as uint8 tensors
    ledger.json     the seed ledger: every ZO update as (step, lr, weight decay, coefficients)
    config.yaml     the resolved run config
    COMPLETE        written last: format, step, the size and the sha256 of every file above (format.py)

save_run / load_run take the Trainer through a small surface (`RunState`), not its internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from hyft.checkpoint import weights
from hyft.checkpoint.format import CheckpointError, verify, write_atomically
from hyft.checkpoint.ledger import LEDGER, ledger_document, read_ledger, write_ledger
from hyft.checkpoint.weights import (
    base_names,
    check_base_shapes,
    is_peft,
    load_adapter,
    load_hf_weights,
    load_state,
    persistent_buffers,
    read_index,
    unwrap,
)


class RunState(Protocol):
    """What a checkpoint reads from and restores into a run (hyft.trainer.Trainer is one)."""

    cfg: Any  # hyft.config.Config
    model: nn.Module
    tokenizer: Any
    opt: Any  # hyft.optim.HybridOptimizer
    out: Path
    step: int

    def changeable_tensors(self) -> dict[str, tuple[nn.Parameter, str]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any], ledger: list | None = None) -> None: ...


def save_run(tr: RunState) -> Path:
    """Write checkpoint `tr.step` of a Trainer (see the module docstring for the layout)."""
    from hyft.config import save_config
    from hyft.models import adapter_parameters

    model = tr.model
    adapter = adapter_parameters(model)
    changeable = tr.changeable_tensors()
    complete = len(changeable) == len(base_names(model, adapter))

    def fill(d: Path) -> None:
        tensors = {name: p.detach() for name, (p, _) in changeable.items()}
        buffers: list[str] = []
        if complete:  # then base/ is a whole HF model directory: add the persistent buffers
            seen = {t.data_ptr() for t in tensors.values()}
            for name, b in persistent_buffers(model).items():
                if name not in tensors and b.data_ptr() not in seen:
                    tensors[name] = b.detach()
                    buffers.append(name)
        extra = {
            "zo": sorted(n for n, (_, k) in changeable.items() if k == "zo"),
            "fo": sorted(n for n, (_, k) in changeable.items() if k == "fo"),
            "buffers": buffers,
            "complete": complete,
            "source": {"name": tr.cfg.model.name, "revision": tr.cfg.model.revision, "dtype": tr.cfg.model.dtype},
        }
        weights.save_hf_weights(d / "base", tensors, extra=extra, shard_bytes=weights.SHARD_BYTES)
        unwrap(model).config.save_pretrained(d / "base")
        if is_peft(model):
            model.save_pretrained(str(d / "adapter"), save_embedding_layers=False)
        if tr.tokenizer is not None:
            tr.tokenizer.save_pretrained(str(d / "tokenizer"))
        state = tr.state_dict()
        for key in ("trainer", "optimizer", "scheduler"):
            weights.save_state(state[key], d, key)
        save_config(tr.cfg, d / "config.yaml")
        doc = ledger_document(
            tr.opt, model, adapter_ids={id(p) for p in adapter}, fo_base=extra["fo"], source=extra["source"]
        )
        write_ledger(doc, d / LEDGER)

    return write_atomically(tr.out, tr.step, fill, tr.cfg.train.keep_checkpoints)


def load_run(tr: RunState, c: Path) -> Path:
    """Restore a Trainer from checkpoint `c`: base tensors, adapter, optimizer, scheduler, data order, RNG, ledger."""
    verify(c)
    changeable = tr.changeable_tensors()
    index = read_index(c / "base")
    hy = index.get("hyft", {})
    kinds = {n: k for n, (_, k) in changeable.items()}
    for kind in ("zo", "fo"):
        for n in hy.get(kind, []):
            if n in kinds and kinds[n] != kind:
                raise CheckpointError(f"{c}: tensor {n!r} was {kind}-trained in the checkpoint, {kinds[n]} in this run")
    buffers = set(hy.get("buffers", []))
    targets: dict[str, torch.Tensor] = {n: p for n, (p, _) in changeable.items()}
    if buffers:
        targets.update({n: b for n, b in persistent_buffers(tr.model).items() if n in buffers})
    load_hf_weights(c / "base", targets, exact_set=True)
    if is_peft(tr.model):
        load_adapter(tr.model, c / "adapter")
    state = {key: load_state(c, key) for key in ("trainer", "optimizer", "scheduler")}
    doc = read_ledger(c / LEDGER)
    if int(doc["seed"]) != tr.cfg.seed:
        raise CheckpointError(f"{c / LEDGER}: written by a run with seed {doc['seed']}, this run has {tr.cfg.seed}")
    here = tr.opt.zo_tensors[0].param.device.type if tr.opt.zo_tensors else None
    if here is not None and doc["updates"] and doc.get("device", here) != here:
        raise CheckpointError(
            f"{c}: the run drew its ZO directions on {doc['device']}; the {here} generator draws other numbers from "
            f"the same seeds, so continuing on {here} would change the trajectory and the ledger could no longer "
            f"replay it; resume with --model.device {doc['device']}"
        )
    # absent: written before the field, by the reference or (on CUDA) the fused kernels' generator, never blocked
    gen = doc.get("generator", "torch" if tr.opt.generator in ("blocked", "counter") else tr.opt.generator)
    if here is not None and doc["updates"] and gen != tr.opt.generator:
        raise CheckpointError(
            f"{c / LEDGER}: the run drew its ZO directions with the {gen} generator, this run with "
            f"{tr.opt.generator}; resume with the same --zo.kernels (torch: reference; blocked, counter: CPU fast "
            "paths)"
        )
    ledger = [(s, lr, wd, cs) for s, lr, wd, cs in doc["updates"]]
    try:
        tr.load_state_dict(state, ledger)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
        raise CheckpointError(f"{c}: state does not fit this run ({type(e).__name__}: {e})") from None
    return c


def load_base_model(c: Path, model_cfg, *, original: str | None = None):
    """(model, tokenizer) as checkpoint `c` left them, without the adapter: from c/base when it holds the whole
    model (no hub access), else the original `model_cfg.name` (or `original`) with the checkpoint's tensors on top."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hyft.models import DTYPES, finish_loading, load_model

    verify(c)
    base = c / "base"
    index = read_index(base)
    if index.get("hyft", {}).get("complete"):
        check_base_shapes(base, index, model_cfg.trust_remote_code)
        try:
            model = AutoModelForCausalLM.from_pretrained(
                str(base), dtype=DTYPES[model_cfg.dtype], trust_remote_code=model_cfg.trust_remote_code
            )
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            first = (str(e).strip().splitlines() or [""])[0][:200]
            raise CheckpointError(f"{base}: cannot load ({type(e).__name__}: {first})") from None
    else:
        src = replace(model_cfg, name=original or model_cfg.name, device="cpu", gradient_checkpointing=False)
        model, _ = load_model(src)
        by_id = {id(p): p for p in model.parameters()}
        params = {name: by_id[i] for i, name in base_names(model).items()}
        load_hf_weights(base, params, exact_set=False)
    tok = AutoTokenizer.from_pretrained(str(c / "tokenizer"), trust_remote_code=model_cfg.trust_remote_code)
    return finish_loading(model, tok, model_cfg)


def load_model_for(cfg, ckpt: Path | None, model_cfg=None):
    """(model, tokenizer) for a run: from a complete checkpoint's base/ when resuming, else from model.name. Loading
    errors become one-line ConfigErrors naming the source."""
    from hyft.errors import ConfigError, HyftError
    from hyft.models import load_model

    model_cfg = model_cfg or cfg.model
    try:
        if ckpt is not None:
            return load_base_model(ckpt, model_cfg)
        return load_model(model_cfg)
    except HyftError:
        raise
    except Exception as e:  # transformers / safetensors errors on a bad model source: one line, exit 2
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ConfigError(f"model.name: cannot load {cfg.model.name!r}: {type(e).__name__}: {first}") from None
