"""The training loop shared by every method: random reshuffling, the hybrid step, evaluation, logs."""

from __future__ import annotations

import json
import math
import platform
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from hyft import scoring
from hyft.config import Config, save_config
from hyft.errors import ConfigError
from hyft.evaluate import EvalOptions, evaluate_examples, headline, log_fields, summary
from hyft.methods import Method, resolve
from hyft.models import adapter_parameters, attach_peft, load_model, output_head
from hyft.optim import HybridOptimizer
from hyft.partition import Partition, partition
from hyft.schedule import lr_factor
from hyft.step import StepResult, hybrid_step, step_counts
from hyft.zo.rng import DATA, mix


@dataclass
class DataOrder:
    """Random reshuffling: a fresh seeded permutation every epoch; (epoch, position) is the whole state."""

    n: int
    seed: int
    epoch: int = 0
    position: int = 0
    _perm: list[int] = field(default_factory=list, repr=False)

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(mix(DATA, self.seed, epoch))
        return torch.randperm(self.n, generator=g).tolist()

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self._perm:
                self._perm = self.permutation(self.epoch)
            take = self._perm[self.position : self.position + k - len(out)]
            out += take
            self.position += len(take)
            if self.position >= self.n:
                self.epoch, self.position, self._perm = self.epoch + 1, 0, []
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._perm = int(state["epoch"]), int(state["position"]), []


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def package_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("hyft", "torch", "transformers", "peft", "accelerate"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def load_data(cfg: Config):
    from hyft import tasks

    d = cfg.data
    kw = dict(n_train=d.n_train, n_dev=d.n_dev, n_test=d.n_test, seed=cfg.seed)
    if d.task == "user":
        if not d.dataset:
            raise ConfigError("data.dataset: task 'user' needs a dataset spec")
        return tasks.load_user_task(d.dataset, **kw)
    return tasks.load_task(d.task, d.data_dir, **kw, **d.options)


def build_optimizer(cfg: Config, model, method: Method) -> tuple[HybridOptimizer, Partition]:
    head = output_head(model)
    part = partition(
        model,
        adapter_params=adapter_parameters(model),
        base=method.base,
        adapter=method.adapter,
        head_modules=[head] if head is not None else [],
        zo_embeddings=cfg.zo.embeddings,
        zo_head=cfg.zo.lm_head,
        include=cfg.zo.include,
        exclude=cfg.zo.exclude,
    )
    if not part.fo and not part.zo:
        raise ConfigError("nothing to train: the partition left no FO and no ZO tensors (check zo.include/exclude)")
    opt = HybridOptimizer(
        model, part.fo, part.zo,
        fo_optimizer=cfg.fo.optimizer, fo_lr=cfg.fo.lr, fo_weight_decay=cfg.fo.weight_decay,
        fo_momentum=cfg.fo.momentum, zo_lr=cfg.zo.lr, zo_weight_decay=cfg.zo.weight_decay,
        zo_momentum=cfg.zo.momentum, mu=cfg.zo.mu, queries=cfg.zo.queries, distribution=cfg.zo.distribution,
        rounding=cfg.zo.rounding, fp32_master=cfg.zo.fp32_master, seed=cfg.seed,
    )  # fmt: skip
    return opt, part


def build_scheduler(cfg: Config, opt: HybridOptimizer) -> torch.optim.lr_scheduler.LambdaLR:
    fns = []
    for g in opt.param_groups:
        sc = cfg.zo if g["kind"] == "zo" else cfg.fo
        fns.append(
            lambda s, sc=sc: lr_factor(
                s, schedule=sc.lr_schedule, total_steps=cfg.train.steps, warmup_steps=sc.warmup_steps
            )
        )
    return torch.optim.lr_scheduler.LambdaLR(opt, fns)


class Trainer:
    """Owns one run: model, optimizer, data order, output directory."""

    def __init__(self, cfg: Config, *, model=None, tokenizer=None, data=None):
        self.cfg = cfg
        self.method = resolve(cfg)
        self.out = Path(cfg.train.output_dir)
        torch.manual_seed(cfg.seed)  # peft initialises adapters from the global RNG
        if model is None:
            model, tokenizer = load_model(cfg.model)
        self.tokenizer = tokenizer
        self.model = attach_peft(model, self.method.peft, cfg.peft)
        self.head = output_head(self.model)
        self.device = next(self.model.parameters()).device
        self.opt, self.partition = build_optimizer(cfg, self.model, self.method)
        self.scheduler = build_scheduler(cfg, self.opt)
        self.data = data if data is not None else load_data(cfg)
        enc = lambda exs: [scoring.encode(tokenizer, e, cfg.data.max_length) for e in exs]
        self.encoded = {s: enc(self.data.split(s)) for s in ("train", "dev", "test")}
        if not self.encoded["train"]:
            raise ConfigError(f"data: task {self.data.name!r} has no training examples")
        self.order = DataOrder(len(self.encoded["train"]), cfg.seed)
        self.step = 0
        self.counts = step_counts(
            self.method.schedule, self.opt.fo is not None, bool(self.opt.zo_tensors), cfg.zo.queries
        )
        self.elapsed = 0.0

    # -- pieces -------------------------------------------------------------------------------------------------------
    def loss_fn(self, batch: scoring.Batch) -> torch.Tensor:
        return scoring.loss(self.model, self.head, batch, self.cfg.data.loss)

    def next_micro_batches(self) -> list[scoring.Batch]:
        t = self.cfg.train
        idx = self.order.next(t.batch_size)
        k = t.grad_accum
        if t.batch_size % k:
            raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum {k}")
        size = t.batch_size // k
        pad = self.tokenizer.pad_token_id
        only_label = self.cfg.data.loss == "lm"
        return [
            scoring.collate([self.encoded["train"][i] for i in idx[j * size : (j + 1) * size]], pad,
                            only_label=only_label).to(self.device)
            for j in range(k)
        ]  # fmt: skip

    def set_mode(self) -> None:
        # dropout off: eval mode makes every forward of a step the same function (see step.py).
        self.model.train(self.cfg.train.dropout == "shared")

    def accept(self, result: StepResult) -> bool:
        """Hook: veto a step's update (both groups) before it is applied."""
        return True

    def after_step(self, result: StepResult) -> None:
        """Hook: runs after every step (checkpointing, interruption checks)."""

    def train_step(self) -> StepResult:
        self.set_mode()
        result = hybrid_step(
            self.opt, self.loss_fn, self.next_micro_batches(),
            schedule=self.method.schedule, dropout=self.cfg.train.dropout, accept=self.accept,
        )  # fmt: skip
        if result.applied:
            self.scheduler.step()
        self.step += 1
        return result

    def evaluate(self, split: str) -> dict[str, Any]:
        """Accuracy by candidate scoring (calibrated with data.calibrate); generation tasks: exact match and F1."""
        report = evaluate_examples(
            self.model, self.head, self.tokenizer, self.data.split(split), EvalOptions.from_config(self.cfg),
            encoded=self.encoded[split],
        )  # fmt: skip
        return {"task": self.data.name, "split": split, "step": self.step, **report}

    # -- outputs ------------------------------------------------------------------------------------------------------
    def prepare_output(self) -> None:
        if (self.out / "run.json").exists() and not self.cfg.train.overwrite:
            raise ConfigError(
                f"train.output_dir: {self.out} already holds a run; pass --train.overwrite true or another directory"
            )
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "metrics.jsonl").write_text("")
        save_config(self.cfg, self.out / "config.yaml")

    def log(self, record: dict[str, Any]) -> None:
        with open(self.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def run_info(self, evals: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "config": self.cfg.to_dict(),
            "method": vars(self.method) | {"name": self.cfg.method},
            "versions": package_versions(),
            "seed": self.cfg.seed,
            "steps": self.step,
            "wall_time_s": round(self.elapsed, 3),
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "device": str(self.device),
            "forwards_per_step": self.counts[0] * self.cfg.train.grad_accum,
            "backwards_per_step": self.counts[1] * self.cfg.train.grad_accum,
            "params": self.partition.summary(),
            "data": [r.as_dict() for r in self.data.reports],
            "final": {e["split"]: headline(e)[1] for e in evals if e["step"] == self.step},
        }

    # -- the loop -----------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.prepare_output()
        evals: list[dict[str, Any]] = []
        if cfg.train.eval_before:
            for split in ("dev", "test"):
                if self.encoded[split]:
                    evals.append(self.evaluate(split))
                    print(f"[hyft] step 0 {split} {summary(evals[-1])}")
        bar = _progress(cfg.train.steps, cfg.train.progress)
        window: list[torch.Tensor] = []
        grads: list[torch.Tensor] = []
        t0 = time.perf_counter()
        while self.step < cfg.train.steps:
            result = self.train_step()
            window.append(result.loss)
            if result.zo_grads is not None:
                grads.append(result.zo_grads.mean())
            if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                record = self.metrics_record(window, grads, time.perf_counter() - t0)
                self.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
                window, grads = [], []
            if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                evals.append(self.evaluate("dev"))
                self.log({"step": self.step, **log_fields("dev", evals[-1])})
            bar.update(1)
            self.after_step(result)
        bar.close()
        self.elapsed = time.perf_counter() - t0
        for split in ("dev", "test"):
            if self.encoded[split]:
                evals.append(self.evaluate(split))
                print(f"[hyft] step {self.step} {split} {summary(evals[-1])}")
        (self.out / "eval.json").write_text(json.dumps(evals, indent=1))
        info = self.run_info(evals)
        (self.out / "run.json").write_text(json.dumps(info, indent=1))
        return info

    def metrics_record(self, losses: list[torch.Tensor], grads: list[torch.Tensor], elapsed: float) -> dict[str, Any]:
        loss = torch.stack(losses).float().mean().item() if losses else math.nan  # one host sync per log interval
        rec: dict[str, Any] = {"step": self.step, "epoch": self.order.epoch, "loss": loss}
        if grads:
            rec["zo_projected_grad"] = torch.stack(grads).float().mean().item()
        for g in self.opt.param_groups:
            rec[f"lr_{g['kind']}"] = g["lr"]
        rec["forwards"], rec["backwards"] = self.counts[0], self.counts[1]
        rec["elapsed_s"] = round(elapsed, 3)  # the only field that differs between identical runs
        return rec


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="hyft", unit="step", dynamic_ncols=True)
