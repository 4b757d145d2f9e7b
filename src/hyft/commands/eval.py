"""hyft eval --model PATH_OR_RUN_DIR --task NAME[,NAME...] [--split test] [--seeds 0,1,2] [--calibrate] ...

Evaluates a base model (hub id, local HF directory, .gguf file, 'smollm2-135m'), an exported model directory (a
merged HF model, or a PEFT adapter directory whose adapter_config.json names its base), or a run's output directory
(its config.yaml supplies the defaults: task, data, model dtype; the model is the one exported into the run
directory, see EXPORT_DIRS). With several seeds each seed draws its own seeded sample of the split (this matters
only when --n_test / --n_dev is below the split's size) and the table ends with mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError

# Where a run directory's saved model is looked for, in this order.
EXPORT_DIRS = ("export/merged", "export/model", "export", "merged", "model")
ADAPTER_DIRS = ("export/adapter", "adapter", "export")
_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
SPLITS = ("test", "dev", "train")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        required=True,
        help="run directory, exported model or adapter directory, hub id, .gguf file or 'smollm2-135m'",
    )
    p.add_argument("--task", help="task name(s), comma-separated (built-in, or 'user' with --config); "
                                  "default: the run's task")  # fmt: skip
    p.add_argument("--split", default="test", choices=SPLITS, help="split to evaluate (default test)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the split sample (default: the config's)")
    p.add_argument(
        "--calibrate",
        action="store_true",
        default=None,
        help="subtract each candidate's content-free score (the uncalibrated accuracy is reported too)",
    )
    p.add_argument("--content_free", default=None, help="content-free context for --calibrate (default 'N/A')")
    p.add_argument("--data_dir", default=None, help="task data directory (default $HYFT_DATA_DIR or ../shared/data)")
    p.add_argument("--n_test", type=int, default=None, help="test examples per seed (default: the config's, 1000)")
    p.add_argument("--n_dev", type=int, default=None, help="dev examples per seed (--split dev)")
    p.add_argument("--max_length", type=int, default=None, help="max tokens per sequence")
    p.add_argument("--batch_size", type=int, default=None, help="sequences per scoring batch")
    p.add_argument("--max_new_tokens", type=int, default=None, help="generation tasks: greedy decoding length")
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N")
    p.add_argument("--config", default=None, help="YAML config for the defaults (e.g. a user dataset under data:)")
    out_help = (
        "JSON output file (default: <run>/eval_<tasks>_<split>.json, else runs/eval/<model>_<tasks>_<split>.json)"
    )
    p.add_argument("--out", default=None, help=out_help)
    p.add_argument(
        "--harness",
        default=None,
        help="run lm-evaluation-harness tasks (comma-separated) on the model instead of hyft's own scorer; "
        "see docs/evaluation.md",
    )
    p.add_argument(
        "--harness_include",
        action="append",
        default=[],
        help="directory (or YAML file) of local lm-eval task configs, e.g. for offline data; repeatable",
    )
    p.add_argument("--limit", type=int, default=None, help="--harness: examples per task (default all)")
    p.add_argument("--num_fewshot", type=int, default=None, help="--harness: few-shot examples (default: the task's)")
    p.add_argument("--apply_chat_template", action="store_true",
                   help="--harness: render prompts with the tokenizer's chat template")  # fmt: skip
    p.add_argument(
        "--ablate_zo",
        action="store_true",
        help="run directory of a hybrid run: evaluate its trained PEFT module on the original base and on the "
        "ZO-updated base (from its latest checkpoint) and report the difference in points",
    )


# -- what --model names ------------------------------------------------------------------------------------------------
@dataclass
class ModelSource:
    kind: str  # run-merged | run-adapter | run-checkpoint | model-dir | adapter-dir | name
    path: str  # what load_model / peft reads
    run_dir: Path | None = None


def is_run_dir(p: Path) -> bool:
    logs = ("run.json", "metrics.jsonl")
    return p.is_dir() and (p / "config.yaml").is_file() and any((p / f).is_file() for f in logs)


def has_weights(d: Path) -> bool:
    return (d / "config.json").is_file() and (any((d / w).is_file() for w in _WEIGHTS) or any(d.glob("*.safetensors")))


def is_adapter_dir(d: Path) -> bool:
    return (d / "adapter_config.json").is_file()


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith(".gguf") or Path(name).exists()


def find_source(name: str) -> ModelSource:
    """Classify --model; a path that names nothing loadable is a ConfigError saying what is missing."""
    p = Path(name).expanduser()
    if is_run_dir(p):
        for sub in EXPORT_DIRS:
            if has_weights(p / sub):
                return ModelSource("run-merged", str(p / sub), p)
        for sub in ADAPTER_DIRS:
            if is_adapter_dir(p / sub):
                return ModelSource("run-adapter", str(p / sub), p)
        merged = ", ".join(f"{s}/" for s in EXPORT_DIRS)
        adapters = ", ".join(f"{s}/" for s in ADAPTER_DIRS)
        raise ConfigError(
            f"--model: {p} is a run directory but holds no saved model: no merged HF model (config.json + weights) in "
            f"{merged} and no PEFT adapter (adapter_config.json) in {adapters}. Export the run's model into "
            f"{p / 'export' / 'merged'} (model.save_pretrained + tokenizer.save_pretrained) or pass an exported model"
        )
    if p.is_dir():
        if has_weights(p):
            return ModelSource("model-dir", str(p))
        if is_adapter_dir(p):
            return ModelSource("adapter-dir", str(p))
        raise ConfigError(
            f"--model: {p} is a directory but not a run directory (config.yaml + run.json), a HF model "
            "(config.json + weights) or a PEFT adapter (adapter_config.json)"
        )
    if _looks_like_path(name) and not p.exists():
        raise ConfigError(
            f"--model: {name} does not exist (expected a run directory, an exported model or adapter directory, "
            "a .gguf file, a hub id or 'smollm2-135m')"
        )
    return ModelSource("name", name)


def load_source(src: ModelSource, model_cfg):
    """(model, tokenizer) for a source; adapters are attached to the base named in adapter_config.json (else the
    run config's model.name)."""
    from dataclasses import replace

    from hyft.models import load_model, prepare_tokenizer

    if src.kind in ("run-adapter", "adapter-dir"):
        from peft import PeftModel

        meta = json.loads((Path(src.path) / "adapter_config.json").read_text(encoding="utf-8"))
        base = meta.get("base_model_name_or_path") or (model_cfg.name if src.kind == "run-adapter" else None)
        if not base:
            raise ConfigError(f"--model: {src.path}/adapter_config.json names no base model (base_model_name_or_path)")
        model, tok = load_model(replace(model_cfg, name=base))
        model = PeftModel.from_pretrained(model, src.path)
        model.to(next(model.get_base_model().parameters()).device)
        prepare_tokenizer(tok)
        return model, tok
    return load_model(replace(model_cfg, name=src.path))


# -- evaluation --------------------------------------------------------------------------------------------------------
def parse_seeds(text: str | None, default: int) -> list[int]:
    if text is None:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds: expected comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ConfigError("--seeds: no seed given")
    return seeds


def check_tasks(names: list[str], cfg) -> None:
    from hyft.tasks import TASKS

    for name in names:
        if name == "user":
            if not cfg.data.dataset:
                raise ConfigError("--task user needs a dataset spec under data.dataset in --config (see docs/tasks.md)")
        elif name not in TASKS:
            raise ConfigError(f"--task: unknown task {name!r}; built-in tasks: {', '.join(sorted(TASKS))}, or user")


def evaluate_task(model, tok, cfg, split: str, seeds: list[int]) -> dict[str, Any]:
    """One task: a report per seed (its own seeded sample of the split) and mean ± std per metric."""
    from dataclasses import replace

    from hyft.data import load_data
    from hyft.evaluate import EvalOptions, evaluate_examples
    from hyft.models import output_head
    from hyft.report import mean_std
    from hyft.tasks.sft import render as render_chat

    head = output_head(model)
    opts = EvalOptions.from_config(cfg)
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        data = render_chat(load_data(replace(cfg, seed=seed)), tok)
        examples = data.split(split)
        if not examples:
            raise ConfigError(f"task {data.name!r} has no {split} examples (check --n_{split} and the data files)")
        report = evaluate_examples(model, head, tok, examples, opts)
        report.update(seed=seed, seconds=round(time.perf_counter() - t0, 3),
                      lines=[e.meta.get("line") for e in examples])  # fmt: skip
        rows.append(report)
    metrics = [k for k in ("accuracy", "accuracy_uncalibrated", "exact_match", "f1", "token_accuracy", "loss")
               if k in rows[0]]  # fmt: skip
    summary = {}
    for k in metrics:
        mean, std, n = mean_std(r[k] for r in rows)
        summary[k] = {"mean": mean, "std": std, "n": n}
    return {"task": data.name, "split": split, "seeds": rows, "summary": summary, "metric": rows[0]["metric"]}


def run_bases(run_dir: Path, cfg):
    """(model, tokenizer, original(), updated()) for a run's latest checkpoint: the run's model with its trained PEFT
    module, and two contexts that put the original or the checkpoint's (ZO-updated) base tensors in place."""
    import contextlib

    from hyft import checkpoint as ckpt
    from hyft.methods import resolve
    from hyft.models import adapter_parameters, attach_peft, load_model

    c = ckpt.find_checkpoint(run_dir)
    ckpt.verify(c)
    model, tok = load_model(cfg.model)
    model = attach_peft(model, resolve(cfg).peft, cfg.peft, tok)
    if ckpt.is_peft(model):
        ckpt.load_adapter(model, c / "adapter")
    model.eval()
    names = ckpt.base_names(model, adapter_parameters(model))
    params = {n: p for p in model.parameters() if (n := names.get(id(p))) is not None}
    index = ckpt.read_index(c / "base")
    zo_names = index.get("hyft", {}).get("zo", [])
    if not zo_names:
        raise ConfigError(f"--ablate_zo: {c} holds no ZO-updated base tensors (the run was not hybrid)")
    originals = {n: params[n].detach().clone() for n in zo_names}
    ckpt.load_hf_weights(c / "base", {n: params[n] for n in index["weight_map"] if n in params}, exact_set=False)
    updated_values = {n: params[n].data for n in zo_names}

    @contextlib.contextmanager
    def put(values):  # a pointer swap: one extra copy of the ZO tensors in all, the originals
        for n, v in values.items():
            params[n].data = v
        yield

    return model, tok, lambda: put(originals), lambda: put(updated_values)


def ablation_row(updated: dict[str, Any], original: dict[str, Any]) -> dict[str, Any]:
    metric = next(k for k in ("accuracy", "exact_match", "f1", "token_accuracy") if k in updated["summary"])
    a, b = updated["summary"][metric]["mean"], original["summary"][metric]["mean"]
    return {"task": updated["task"], "metric": metric, "updated_base": a, "original_base": b,
            "zo_points": round(100 * (a - b), 4)}  # fmt: skip


def results_table(results: list[dict[str, Any]]) -> str:
    from hyft.report import fmt_mean_std, text_table

    metrics = [k for k in ("accuracy", "accuracy_uncalibrated", "exact_match", "f1", "token_accuracy", "loss")
               if any(k in r["summary"] for r in results)]  # fmt: skip
    headers = ["task", "seed", "n"] + [m.replace("accuracy_uncalibrated", "uncalibrated") for m in metrics]
    rows = []
    for r in results:
        for s in r["seeds"]:
            rows.append([r["task"], s["seed"], s["n"]] + [s.get(m) for m in metrics])
        if len(r["seeds"]) > 1:
            cells = [fmt_mean_std([s[m] for s in r["seeds"]]) if m in r["summary"] else None for m in metrics]
            rows.append([r["task"], "mean ± std", sum(s["n"] for s in r["seeds"]) // len(r["seeds"])] + cells)
    return text_table(headers, rows)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip("/")).strip("_")[-80:] or "model"


def write_report(out: dict[str, Any], args: argparse.Namespace, src: ModelSource, tag: str) -> Path:
    """--out, else eval_TAG.json in the run directory evaluated, else runs/eval/MODEL_TAG.json."""
    if args.out:
        path = Path(args.out)
    elif src.run_dir is not None:
        path = src.run_dir / f"eval_{tag}.json"
    else:
        path = Path("runs") / "eval" / f"{_slug(args.model)}_{tag}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(f"[hyft] wrote {path}")
    return path


def run(args: argparse.Namespace, rest: list[str]) -> int:
    from hyft.config import load_config
    from hyft.trainer import package_versions

    if rest:
        raise ConfigError(f"hyft eval: unexpected argument(s) {' '.join(rest)}")
    if args.harness is not None:
        return run_harness_command(args)
    if args.ablate_zo:  # the run's checkpoint, not an export, holds both bases' information
        run_dir = Path(args.model).expanduser()
        if not is_run_dir(run_dir):
            raise ConfigError(f"--ablate_zo: {args.model} is not a run directory (config.yaml + run.json)")
        src = ModelSource("run-checkpoint", str(run_dir), run_dir)
    else:
        src = find_source(args.model)
    if args.config is not None:
        cfg = load_config(args.config)
    elif src.run_dir is not None:
        cfg = load_config(src.run_dir / "config.yaml")
    else:
        cfg = load_config(None)
    d = cfg.data
    for key in ("data_dir", "n_test", "n_dev", "max_length", "max_new_tokens", "calibrate", "content_free"):
        if getattr(args, key) is not None:
            setattr(d, key, getattr(args, key))
    for key in ("dtype", "device"):
        if getattr(args, key) is not None:
            setattr(cfg.model, key, getattr(args, key))
    if args.batch_size is not None:
        cfg.train.eval_batch_size = args.batch_size
    if args.split == "test":
        d.n_train, d.n_dev = 0, 0  # the test sample does not depend on them; skip building train examples
    names = [t for t in (args.task or (d.task if src.run_dir is not None or args.config else "")).split(",") if t]
    if not names:
        raise ConfigError("--task is required unless --model is a run directory or --config names data.task")
    check_tasks(names, cfg)
    seeds = parse_seeds(args.seeds, cfg.seed)

    t0 = time.perf_counter()
    ablation = None
    if args.ablate_zo:
        model, tok, original, updated = run_bases(src.run_dir, cfg)
        results, ablation = [], []
        for name in names:
            from dataclasses import replace

            task_cfg = replace(cfg, data=replace(d, task=name))
            with original():
                base0 = evaluate_task(model, tok, task_cfg, args.split, seeds)
            with updated():
                results.append(evaluate_task(model, tok, task_cfg, args.split, seeds))
            ablation.append(ablation_row(results[-1], base0))
        print(results_table(results))
        for row in ablation:
            print(
                f"[hyft] ZO ablation {row['task']} {args.split}: {row['metric']} {row['updated_base']:.4f} with the "
                f"updated base, {row['original_base']:.4f} on the original: {row['zo_points']:+.2f} points"
            )
    else:
        model, tok = load_source(src, cfg.model)
        results = []
        for name in names:
            from dataclasses import replace

            task_cfg = replace(cfg, data=replace(d, task=name))
            results.append(evaluate_task(model, tok, task_cfg, args.split, seeds))
            print(f"[hyft] {name}: done ({sum(s['seconds'] for s in results[-1]['seeds']):.1f} s)", flush=True)
        print(results_table(results))
    out = {
        "model": args.model,
        "source": {"kind": src.kind, "path": src.path},
        "split": args.split,
        "calibrate": d.calibrate,
        "content_free": d.content_free if d.calibrate else None,
        "seeds": seeds,
        "n_test" if args.split == "test" else f"n_{args.split}": getattr(d, f"n_{args.split}"),
        "max_length": d.max_length,
        "dtype": cfg.model.dtype,
        "results": results,
        **({"ablation": ablation} if ablation is not None else {}),
        "versions": package_versions(),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    tag = f"{_slug('+'.join(names))}_{args.split}{'_ablate_zo' if args.ablate_zo else ''}"
    write_report(out, args, src, tag)
    return 0


def run_harness_command(args: argparse.Namespace) -> int:
    """hyft eval --harness: lm-eval's tasks on the model --model names (run directory, export, adapter, hub id)."""
    from hyft.config import load_config
    from hyft.harness import run_harness, table
    from hyft.trainer import package_versions

    tasks = [t.strip() for t in args.harness.split(",") if t.strip()]
    if not tasks:
        raise ConfigError("--harness: no task given")
    if args.ablate_zo or args.task:
        raise ConfigError("--harness runs lm-eval's tasks; it does not combine with --task or --ablate_zo")
    src = find_source(args.model)
    cfg = load_config(args.config if args.config else src.run_dir / "config.yaml" if src.run_dir else None)
    for key in ("dtype", "device"):
        if getattr(args, key) is not None:
            setattr(cfg.model, key, getattr(args, key))
    from hyft.harness import lm_eval_api

    lm_eval_api()  # a missing package is reported before the model loads
    t0 = time.perf_counter()
    model, tok = load_source(src, cfg.model)
    seed = parse_seeds(args.seeds, cfg.seed)[0]
    res = run_harness(
        model, tok, tasks, include=args.harness_include, batch_size=args.batch_size or 8, limit=args.limit,
        num_fewshot=args.num_fewshot, apply_chat_template=args.apply_chat_template, seed=seed,
        max_length=args.max_length,
    )  # fmt: skip
    print(table(res))
    out = {"model": args.model, "source": {"kind": src.kind, "path": src.path}, "harness": tasks,
           "include": args.harness_include, **res, "hyft_versions": package_versions(),
           "seconds": round(time.perf_counter() - t0, 3)}  # fmt: skip
    tag = f"harness_{_slug('+'.join(tasks))}"
    write_report(out, args, src, tag)
    return 0
