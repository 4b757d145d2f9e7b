"""Hybrid fine-tuning inside Hugging Face `transformers.Trainer`.

    args = HybridTrainingArguments(output_dir="out", learning_rate=1e-3, zo_lr=1e-6, optim="sgd", ...)
    trainer = HybridTrainer(model=peft_model, args=args, train_dataset=..., data_collator=...)
    trainer.train()                                   # or train(resume_from_checkpoint=True)

Only public hooks are overridden: `create_optimizer` builds a HybridOptimizer whose param groups are tagged "fo"
(the trainable PEFT tensors, stepped by SGD or AdamW from `optim`, `learning_rate`, `weight_decay`, Adam betas)
and "zo" (the base weights, `zo_lr`); Trainer's own scheduler then drives both groups' learning rates, and its
gradient accumulation, clipping (FO only), logging and checkpointing work unchanged. `training_step` runs
Trainer's forward/backward for the FO group and then the ZO forwards on the same micro-batch; `compute_loss`
captures the micro-batch and its unperturbed loss (the onesided baseline). `save_model` adds the updated base model
(OUTPUT/base, a plain HF directory) and the seed ledger next to peft's adapter-only save, and `train` loads that base
back on `resume_from_checkpoint` before Trainer restores the adapter, optimizer, scheduler and RNG. `log` adds the
ZO projected gradient and the ZO learning rate.

Gradient accumulation: every micro-batch of one optimizer step is evaluated along the same directions (the
direction key is the optimizer's ZO step, which advances only in optimizer.step()). Each micro-batch contributes
(L_m(x + mu z) - L_m(x)) / mu, with L_m scaled exactly as Trainer scales the loss it backpropagates (by 1/k, or by
the step's token count when the model normalises by num_items_in_batch); the contributions are summed. So the ZO
estimate of k micro-batches of b equals the one of a single batch of k*b, as the FO gradient does
(tests/test_hf_trainer.py).

Dropout: all forwards of a micro-batch (FO and perturbed) draw the same masks (the RNG is re-seeded from
(seed, optimizer step, micro-batch) inside fork_rng), so the compared losses are the same function. The optimizer step
(HybridOptimizer.steps) advances with every method, and it is restored on resume with the optimizer state.

One process only (no DDP/FSDP/DeepSpeed): the ZO losses would need an all-reduce, which this integration does not do.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from hyft.checkpoint import base_names, load_hf_weights, persistent_buffers, save_hf_weights, unwrap
from hyft.config import mirrored_field
from hyft.models import adapter_parameters, output_head
from hyft.optim import HybridOptimizer
from hyft.partition import partition
from hyft.replay import LEDGER, ledger_document, write_ledger
from hyft.zo.estimator import projected_grads
from hyft.zo.rng import DATA, mix

BASE_DIR = "base"
_FO = {"sgd": "sgd", "adamw_torch": "adamw", "adamw_torch_fused": "adamw", "adamw_hf": "adamw"}


@dataclass
class HybridTrainingArguments(TrainingArguments):
    """TrainingArguments plus the zeroth-order group. `learning_rate`, `weight_decay`, `optim` (sgd or adamw_torch)
    and the Adam betas configure the first-order (PEFT) group."""

    # Defaults, help and choices are config.py's (one declaration per knob); only the names differ (zo.lr: zo_lr).
    zo_lr: float = mirrored_field("zo.lr", help="learning rate of the ZO group (scheduled like learning_rate)")
    zo_mu: float = mirrored_field("zo.mu")
    zo_queries: int = mirrored_field("zo.queries")
    zo_schedule: str = field(  # the method's default on the CLI (None); here always the paper's
        default="onesided", metadata={"help": "onesided (paper) or central (MeZO)", "choices": ("onesided", "central")}
    )
    zo_distribution: str = mirrored_field("zo.distribution")
    zo_weight_decay: float = mirrored_field("zo.weight_decay")
    zo_momentum: float = mirrored_field("zo.momentum")
    zo_rounding: str = mirrored_field("zo.rounding")
    zo_fp32_master: bool = mirrored_field("zo.fp32_master")
    zo_embeddings: bool = mirrored_field("zo.embeddings")
    zo_lm_head: bool = mirrored_field("zo.lm_head")
    zo_include: list[str] = mirrored_field("zo.include")
    zo_exclude: list[str] = mirrored_field("zo.exclude")
    zo_base: str = field(
        default="zo", metadata={"help": "base weights: zo (hybrid) or frozen (plain PEFT)", "choices": ("zo", "frozen")}
    )

    def __post_init__(self):
        super().__post_init__()
        checks = [
            (self.zo_lr >= 0, f"zo_lr must be >= 0, got {self.zo_lr}"),
            (self.zo_mu > 0, f"zo_mu must be > 0, got {self.zo_mu}"),
            (self.zo_queries >= 1, f"zo_queries must be >= 1, got {self.zo_queries}"),
            (0 <= self.zo_momentum < 1, f"zo_momentum must be in [0, 1), got {self.zo_momentum}"),
            *((getattr(self, f.name) in f.metadata["choices"], f"{f.name} {getattr(self, f.name)!r}: choose from "
               f"{', '.join(f.metadata['choices'])}") for f in fields(self) if f.name.startswith("zo_")
              and "choices" in f.metadata),
            (str(getattr(self.optim, "value", self.optim)) in _FO, f"optim {self.optim!r}: HybridTrainer supports "
             f"{', '.join(_FO)}"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


class HybridTrainer(Trainer):
    """transformers.Trainer with a zeroth-order base-weight group next to the first-order PEFT group."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.args, HybridTrainingArguments):
            raise TypeError("HybridTrainer needs HybridTrainingArguments")
        if self.args.world_size > 1:
            raise NotImplementedError("HybridTrainer runs on one process (the ZO losses are not all-reduced)")
        self._capture = False
        self._zo_inputs: dict[str, Any] | None = None
        self._zo_f0: torch.Tensor | None = None
        self._micro = (-1, 0)  # (optimizer step, micro-batches seen in it)
        self._logged: int | None = None  # ledger entries already summarised in logs (set at the first step)

    # -- optimizer ----------------------------------------------------------------------------------------------------
    @property
    def hybrid_optimizer(self) -> HybridOptimizer:
        opt = self.optimizer
        while not isinstance(opt, HybridOptimizer) and hasattr(opt, "optimizer"):  # accelerate's wrapper
            opt = opt.optimizer
        return opt

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = self.model if model is None else model
            a = self.args
            head = output_head(model)
            part = partition(
                model, adapter_params=adapter_parameters(model), base=a.zo_base, adapter="fo",
                head_modules=[head] if head is not None else [], zo_embeddings=a.zo_embeddings, zo_head=a.zo_lm_head,
                include=a.zo_include, exclude=a.zo_exclude,
            )  # fmt: skip
            self.optimizer = HybridOptimizer(
                model, part.fo, part.zo, fo_optimizer=_FO[str(getattr(a.optim, "value", a.optim))],
                fo_lr=a.learning_rate, fo_weight_decay=a.weight_decay, fo_betas=(a.adam_beta1, a.adam_beta2),
                zo_lr=a.zo_lr, zo_weight_decay=a.zo_weight_decay, zo_momentum=a.zo_momentum, mu=a.zo_mu,
                queries=a.zo_queries, distribution=a.zo_distribution, rounding=a.zo_rounding,
                fp32_master=a.zo_fp32_master, seed=a.seed,
            )  # fmt: skip
        return self.optimizer

    # -- the step -----------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _same_masks(self, seed: int):
        devices = [self.args.device] if self.args.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        capture, self._capture = self._capture, False
        if capture:
            self._zo_inputs = dict(inputs)  # Trainer may pop "labels" from the dict it passes on
        out = super().compute_loss(model, dict(inputs), return_outputs, num_items_in_batch)
        if capture:
            self._zo_f0 = (out[0] if return_outputs else out).detach()
        return out

    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """Whether Trainer treats compute_loss's value as already normalised over the accumulated batch (the rule
        Trainer.compute_loss documents), else it divides it by the number of micro-batches."""
        if getattr(self, "loss_is_scaled_for_ga", None) is not None:
            return bool(self.loss_is_scaled_for_ga)
        return bool(self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    def training_step(self, model, inputs, num_items_in_batch=None):
        opt = self.hybrid_optimizer
        if self._logged is None:  # a resumed run's ledger already holds the steps before the checkpoint
            self._logged = len(opt.ledger)
        step, seen = self._micro
        self._micro = (opt.steps, seen + 1 if step == opt.steps else 0)
        seed = mix(DATA, opt.seed, opt.steps, self._micro[1], 11)
        k = getattr(self, "current_gradient_accumulation_steps", None) or self.args.gradient_accumulation_steps
        scale = 1.0 if self._loss_is_scaled_for_ga(num_items_in_batch) else 1.0 / k
        self._capture = True
        if opt.fo is not None:
            with self._same_masks(seed):
                loss = super().training_step(model, inputs, num_items_in_batch)
        else:  # ZO only: nothing to backpropagate
            model.train()
            device_inputs = {k_: v.to(self.args.device) if torch.is_tensor(v) else v for k_, v in inputs.items()}
            with torch.no_grad(), self.compute_loss_context_manager(), self._same_masks(seed):
                self.compute_loss(model, device_inputs, num_items_in_batch=num_items_in_batch)
            loss = self._zo_f0 * scale
        self._capture = False
        if opt.zo_tensors:
            inputs, f0 = self._zo_inputs, self._zo_f0.float()
            self._zo_inputs = None

            def f() -> torch.Tensor:
                with self.compute_loss_context_manager(), self._same_masks(seed):
                    return super(HybridTrainer, self).compute_loss(model, dict(inputs), False, num_items_in_batch)

            onesided = self.args.zo_schedule == "onesided"
            grads, _ = projected_grads(
                lambda: f().float(), opt.perturbed, estimator=self.args.zo_schedule, queries=opt.queries, mu=opt.mu,
                baseline=f0 if onesided else None,
            )  # fmt: skip
            # this micro-batch's share of the step's estimate, in units the optimizer averages over k micro-batches
            opt.accumulate_zo(grads * (scale * k))
        return loss

    # -- logging ------------------------------------------------------------------------------------------------------
    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        opt = self.hybrid_optimizer if self.optimizer is not None else None
        if opt is not None and "loss" in logs and opt.zo_group is not None:
            new = opt.ledger[self._logged or 0 :]
            if new:
                g = torch.stack([c.float().sum() for _, _, _, c in new])  # sum_j c_j = mean_j g_j
                logs["zo_projected_grad"] = round(g.mean().item(), 6)
                logs["zo_projected_grad_abs"] = round(g.abs().mean().item(), 6)
                logs["zo_loss_delta"] = logs["zo_projected_grad"] * opt.mu
            logs["zo_learning_rate"] = opt.zo_group["lr"]
            self._logged = len(opt.ledger)
        super().log(logs, *args, **kwargs)

    # -- saving and resuming ------------------------------------------------------------------------------------------
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save (for a peft model: the adapter only) + the updated base model and the seed ledger."""
        super().save_model(output_dir, _internal_call)
        if not self.args.should_save:
            return
        out = Path(output_dir if output_dir is not None else self.args.output_dir)
        model = self.model
        if hasattr(model, "peft_config"):
            adapter = adapter_parameters(model)
            by_id = {id(p): p for p in model.parameters()}
            tensors = {name: by_id[i].detach() for i, name in base_names(model, adapter).items()}
            seen = {t.data_ptr() for t in tensors.values()}
            for name, b in persistent_buffers(model).items():
                if name not in tensors and b.data_ptr() not in seen:
                    tensors[name] = b.detach()
            save_hf_weights(out / BASE_DIR, tensors, extra={"complete": True, "written_by": "HybridTrainer"})
            unwrap(model).config.save_pretrained(str(out / BASE_DIR))
        if self.optimizer is not None and self.hybrid_optimizer.zo_tensors:
            opt = self.hybrid_optimizer
            adapter_ids = {id(p) for p in adapter_parameters(model)}
            names = base_names(model, [p for p in model.parameters() if id(p) in adapter_ids])
            fo_base = sorted(names[id(p)] for g in opt.param_groups if g["kind"] == "fo" for p in g["params"]
                             if id(p) in names)  # fmt: skip
            source = {"name": getattr(unwrap(model).config, "_name_or_path", None), "revision": None,
                      "dtype": str(opt.zo_tensors[0].param.dtype)[6:]}  # fmt: skip
            write_ledger(ledger_document(opt, model, adapter_ids=adapter_ids, fo_base=fo_base, source=source),
                         out / LEDGER)  # fmt: skip

    def train(self, resume_from_checkpoint: str | bool | None = None, *args, **kwargs):
        """Trainer.train; on resume, first restore the updated base weights (Trainer restores the rest)."""
        path = resume_from_checkpoint
        if path is True:
            from transformers.trainer_utils import get_last_checkpoint

            path = get_last_checkpoint(self.args.output_dir)
        if isinstance(path, (str, os.PathLike)) and hasattr(self.model, "peft_config"):
            base = Path(path) / BASE_DIR
            if not base.is_dir():
                from hyft.checkpoint import CheckpointError

                raise CheckpointError(
                    f"{path}: no {BASE_DIR}/ (not written by HybridTrainer?): resuming would restart the base model "
                    "from its original weights and lose the ZO progress"
                )
            model = self.model
            by_id = {id(p): p for p in model.parameters()}
            targets = {name: by_id[i] for i, name in base_names(model, adapter_parameters(model)).items()}
            params = set(targets)
            targets.update({n: b for n, b in persistent_buffers(model).items() if n not in targets})
            missing = sorted(params - set(load_hf_weights(base, targets, exact_set=False)))
            if missing:
                from hyft.checkpoint import CheckpointError

                raise CheckpointError(f"{base}: lacks {len(missing)} base tensors (e.g. {missing[0]!r})")
        return super().train(resume_from_checkpoint, *args, **kwargs)
