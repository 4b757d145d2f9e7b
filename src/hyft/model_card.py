"""The README.md (model card, the Hugging Face convention: YAML metadata, then markdown) written into every export.

It says what the weights are and how they were made, from the checkpoint's own files: config.yaml (base model,
method, both learning rates, mu, steps, data), the run's run.json when the run finished (final metrics, data
splits), and the seed ledger (how many ZO updates, which generator: what `hyft replay` needs). Nothing is guessed:
a run without run.json says so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

# model.name aliases and the hub model they are a copy of (the card's base_model must be a hub id to link)
HUB_IDS = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}


def _run_info(c: Path) -> dict[str, Any] | None:
    path = c.parent.parent / "run.json"  # RUN/checkpoints/step-N -> RUN/run.json
    if not path.is_file():
        return None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if info.get("steps") == int(c.name.rsplit("-", 1)[-1]) else None  # only for this checkpoint


def _metric_names(c: Path, steps: int) -> dict[str, str]:
    """split -> the headline metric's name (accuracy, exact_match, token_accuracy) from the run's eval.json."""
    try:
        evals = json.loads((c.parent.parent / "eval.json").read_text(encoding="utf-8"))
        return {e["split"]: e.get("metric", "accuracy") for e in evals if e.get("step") == steps}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, KeyError):
        return {}


def _ledger(c: Path) -> dict[str, Any] | None:
    from hyft.replay import LEDGER

    path = c / LEDGER
    if not path.is_file():
        return None
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {
        "zo_updates": len(doc.get("updates", [])),
        "zo_tensors": len(doc.get("tensors", [])),
        "seed": doc.get("seed"),
        "distribution": doc.get("distribution"),
        "generator": doc.get("generator"),
        "mu": doc.get("mu"),
        "bytes": path.stat().st_size,
    }


def _data(cfg, info) -> tuple[str, list[str]]:
    d = cfg.data
    if d.task != "user":
        return f"built-in task `{d.task}`", []
    spec = d.dataset or {}
    hub = [v["hf"] for k in ("train", "dev", "test") if isinstance(v := spec.get(k), dict) and "hf" in v
           and not Path(v["hf"]).exists()]  # fmt: skip
    return f"user dataset (type `{spec.get('type')}`, {spec.get('name') or 'user'})", hub


def card(c: Path, cfg, *, kind: str, adapter: dict[str, Any] | None) -> str:
    """The model card text for an export of checkpoint `c` (kind 'merged' or 'peft')."""
    from hyft.methods import resolve

    info = _run_info(c)
    ledger = _ledger(c)
    method = resolve(cfg)
    base = HUB_IDS.get(cfg.model.name, cfg.model.name)
    data_text, hub_data = _data(cfg, info)
    steps = int(c.name.rsplit("-", 1)[-1])
    peft_type = (adapter or {}).get("peft_type")
    final = (info or {}).get("final") or {}
    meta: dict[str, Any] = {
        "base_model": base,
        "library_name": "peft" if kind == "peft" and adapter else "transformers",
        "pipeline_tag": "text-generation",
        "tags": [
            "hyft",
            cfg.method,
            *(["zeroth-order"] if ledger and ledger["zo_updates"] else []),
            *([peft_type.lower()] if peft_type else []),
        ],  # fmt: skip
    }
    if hub_data:
        meta["datasets"] = hub_data
    meta["hyft"] = {
        "method": cfg.method,
        "base_weights": method.base,
        "adapter": method.peft,
        "adapter_trained_by": method.adapter if method.peft != "none" else None,
        "zo_lr": cfg.zo.lr,
        "fo_lr": cfg.fo.lr,
        "mu": cfg.zo.mu,
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "seed": cfg.seed,
        "final": final,
    }
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", ""]
    lines += [f"# {cfg.method} fine-tune of {base}", ""]
    lines += [
        f"Trained with hyft ({cfg.method}: base weights {method.base}, PEFT module {method.peft}"
        f"{' trained by ' + method.adapter if method.peft != 'none' else ''}) for {steps} steps.",
        "",
        "## Training",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{cfg.model.name}`{' (' + base + ')' if base != cfg.model.name else ''} |",
        f"| method | {cfg.method} |",
        f"| ZO learning rate | {cfg.zo.lr:g} ({cfg.zo.lr_schedule}) |",
        f"| FO learning rate | {cfg.fo.lr:g} ({cfg.fo.optimizer}, {cfg.fo.lr_schedule}) |",
        f"| perturbation radius mu | {cfg.zo.mu:g} |",
        f"| steps | {steps} (batch {cfg.train.batch_size}) |",
        f"| seed | {cfg.seed} |",
        f"| data | {data_text} |",
        "",
    ]
    if info and info.get("data"):
        lines += ["| split | source | rows used / available |", "|---|---|---|"]
        lines += [
            f"| {r['split']} | `{r['source']}` | {r['rows_used']} / {r['rows_available']} |" for r in info["data"]
        ]
        lines.append("")
    lines += ["## Results", ""]
    if final:
        names = _metric_names(c, steps)
        lines += ["| split | metric | value |", "|---|---|---|"]
        lines += [f"| {split} | {names.get(split, '')} | {value:.4f} |" for split, value in final.items()]
    else:
        lines.append("No final evaluation recorded for this checkpoint (the run did not finish here).")
    lines += ["", "## Seed ledger", ""]
    if ledger and ledger["zo_updates"]:
        lines.append(
            f"{ledger['zo_updates']} ZO updates of {ledger['zo_tensors']} tensors ({ledger['bytes']} bytes; seed "
            f"{ledger['seed']}, {ledger['distribution']} directions, {ledger['generator']} generator, mu "
            f"{ledger['mu']:g}). `hyft replay` rebuilds the ZO-updated weights from the original model and this "
            "ledger alone."
        )
    else:
        lines.append("No zeroth-order updates: the base weights are the original's.")
    lines += ["", "## How to load", "", "PATH is this directory.", "", "```python"]
    if kind == "merged":
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("PATH")  # this directory',
            'tokenizer = AutoTokenizer.from_pretrained("PATH")',
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            *(["from peft import PeftModel"] if adapter else []),
            "",
            "# base/ holds the base weights as this run left them (ZO-updated in hybrid runs): load the adapter on",
            "# it, not on the original model",
            'model = AutoModelForCausalLM.from_pretrained("PATH/base")',
            'tokenizer = AutoTokenizer.from_pretrained("PATH/base")',
            *(['model = PeftModel.from_pretrained(model, "PATH/adapter")'] if adapter else []),
        ]
    lines += ["```", ""]
    return "\n".join(lines)


def write_card(out: Path, c: Path, cfg, *, kind: str, adapter: dict[str, Any] | None) -> Path:
    path = Path(out) / "README.md"
    path.write_text(card(c, cfg, kind=kind, adapter=adapter), encoding="utf-8")
    return path
