"""lm-evaluation-harness on a hyft model: `hyft eval --model RUN_OR_EXPORT --harness TASKS [--harness_include DIR]`.

The model is loaded the way `hyft eval` loads it (a run directory's export, a merged model, a PEFT adapter on its
base, a hub id or GGUF) and handed to lm-eval's HFLM as an object, so lm-eval never reads the hub for the model. A
LoRA adapter is merged first (exact, and lm-eval then sees a plain model); prompt tuning prepends virtual tokens to
the logits, which lm-eval cannot align with its inputs, so it is refused.

Scoring relation (tests/test_harness.py checks it): lm-eval's `acc` picks the choice with the largest summed
log-likelihood, `acc_norm` the largest per byte; hyft picks the largest mean per token. They agree where choices
have equal token counts (acc) or tokens are bytes (acc_norm), given the same context and " "-prefixed choices.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hyft.errors import ConfigError


def lm_eval_api():
    """lm-eval's (HFLM, TaskManager); a ConfigError with the install command when it is missing."""
    try:
        import lm_eval  # noqa: F401
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ConfigError("--harness needs lm-evaluation-harness: pip install 'hyft[harness]'") from None
    return HFLM, TaskManager


def plain_model(model):
    """The model lm-eval should see: LoRA merged into its base; prefix tuning kept (its logits line up)."""
    try:
        from peft import PeftModel
    except ImportError:
        return model
    if not isinstance(model, PeftModel):
        return model
    kind = str(model.peft_config[model.active_adapter].peft_type).split(".")[-1].upper()
    if kind in ("PROMPT_TUNING", "P_TUNING"):
        raise ConfigError(
            "--harness: a prompt-tuning adapter prepends virtual tokens to the logits, which lm-eval cannot line up "
            "with its inputs; evaluate it with hyft eval --task instead"
        )
    if kind == "LORA":
        return model.merge_and_unload()
    return model


def task_manager(tasks: list[str], include: list[str]):
    _, TaskManager = lm_eval_api()
    for path in include:
        if not Path(path).exists():
            raise ConfigError(f"--harness_include: {path} does not exist")
    if include:  # local task YAMLs alone index in well under a second; with lm-eval's thousands it takes longer
        tm = TaskManager(include_path=include, include_defaults=False)
        if all(t in tm.all_tasks for t in tasks):
            return tm
    tm = TaskManager(include_path=include or None)
    unknown = [t for t in tasks if t not in tm.all_tasks]
    if unknown:
        where = f" or in {', '.join(include)}" if include else ""
        raise ConfigError(f"--harness: unknown lm-eval task(s) {unknown}: not among lm-eval's tasks{where} "
                          "(a local task is a YAML file in a --harness_include directory)")  # fmt: skip
    return tm


def run_harness(
    model,
    tok,
    tasks: list[str],
    *,
    include: list[str] = (),
    batch_size: int = 8,
    limit: int | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool = False,
    seed: int = 0,
    max_length: int | None = None,
) -> dict[str, Any]:
    """lm-eval's results for `tasks` on an already loaded model: {"results": {task: {metric: value}}, ...}, plus
    the per-example samples under "samples"."""
    HFLM, _ = lm_eval_api()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    tm = task_manager(list(tasks), list(include))
    model = plain_model(model)
    model.eval()
    kw = {"max_length": max_length} if max_length else {}
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size, **kw)
    from lm_eval import simple_evaluate

    out = simple_evaluate(
        model=lm, tasks=list(tasks), task_manager=tm, limit=limit, num_fewshot=num_fewshot, log_samples=True,
        apply_chat_template=apply_chat_template, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed, bootstrap_iters=0,
    )  # fmt: skip
    if out is None:  # a non-zero rank under accelerate
        return {}
    return {"results": out["results"], "n_samples": out.get("n-samples", {}), "config": _jsonable(out.get("config")),
            "versions": out.get("versions", {}), "samples": _jsonable(out.get("samples", {}))}  # fmt: skip


def _jsonable(value):
    import json

    return json.loads(json.dumps(value, default=str))


def table(results: dict[str, Any]) -> str:
    from hyft.report import text_table

    rows = []
    for task, metrics in sorted(results.get("results", {}).items()):
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not key.startswith("alias") and "_stderr" not in key:
                rows.append([task, key.split(",")[0], key.split(",")[1] if "," in key else "", value])
    return text_table(["task", "metric", "filter", "value"], rows)
