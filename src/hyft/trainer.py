"""The training loop shared by every method: random reshuffling, the hybrid step, evaluation, checkpoints.

The Trainer wires a run together (model, PEFT module, partition, optimizer, data, probe) and runs the loop; what
reacts to the loop (metrics.jsonl, TensorBoard, run.json, compare's curve, sweep's divergence stop) is a Callback
(callbacks.py) passed in `callbacks=`, not a subclass."""

from __future__ import annotations

import math
import platform
import resource
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from hyft import checkpoint as ckpt
from hyft import dist as hdist
from hyft import lock as hlock
from hyft import scoring
from hyft.callbacks import Callback, MetricsFile, RunFiles, RunReport, TensorBoard, Trackers
from hyft.config import Config
from hyft.data import DataOrder, load_data
from hyft.errors import ConfigError, StorageError
from hyft.evaluate import EvalOptions, evaluate_examples, headline, log_fields, summary
from hyft.guard import (
    DivergenceGuard,
    TrainingDiverged,
    TrainingInterrupted,
    deferred_signals,
    out_of_memory,
    perturbation_scales,
    warn_if_perturbation_vanishes,
)
from hyft.methods import Method, resolve
from hyft.models import adapter_parameters, attach_peft, load_model, output_head
from hyft.optim import HybridOptimizer
from hyft.partition import Partition, partition
from hyft.probe import PROBE, Probe, read_probe_rows, summarize, swapped
from hyft.schedule import lr_factor
from hyft.sinks import TRACKERS
from hyft.step import StepResult, hybrid_step, step_counts
from hyft.tasks.sft import render as render_chat
from hyft.zo.rng import DATA, mix


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


def build_optimizer(cfg: Config, model, method: Method, *, sharded: bool = False) -> tuple[HybridOptimizer, Partition]:
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
    if sharded:  # FSDP2: each rank perturbs and updates its own shards (hyft/zo/sharded.py)
        from hyft.zo.sharded import ShardedHybridOptimizer as optimizer_cls
    else:
        optimizer_cls = HybridOptimizer
    opt = optimizer_cls(
        model, part.fo, part.zo,
        fo_optimizer=cfg.fo.optimizer, fo_lr=cfg.fo.lr, fo_weight_decay=cfg.fo.weight_decay,
        fo_momentum=cfg.fo.momentum, zo_lr=cfg.zo.lr, zo_weight_decay=cfg.zo.weight_decay,
        zo_momentum=cfg.zo.momentum, mu=cfg.zo.mu, queries=cfg.zo.queries, distribution=cfg.zo.distribution,
        rounding=cfg.zo.rounding, fp32_master=cfg.zo.fp32_master, seed=cfg.seed,
        kernels=cfg.zo.kernels, scratch=cfg.zo.scratch, min_perturbation_scale=cfg.zo.min_perturbation_scale,
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

    def __init__(
        self,
        cfg: Config,
        *,
        model=None,
        tokenizer=None,
        data=None,
        reloadable: bool | None = None,
        callbacks: list[Callback] = (),
    ):
        """model/tokenizer: an already loaded model (else cfg.model is loaded). reloadable: whether cfg.model loads
        the original of the model passed in (default: only when the Trainer loads it itself); the end-of-run ZO
        ablation reloads it from there. callbacks: hooks into the loop (callbacks.py), after the run's own sinks."""
        self.cfg = cfg
        self.method = resolve(cfg)
        self.out = Path(cfg.train.output_dir)
        self.dist = hdist.setup(cfg)  # process group and this rank's device; refuses unsupported setups
        self.is_main = self.dist.is_main  # only rank 0 prints and writes files
        torch.manual_seed(cfg.seed)  # peft initialises adapters from the global RNG
        self._own_model = model is None if reloadable is None else reloadable
        if model is None:
            model, tokenizer = load_model(self.dist.model_config(cfg.model))
        self.tokenizer = tokenizer
        self.model = attach_peft(model, self.method.peft, cfg.peft, tokenizer)
        sharded = self.dist.strategy == "fsdp"
        if sharded and cfg.train.keep_checkpoints > 0:
            # Checkpoints store plain tensors; gathering FSDP2 shards into them is not built yet.
            raise ConfigError("train.keep_checkpoints: checkpoints are not supported under FSDP2 yet; pass 0")
        if sharded:  # the partition sets requires_grad, which FSDP2 keeps; the optimizer needs the sharded params
            build_optimizer(cfg, self.model, self.method)
            hdist.shard(self.model, self.dist)
        self.head = output_head(self.model)
        self.device = next(self.model.parameters()).device
        self.opt, self.partition = build_optimizer(cfg, self.model, self.method, sharded=sharded)
        self.train_model = hdist.wrap_ddp(self.model, self.dist)  # what the training forward runs through
        self.loss_sync = hdist.LossSync(self.dist, self.opt)
        self.scheduler = build_scheduler(cfg, self.opt)
        # conversations are rendered with the tokenizer's chat template, which validation (no model yet) lacks
        self.data = render_chat(data if data is not None else load_data(cfg), tokenizer)
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
        self.guard = DivergenceGuard(cfg.train.max_bad_steps, cfg.train.loss_bound)
        self.window: dict[str, list[torch.Tensor]] = {"loss": [], "zo_grad": [], "zo_grad_abs": []}  # since last log
        self.evals: list[dict[str, Any]] = []
        self.resumed_from: Path | None = None
        self.last_checkpoint: Path | None = None
        self.phase = "setup"  # what runs now, for out-of-memory messages
        self._signals: list[int] = []
        self._saved_at = time.monotonic()  # train.save_every_minutes counts from here, then from each checkpoint
        sinks = [
            RunFiles(),
            MetricsFile(),
            *([TensorBoard()] if "tensorboard" in cfg.train.report_to else []),
            *([Trackers()] if set(cfg.train.report_to) & set(TRACKERS) else []),
            RunReport(),
        ]
        self.callbacks: list[Callback] = [*sinks, *callbacks]
        self.probe = self.make_probe() if cfg.train.probe_every else None
        self.ablation: dict[str, Any] | None = None
        self._locks = 0  # holds of the output directory's lock (hyft/lock.py) taken by this trainer

    def fire(self, hook: str, *args) -> None:
        """Call `hook` (a Callback method name) on every callback, in order."""
        for cb in self.callbacks:
            getattr(cb, hook)(self, *args)

    # -- pieces -------------------------------------------------------------------------------------------------------
    def make_probe(self) -> Probe:
        """The probe (probe.py) on a fixed batch drawn once from the training split, from its own seeded stream."""
        t = self.cfg.train
        n = len(self.encoded["train"])
        g = torch.Generator().manual_seed(mix(DATA, self.cfg.seed, PROBE))
        idx = torch.randperm(n, generator=g)[: t.probe_batch or t.batch_size].tolist()
        batch = scoring.collate([self.encoded["train"][i] for i in idx], self.tokenizer.pad_token_id,
                                only_label=self.cfg.data.loss == "lm").to(self.device)  # fmt: skip
        return Probe(
            self.opt, self.model, lambda b: scoring.loss(self.model, self.head, b, self.cfg.data.loss), batch,
            fo_params=self.partition.fo, extra_directions=t.probe_directions,
            steps_per_epoch=math.ceil(n / t.batch_size), drift=t.probe_drift, head=self.head,
        )  # fmt: skip

    def loss_fn(self, batch: scoring.Batch) -> torch.Tensor:
        grad = torch.is_grad_enabled()
        self.phase = "FO forward" if grad else "ZO forward"
        out = scoring.loss(self.train_model, self.head, batch, self.cfg.data.loss)
        if grad:
            self.phase = "FO backward"  # what hybrid_step does next with this loss
        return out

    def next_micro_batches(self) -> list[scoring.Batch]:
        t = self.cfg.train
        idx = self.dist.local_slice(self.order.next(t.batch_size))  # this rank's part of the global batch
        k = t.grad_accum
        if len(idx) % k:
            raise ConfigError(f"train.batch_size {t.batch_size} is not divisible by train.grad_accum {k}")
        size = len(idx) // k
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
        """Hook: veto a step's update (both groups) before it is applied: the divergence guard (guard.py)."""
        reason = self.guard.check(result.loss, result.zo_grads, self.step + 1)
        if reason is None:
            return True
        value = result.loss.detach().float().item()
        self.log({"step": self.step + 1, "skipped": True, "reason": reason, "loss": value if math.isfinite(value)
                  else repr(value)})  # fmt: skip
        print(f"[hyft] step {self.step + 1}: skipped ({reason})", file=sys.stderr)
        return False

    def after_step(self, result: StepResult) -> None:
        """Hook: runs after every step: divergence stop, periodic checkpoint, deferred SIGINT/SIGTERM."""
        if result.applied:
            self.guard.good()
        if self.guard.stop:
            last = ckpt.list_checkpoints(self.out)
            kept = f"last good checkpoint kept: {last[-1]}" if last else "no checkpoint was written before"
            raise TrainingDiverged(f"stopped at {self.guard.stop}; nothing was updated from the bad state; {kept}")
        t = self.cfg.train
        every = t.save_every and self.step % t.save_every == 0
        overdue = t.save_every_minutes and time.monotonic() - self._saved_at >= 60 * t.save_every_minutes
        if self._signals or ((every or overdue) and self.step < t.steps):
            self.save_checkpoint()
        if self._signals:
            name = signal.Signals(self._signals[0]).name
            last = self.last_checkpoint
            then = (
                f"wrote checkpoint {last}; resume with: hyft train --resume {self.out}"
                if last
                else "wrote no checkpoint (train.keep_checkpoints 0), so it cannot be resumed"
            )
            raise TrainingInterrupted(f"interrupted by {name} after step {self.step}; {then}", self._signals[0])

    def train_step(self) -> StepResult:
        self.set_mode()
        probing = self.probe is not None and (self.step + 1) % self.cfg.train.probe_every == 0
        try:
            if probing:
                self.phase = "probe"
                self.probe.before_step()
            result = hybrid_step(
                self.opt, self.loss_fn, self.next_micro_batches(),
                schedule=self.method.schedule, dropout=self.cfg.train.dropout,
                accept=self.loss_sync.wrap(self.accept), no_sync=hdist.no_sync(self.train_model),
                update=self.probe.update if probing else None,
            )  # fmt: skip
        except torch.OutOfMemoryError as e:
            raise out_of_memory(self.phase, self.step + 1, self.device, e) from None
        if result.applied:
            self.scheduler.step()
        self.step += 1
        if probing:
            self.log({"step": self.step, **self.probe.after_step(result.zo_grads, result.applied)})
        return result

    def evaluate(self, split: str) -> dict[str, Any]:
        """An evaluation on the run's curve (callbacks see it in on_evaluate). See score_split."""
        report = self.score_split(split)
        self.fire("on_evaluate", report)
        return report

    def score_split(self, split: str) -> dict[str, Any]:
        """Accuracy by candidate scoring (calibrated with data.calibrate); generation tasks: exact match and F1."""
        try:
            report = evaluate_examples(
                self.model, self.head, self.tokenizer, self.data.split(split), EvalOptions.from_config(self.cfg),
                encoded=self.encoded[split],
            )  # fmt: skip
        except torch.OutOfMemoryError as e:
            raise out_of_memory("eval", self.step, self.device, e) from None
        return {"task": self.data.name, "split": split, "step": self.step, **report}

    # -- checkpoints (format: checkpoint/, docs/checkpoints.md) --------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything but the model tensors that a bit-exact resume needs."""
        opt = self.opt.state_dict()
        opt.pop("ledger")  # stored as ledger.json
        return {
            "trainer": {
                "step": self.step,
                "data_order": self.order.state_dict(),
                "elapsed_s": self.elapsed,
                "guard": self.guard.state_dict(),
                "window": {k: [t.detach().float().cpu().reshape(()) for t in v] for k, v in self.window.items()},
                "evals": self.evals,
                "rng": ckpt.rng_state(),
                **({"probe": self.probe.state.state_dict()} if self.probe is not None else {}),
            },
            "optimizer": opt,
            "scheduler": self.scheduler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], ledger: list | None = None) -> None:
        tr = state["trainer"]
        self.step = int(tr["step"])
        self.order.load_state_dict(tr["data_order"])
        self.elapsed = float(tr["elapsed_s"])
        self.guard.load_state_dict(tr["guard"])
        self.window = {k: [t.to(self.device) for t in v] for k, v in tr["window"].items()}
        self.evals = list(tr["evals"])
        ckpt.set_rng_state(tr["rng"])
        if self.probe is not None and "probe" in tr:
            self.probe.state.load_state_dict(tr["probe"])
        self.opt.load_state_dict({**state["optimizer"], "ledger": ledger or []})
        self.scheduler.load_state_dict(state["scheduler"])

    def changeable_tensors(self) -> dict[str, tuple[torch.nn.Parameter, str]]:
        """HF name -> (tensor, "zo" | "fo") for every base tensor this run can change (what a checkpoint stores)."""
        names = ckpt.base_names(self.model, adapter_parameters(self.model))
        return {names[id(p)]: (p, kind) for kind in ("zo", "fo") for p in getattr(self.partition, kind)
                if id(p) in names}  # fmt: skip

    def save_checkpoint(self) -> Path | None:
        """Write checkpoint `step` atomically (train.keep_checkpoints 0: none)."""
        if self.cfg.train.keep_checkpoints <= 0 or not self.is_main:  # DDP ranks hold identical weights
            return None
        self.last_checkpoint = ckpt.save_run(self)
        self._saved_at = time.monotonic()
        self.fire("on_save", self.last_checkpoint)
        return self.last_checkpoint

    def resume(self, path: str | Path) -> Path:
        """Continue from the latest complete checkpoint of a run directory (or from one checkpoint directory)."""
        self.lock()
        try:
            if self.is_main:
                ckpt.restore_moved_aside(ckpt.run_dir_of(path))
            found = ckpt.load_run(self, ckpt.find_checkpoint(path))
        except BaseException:
            self.unlock()
            raise
        self.resumed_from = self.last_checkpoint = found
        return found

    # -- outputs ------------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the output directory's lock: a second process writing there is refused (hyft/lock.py)."""
        if self.is_main:
            hlock.acquire(self.out, "hyft train")
            self._locks += 1

    def unlock(self) -> None:
        for _ in range(self._locks):
            hlock.release(self.out)
        self._locks = 0

    def prepare_output(self) -> None:
        self.dist.on_main(self._prepare_output)  # an error on rank 0 is raised on every rank

    def _prepare_output(self) -> None:
        self.lock()
        try:
            self.fire("on_prepare_output")  # RunFiles first (the directory, config.yaml), then metrics.jsonl, ...
        except StorageError:
            raise
        except OSError as e:
            raise ckpt.storage_error(e, self.out, "the run's files") from None

    def log(self, record: dict[str, Any]) -> None:
        """One metrics record, to every sink (metrics.jsonl, TensorBoard, ...): main rank only."""
        if self.is_main:
            self.fire("on_log", record)

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
            "distributed": self.dist.describe(),
            "forwards_per_step": self.counts[0] * self.cfg.train.grad_accum,
            "backwards_per_step": self.counts[1] * self.cfg.train.grad_accum,
            "params": self.partition.summary(),
            "data": [r.as_dict() for r in self.data.reports],
            "final": {e["split"]: headline(e)[1] for e in evals if e["step"] == self.step},
            "skipped_steps": self.guard.skipped,
            "zo_perturbation_scale": perturbation_scales(self.opt)
            if self.opt.zo_tensors or self.opt.excluded_zo
            else None,
            "checkpoint": self.checkpoint_report(),
            "probe": summarize(self.probe_rows(), self.opt) if self.probe is not None else None,
            "ablation": self.ablation,
        }

    def probe_rows(self) -> list[dict[str, Any]]:
        """This run's probe records, read back from metrics.jsonl (so a resumed run reports all of them)."""
        return read_probe_rows(self.out / "metrics.jsonl") if self.is_main else []

    # -- would I have got this without the ZO half? --------------------------------------------------------------------
    def original_base(self) -> list[torch.Tensor] | None:
        """x_0 of every ZO tensor (in zo_tensors order), or None where it cannot be had cheaply.

        From the probe's exact-drift copy if there is one, else by loading the model source again (on the CPU the
        loaded tensors are used as they are; on an accelerator they are copied there, only with ablate_zo true).
        """
        zo = self.opt.zo_tensors
        if self.probe is not None and self.probe.x0 is not None:
            return [self.probe.x0[t.index] for t in zo]
        if not self._own_model or (self.device.type != "cpu" and self.cfg.train.ablate_zo != "true"):
            return None
        original, _ = load_model(replace(self.dist.model_config(self.cfg.model), device="cpu"))
        by_name = dict(original.named_parameters())
        names = ckpt.base_names(self.model, adapter_parameters(self.model))
        return [by_name[names[id(t.param)]].detach().to(self.device) for t in zo]

    def ablate_zo(self, evals: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Evaluate the trained PEFT module on the original base too; the difference is what the ZO half added."""
        mode = self.cfg.train.ablate_zo
        if mode == "false" or not (self.opt.zo_tensors and self.opt.fo is not None):
            return None
        x0 = self.original_base()
        if x0 is None:
            why = "model passed in code" if not self._own_model else f"on {self.device.type}; pass train.ablate_zo true"
            print(f"[hyft] ZO ablation skipped ({why})", file=sys.stderr)
            return {"skipped": why}
        final = {e["split"]: e for e in evals if e["step"] == self.step}
        out: dict[str, Any] = {}
        with swapped([t.param for t in self.opt.zo_tensors], x0):
            for split, e in final.items():
                name, updated = headline(e)
                original = headline(self.score_split(split))[1]  # not a curve point
                out[split] = {"metric": name, "updated_base": updated, "original_base": original,
                              "zo_points": round(100 * (updated - original), 4)}  # fmt: skip
        if self.is_main:
            for split, r in out.items():
                print(
                    f"[hyft] ZO ablation {split}: {r['metric']} {r['updated_base']:.4f} with the updated base, "
                    f"{r['original_base']:.4f} on the original base: {r['zo_points']:+.2f} points from the ZO half"
                )
        return out

    def checkpoint_report(self) -> dict[str, Any] | None:
        """Sizes of the last checkpoint: base tensors in safetensors vs the seed ledger that rebuilds the ZO ones."""
        c = self.last_checkpoint
        if c is None or not c.is_dir():
            return None
        ledger = c / "ledger.json"
        return {
            "path": str(c),
            "base_safetensors_bytes": ckpt.dir_bytes(c / "base", "*.safetensors"),
            "adapter_bytes": ckpt.dir_bytes(c / "adapter", "*.safetensors") if (c / "adapter").is_dir() else 0,
            "ledger_bytes": ledger.stat().st_size if ledger.exists() else 0,
            "ledger_updates": len(self.opt.ledger),
            "total_bytes": ckpt.dir_bytes(c),
        }

    # -- the loop -----------------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        finally:
            try:
                self.fire("on_close")
            finally:
                self.unlock()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        self.prepare_output()
        self.fire("on_train_begin")
        evals = self.evals
        if cfg.train.eval_before and self.step == 0:
            for split in ("dev", "test"):
                if self.encoded[split]:
                    evals.append(self.evaluate(split))
                    if self.is_main:
                        print(f"[hyft] step 0 {split} {summary(evals[-1])}")
        if self.probe is not None and self.step == 0:
            self.probe.start()
        elif self.probe is not None and not self.probe.state.x0_sq_by_kind:
            self.probe.start()  # resumed from a checkpoint written without probes: drift counts from here
        if self.opt.zo_tensors and self.step == 0:
            warn_if_perturbation_vanishes([t.param for t in self.opt.zo_tensors], cfg.zo.mu, cfg.zo.distribution)
        bar = _progress(cfg.train.steps, cfg.train.progress and self.is_main)
        bar.update(self.step)
        window = self.window  # lists kept on self: a checkpoint between two log lines carries them
        t0 = time.perf_counter() - self.elapsed
        with deferred_signals(lambda: f"step {self.step + 1}") as self._signals:
            while self.step < cfg.train.steps:
                self.fire("on_step_begin")
                result = self.train_step()
                self.fire("on_update", result)
                if result.applied:
                    window["loss"].append(result.loss)
                    if result.zo_grads is not None:
                        window["zo_grad"].append(result.zo_grads.mean())
                        window["zo_grad_abs"].append(result.zo_grads.abs().mean())
                if self.step % cfg.train.log_every == 0 or self.step == cfg.train.steps:
                    record = self.metrics_record(window["loss"], window["zo_grad"], time.perf_counter() - t0)
                    self.log(record)
                    bar.set_postfix(loss=f"{record['loss']:.4f}")
                    for v in window.values():
                        v.clear()
                if cfg.train.eval_every and self.step % cfg.train.eval_every == 0 and self.step < cfg.train.steps:
                    evals.append(self.evaluate("dev"))
                    self.log({"step": self.step, **log_fields("dev", evals[-1])})
                bar.update(1)
                self.elapsed = time.perf_counter() - t0
                self.after_step(result)
                self.fire("on_step_end", result)
            if self.last_checkpoint is None or ckpt.checkpoint_dir(self.out, self.step) != self.last_checkpoint:
                self.save_checkpoint()
        bar.close()
        self.elapsed = time.perf_counter() - t0
        for split in ("dev", "test"):
            if self.encoded[split]:
                evals.append(self.evaluate(split))
                if self.is_main:
                    print(f"[hyft] step {self.step} {split} {summary(evals[-1])}")
        self.ablation = self.ablate_zo(evals)
        info = self.run_info(evals)
        self.fire("on_train_end", info)  # eval.json and run.json (RunReport), TensorBoard's ablation points, ...
        return info

    def metrics_record(self, losses: list[torch.Tensor], grads: list[torch.Tensor], elapsed: float) -> dict[str, Any]:
        loss = torch.stack(losses).float().mean().item() if losses else math.nan  # one host sync per log interval
        rec: dict[str, Any] = {"step": self.step, "epoch": self.order.epoch, "loss": loss}
        if grads:
            rec["zo_projected_grad"] = torch.stack(grads).float().mean().item()
            if len(self.window["zo_grad_abs"]) == len(grads):
                rec["zo_projected_grad_abs"] = torch.stack(self.window["zo_grad_abs"]).float().mean().item()
            # f(x + mu z) - f(x) (onesided) / (f(x + mu z) - f(x - mu z)) / 2 (central), averaged over queries
            rec["zo_loss_delta"] = rec["zo_projected_grad"] * self.cfg.zo.mu
        for g in self.opt.param_groups:
            rec[f"lr_{g['kind']}"] = g["lr"]
        rec["forwards"], rec["backwards"] = self.counts[0], self.counts[1]
        rec["elapsed_s"] = round(elapsed, 3)  # the only field that differs between identical runs
        return rec


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc="hyft", unit="step", dynamic_ncols=True)
