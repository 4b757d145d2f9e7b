"""Checks of a whole run config before any model is loaded (hyft train calls `validate` first).

Each problem is one ConfigError line naming the key and where it was set (FILE:LINE for YAML, --key for overrides).
Types and unknown keys are checked while loading (config.py); here: names, ranges, combinations, the model source,
the data files (the data are loaded, which is cheap next to a model, and returned for the Trainer) and the output
directory.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hyft.config import Config, choices, explicitly_set, field_choices, origin_of
from hyft.errors import ConfigError
from hyft.methods import Method, resolve
from hyft.sinks import check_installed

REPORTERS = choices("train.report_to")
_DEFAULT = Config()

# (key, test, requirement) for numeric ranges
_RANGES = [
    ("zo.lr", lambda v: v >= 0, "must be >= 0"),
    ("zo.mu", lambda v: v > 0, "must be > 0 (the perturbation radius)"),
    ("zo.queries", lambda v: v >= 1, "must be >= 1"),
    ("zo.momentum", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("zo.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("zo.warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("zo.min_perturbation_scale", lambda v: 0 <= v <= 1, "must be in [0, 1] (0 keeps every ZO tensor)"),
    ("fo.lr", lambda v: v >= 0, "must be >= 0"),
    ("fo.momentum", lambda v: v >= 0, "must be >= 0"),
    ("fo.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("fo.warmup_steps", lambda v: v >= 0, "must be >= 0"),
    ("peft.r", lambda v: v >= 1, "must be >= 1"),
    ("peft.alpha", lambda v: v > 0, "must be > 0"),
    ("peft.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("peft.virtual_tokens", lambda v: v >= 1, "must be >= 1"),
    ("data.max_length", lambda v: v >= 2, "must be >= 2 (a context token and an answer token)"),
    ("train.steps", lambda v: v >= 0, "must be >= 0"),
    ("train.batch_size", lambda v: v >= 1, "must be >= 1"),
    ("train.grad_accum", lambda v: v >= 1, "must be >= 1"),
    ("train.eval_every", lambda v: v >= 0, "must be >= 0"),
    ("train.eval_batch_size", lambda v: v >= 1, "must be >= 1"),
    ("train.log_every", lambda v: v >= 1, "must be >= 1"),
    ("train.save_every", lambda v: v >= 0, "must be >= 0"),
    ("train.save_every_minutes", lambda v: v >= 0, "must be >= 0"),
    ("train.keep_checkpoints", lambda v: v >= 0, "must be >= 0"),
    ("train.max_bad_steps", lambda v: v >= 1, "must be >= 1"),
    ("train.loss_bound", lambda v: v is None or v > 0, "must be > 0 or null"),
    ("train.probe_every", lambda v: v >= 0, "must be >= 0"),
    ("train.probe_batch", lambda v: v >= 0, "must be >= 0"),
    ("train.probe_directions", lambda v: v >= 0, "must be >= 0"),
]


def _get(cfg: Config, key: str):
    obj = cfg
    for part in key.split("."):  # top-level keys (base, adapter_train) too
        obj = getattr(obj, part)
    return obj


def _err(cfg: Config, key: str, message: str) -> ConfigError:
    return ConfigError(f"{origin_of(cfg, key)}: {message}")


def check_config(cfg: Config, *, saved: bool = False) -> Method:
    """Names, ranges and combinations; returns the resolved method. saved: cfg is a run's own config.yaml (a resume),
    which lists every key with the defaults of the version that wrote it; it was checked when the run began."""
    for key, allowed in field_choices().items():  # each knob's choices are declared on its config field
        value = _get(cfg, key)
        for v in value if isinstance(value, list) else [value]:  # a list field's choices apply to each item
            if v not in allowed:
                names = ", ".join(a for a in allowed if a is not None)
                raise _err(cfg, key, f"unknown value {v!r}; choose from {names}")
    missing = check_installed(cfg.train.report_to)
    if missing:
        raise _err(cfg, "train.report_to", missing)
    if "tensorboard" in cfg.train.report_to:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise _err(cfg, "train.report_to", "needs the tensorboard package (pip install tensorboard)") from None
    for key, ok, need in _RANGES:
        value = _get(cfg, key)
        if isinstance(value, float) and not math.isfinite(value):
            raise _err(cfg, key, f"{value} is not a finite number")
        if not ok(value):
            raise _err(cfg, key, f"{need}, got {value!r}")
    method = resolve(cfg)
    check_device(cfg)
    t = cfg.train
    if t.batch_size % t.grad_accum:
        raise _err(cfg, "train.batch_size", f"{t.batch_size} is not divisible by train.grad_accum {t.grad_accum}")
    if method.schedule == "alternating" and not (method.has_zo and method.has_fo):
        raise _err(cfg, "zo.schedule", f"'alternating' needs a first-order and a ZO group; {cfg.method!r} has one")
    # A setting for a group the method does not have is a mistake (unless it only restates the default, as a
    # saved config.yaml does for every key).
    groups = {"zo": (method.has_zo, "zeroth-order"), "fo": (method.has_fo, "first-order")}
    # A resumed lora run written when zo.lr's default was 1e-5 restates that old default: not the user's setting.
    for key in () if saved else ("zo.lr", "zo.mu", "zo.queries", "zo.schedule", "zo.momentum", "fo.lr", "fo.momentum"):
        has, group = groups[key[:2]]
        if not has and explicitly_set(cfg, key) and _get(cfg, key) != _get(_DEFAULT, key):
            raise _err(
                cfg,
                key,
                f"method {cfg.method!r} has no {group} group to apply it to; drop the {key.split('.')[0]}: "
                "setting for this method, or run several methods from one config side by side with hyft compare",
            )
    if cfg.model.gradient_checkpointing and t.dropout == "off":
        raise _err(
            cfg,
            "model.gradient_checkpointing",
            "has no effect with train.dropout off (HF models checkpoint only in train mode, and dropout off runs "
            "eval mode); set --train.dropout shared",
        )
    if t.probe_every and cfg.dist.strategy == "fsdp":
        raise _err(cfg, "train.probe_every", "probes are not supported under FSDP2 (sharded base weights); pass 0")
    p = cfg.peft
    if p.prompt_init != "random" and method.peft != "prompt":
        raise _err(cfg, "peft.prompt_init", f"{p.prompt_init!r} applies to prompt tuning only, not {method.peft!r}")
    if p.prompt_init == "text" and not p.prompt_init_text:
        raise _err(cfg, "peft.prompt_init", "text needs the text itself (peft.prompt_init_text)")
    if p.prompt_init_text and p.prompt_init != "text":
        raise _err(cfg, "peft.prompt_init_text", f"given, but peft.prompt_init is {p.prompt_init!r}; set it to text")
    for key in ("save_every", "save_every_minutes"):
        if getattr(t, key) and not t.keep_checkpoints:
            raise _err(cfg, f"train.{key}", f"{getattr(t, key)} with train.keep_checkpoints 0 would write nothing")
    return method


def check_device(cfg: Config) -> None:
    name = cfg.model.device
    if name == "auto":
        return
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise _err(cfg, "model.device", f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise _err(cfg, "model.device", f"{name!r} requested but CUDA is not available (torch {torch.__version__})")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise _err(cfg, "model.device", f"{name!r}: only {torch.cuda.device_count()} CUDA device(s)")


def _looks_local(name: str) -> bool:
    """A path rather than a hub id ('org/name'): absolute, relative with ./ ../ ~, more than one '/', or .gguf."""
    return name.startswith(("/", "./", "../", "~", ".\\")) or name.count("/") > 1 or name.endswith(".gguf")


def check_model_source(cfg: Config) -> None:
    """The model source exists and its weight files are sound, without loading it."""
    from hyft.checkpoint import CheckpointError, check_safetensors
    from hyft.models import SMOLLM2, smollm2_gguf

    name = cfg.model.name
    key = "model.name"
    if name == SMOLLM2:
        smollm2_gguf()
        return
    path = Path(name).expanduser()
    if not path.exists():
        if _looks_local(name):
            raise _err(cfg, key, f"{name}: no such file or directory")
        return  # a hub id: checked when loaded
    if path.is_file():
        if path.suffix != ".gguf":
            raise _err(cfg, key, f"{name}: a file; expected a model directory or a .gguf file")
        return
    if not (path / "config.json").is_file() and not cfg.model.gguf_file:
        raise _err(cfg, key, f"{name}: no config.json (not a Hugging Face model directory)")
    for f in sorted(path.glob("*.safetensors")):
        try:
            check_safetensors(f)
        except CheckpointError as e:
            raise _err(cfg, key, str(e)) from None
    for f in sorted(path.glob("*.safetensors.index.json")):
        try:
            import json

            files = set(json.loads(f.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise _err(cfg, key, f"{f}: unreadable weights index") from None
        missing = sorted(x for x in files if not (path / x).is_file())
        if missing:
            raise _err(cfg, key, f"{f}: lists {missing[0]} which is missing")


def check_output_dir(cfg: Config, *, resume: bool) -> None:
    from hyft.callbacks import holds_run

    out = Path(cfg.train.output_dir)
    if out.exists() and not out.is_dir():
        raise _err(cfg, "train.output_dir", f"{out} is a file")
    if not resume and holds_run(out) and not cfg.train.overwrite:
        raise _err(
            cfg,
            "train.output_dir",
            f"{out} already holds a run; pass --train.overwrite true (deletes its checkpoints), "
            f"hyft train --resume {out}, or choose another directory",
        )


def validate(cfg: Config, *, resume: bool = False):
    """Everything that can be checked before loading the model; returns the task data (loaded once, here)."""
    from hyft.data import load_data

    check_config(cfg, saved=resume)
    check_model_source(cfg)
    check_output_dir(cfg, resume=resume)
    data = load_data(cfg)
    if cfg.data.task == "user" and (cfg.data.dataset or {}).get("type") == "sft" and cfg.data.loss != "lm":
        raise _err(cfg, "data.loss", "an sft dataset trains on its tokens (assistant turns, completions, text); "
                   "set data.loss: lm")  # fmt: skip
    if not data.train:
        raise ConfigError(f"data: task {data.name!r} has no training examples (data.n_train {cfg.data.n_train})")
    return data
