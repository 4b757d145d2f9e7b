"""Multi-process hybrid training on torch.distributed: DDP (data parallel) and FSDP2 (sharded base weights).

What crosses the wire per step (docs/distributed.md has the numbers):
  * the PEFT / first-order gradients, all-reduced by DistributedDataParallel (or reduce-scattered by FSDP2);
  * one all_reduce of 1 + 2q floats: the loss and the q projected gradients (summed over micro-batches and per query
    mean). Every rank computes g_j = (f(x + mu z_j) - f(x)) / mu on its own shard of the batch; g is linear in the
    losses, so the mean of the ranks' g equals g of the mean losses, and one all_reduce right before the update
    replaces one per forward. Every rank regenerates the same z from the shared seed and applies the same update.
FSDP2 additionally all-gathers the weights in every forward (that is what sharding costs).

`setup(cfg)` reads the launcher's environment (torchrun and `accelerate launch` set WORLD_SIZE, RANK, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), refuses setups hyft cannot run correctly, and starts the process group: NCCL on GPUs,
gloo on CPU.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import datetime
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from hyft.config import choices
from hyft.errors import ConfigError, HyftError

STRATEGIES = choices("dist.strategy")
BACKENDS = choices("dist.backend")


def _truthy(value: str | None) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _int_env(env, key: str, default: int = 1) -> int:
    try:
        return int(env.get(key, default))
    except (TypeError, ValueError):
        return default


def check_environment(env=os.environ) -> None:
    """Refuse launcher configurations hyft would silently mis-run (read from accelerate's launch environment)."""
    if _truthy(env.get("ACCELERATE_USE_DEEPSPEED")):
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "")
        if stage == "3":
            raise ConfigError(
                "DeepSpeed ZeRO-3 is not supported: it partitions the weights behind its own hooks, where hyft's "
                "zeroth-order perturbation cannot reach them. Use FSDP2 (accelerate launch --use_fsdp "
                "--fsdp_version 2, or torchrun with --dist.strategy fsdp)"
            )
        raise ConfigError(
            f"DeepSpeed (ZeRO stage {stage or '?'}) is not supported: hyft does not run a DeepSpeed engine, so its "
            "settings would be ignored. Launch with plain DDP (accelerate launch --multi_gpu, or torchrun)"
        )
    if _truthy(env.get("ACCELERATE_USE_FSDP")) and env.get("FSDP_VERSION", "1").strip() != "2":
        raise ConfigError(
            "FSDP1 (FullyShardedDataParallel) is not supported: use FSDP2 (accelerate launch --use_fsdp "
            "--fsdp_version 2, or torchrun with --dist.strategy fsdp)"
        )
    if _truthy(env.get("ACCELERATE_USE_MEGATRON_LM")):
        raise ConfigError("Megatron-LM (tensor/pipeline parallelism) is not supported; use DDP or FSDP2")
    for key, what in (("TP", "tensor"), ("CP", "context"), ("SP", "sequence")):
        if _int_env(env, f"PARALLELISM_CONFIG_{key}_SIZE") > 1:
            raise ConfigError(
                f"{what} parallelism (accelerate parallelism_config {key.lower()}_size > 1) is not supported: the ZO "
                "update needs whole row-shards of every weight on each rank; use DDP or FSDP2"
            )


def check_model(model: nn.Module) -> None:
    """Refuse a model that is already parallelised (tensor parallel DTensors, FSDP1), before hyft wraps it."""
    tp = getattr(model, "tp_size", None)
    if isinstance(tp, int) and tp > 1:
        raise ConfigError(f"tensor parallelism (tp_size={tp}, e.g. from tp_plan='auto') is not supported")
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP1
    except ImportError:  # pragma: no cover
        FSDP1 = ()
    for m in model.modules():
        if isinstance(m, FSDP1):
            raise ConfigError("FSDP1 (FullyShardedDataParallel) is not supported: use FSDP2 (--dist.strategy fsdp)")
    if any(hasattr(p, "placements") for p in model.parameters()):
        raise ConfigError(
            "the model's weights are already DTensors (tensor parallelism?); hyft shards them itself with "
            "--dist.strategy fsdp and does not support tensor parallelism"
        )


def _accelerate_wants_fsdp2(env=os.environ) -> bool:
    return _truthy(env.get("ACCELERATE_USE_FSDP")) and env.get("FSDP_VERSION", "1").strip() == "2"


@dataclass
class DistContext:
    """This process's place in the run. strategy 'none' is a plain single process (no process group)."""

    strategy: str = "none"  # none | ddp | fsdp (resolved)
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: torch.device | None = None  # this rank's device (None: leave model.device alone)
    fsdp_reshard_after_forward: bool = True
    comm_bytes: int = 0  # bytes this process has all-reduced for losses and projected gradients
    comm_calls: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_slice(self, indices: list[int]) -> list[int]:
        """This rank's contiguous part of the global batch (every rank draws the same global batch)."""
        if self.world_size == 1:
            return indices
        if len(indices) % self.world_size:
            raise ConfigError(f"train.batch_size {len(indices)} is not divisible by the world size {self.world_size}")
        per = len(indices) // self.world_size
        return indices[self.rank * per : (self.rank + 1) * per]

    def all_reduce_mean_(self, t: torch.Tensor) -> torch.Tensor:
        """In place: the mean over ranks (sum, then divide: gloo has no AVG). Every rank gets identical bits."""
        if self.world_size > 1:
            tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
            t.div_(self.world_size)
            self.comm_bytes += t.numel() * t.element_size()
            self.comm_calls += 1
        return t

    def on_main(self, fn: Callable[[], Any]) -> None:
        """Run fn on rank 0 only (file writing); a HyftError there is raised on every rank, so none hangs."""
        if self.world_size == 1:
            fn()
            return
        message = None
        if self.is_main:
            try:
                fn()
            except HyftError as e:
                message = str(e)
        box = [message]
        tdist.broadcast_object_list(box, src=0)
        if box[0] is not None:
            raise ConfigError(box[0])

    def model_config(self, model_cfg):
        """The model config each rank loads with: its own GPU under DDP; the host under FSDP2 (sharding then moves
        only this rank's shards to its device)."""
        if self.strategy == "none" or self.device is None:
            return model_cfg
        return dataclasses.replace(model_cfg, device="cpu" if self.strategy == "fsdp" else str(self.device))

    def describe(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "world_size": self.world_size, "backend": self.backend}


def _resolve_device(name: str, local_rank: int, world_size: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if dev.index is not None and world_size > 1:
            raise ConfigError(
                f"model.device: {name!r} with {world_size} processes; leave it 'auto' or 'cuda' (rank r uses "
                "cuda:LOCAL_RANK; restrict GPUs with CUDA_VISIBLE_DEVICES)"
            )
        dev = torch.device("cuda", local_rank if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    return dev


def setup(cfg) -> DistContext:
    """Join (or start) the process group the launcher describes; a single plain process gets strategy 'none'."""
    d = cfg.dist
    if d.strategy not in STRATEGIES:
        raise ConfigError(f"dist.strategy: {d.strategy!r} not in {STRATEGIES}")
    if d.backend not in BACKENDS:
        raise ConfigError(f"dist.backend: {d.backend!r} not in {BACKENDS}")
    check_environment()
    initialized = tdist.is_available() and tdist.is_initialized()
    env = os.environ
    world = tdist.get_world_size() if initialized else _int_env(env, "WORLD_SIZE")
    rank = tdist.get_rank() if initialized else _int_env(env, "RANK", 0)
    local_rank = _int_env(env, "LOCAL_RANK", 0)
    strategy = d.strategy
    if strategy == "auto":
        strategy = "fsdp" if _accelerate_wants_fsdp2() else ("ddp" if world > 1 else "none")
    if strategy == "none":
        if world > 1:
            raise ConfigError(
                f"dist.strategy none with {world} processes: every process would train its own copy; use ddp or fsdp"
            )
        return DistContext()
    t = cfg.train
    if t.batch_size % (world * t.grad_accum):
        raise ConfigError(
            f"train.batch_size {t.batch_size} (the global batch) must be divisible by world size {world} x "
            f"train.grad_accum {t.grad_accum}"
        )
    device = _resolve_device(cfg.model.device, local_rank, world)
    backend = d.backend if d.backend != "auto" else ("nccl" if device.type == "cuda" else "gloo")
    if backend == "nccl" and device.type != "cuda":
        raise ConfigError("dist.backend nccl needs CUDA devices; use gloo on CPU")
    if not initialized:
        timeout = datetime.timedelta(seconds=d.timeout_s)
        if "MASTER_ADDR" not in env and world == 1:  # a plain process asking for ddp/fsdp: a 1-rank group
            tdist.init_process_group(backend, store=tdist.HashStore(), rank=0, world_size=1, timeout=timeout)
        else:
            tdist.init_process_group(backend, timeout=timeout)
        atexit.register(_shutdown)
        world, rank = tdist.get_world_size(), tdist.get_rank()
    else:
        backend = tdist.get_backend()
    if rank != 0:
        _quiet()
    return DistContext(
        strategy, rank, world, local_rank, backend, device, fsdp_reshard_after_forward=d.fsdp_reshard_after_forward
    )


def _quiet() -> None:
    """Other ranks than 0 show no transformers progress bars or info logs (rank 0 shows them once)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        return
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def _shutdown() -> None:
    if tdist.is_initialized():
        tdist.destroy_process_group()


# -- wrapping the model ------------------------------------------------------------------------------------------------
def _layer_classes(model: nn.Module) -> set[str]:
    """Class names of the transformer blocks (HF's _no_split_modules): each becomes one FSDP2 unit."""
    names: set[str] = set()
    for m in model.modules():
        names.update(getattr(m, "_no_split_modules", None) or [])
    return names


def shard(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP2 in place: every transformer block and then the root (embeddings, final norm, head) become units whose
    weights are split by rows across ranks; the root's stay gathered from its forward to the backward (as FSDP2 does
    by default), the blocks' follow dist.fsdp_reshard_after_forward. Call after the partition set requires_grad,
    before building the optimizer (it must see the sharded parameters)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    check_model(model)
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    classes = _layer_classes(model)
    blocks = [m for m in model.modules() if type(m).__name__ in classes and m is not model]
    for m in blocks:
        fully_shard(m, mesh=mesh, reshard_after_forward=ctx.fsdp_reshard_after_forward)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)  # the root's weights are needed again in backward
    return model


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """The module the training forward goes through: a DDP wrapper when there are FO parameters, else the model.

    DDP registers its all-reduce hooks only on parameters with requires_grad, so the ZO-updated base weights (which
    partition() froze) are invisible to it: it never checks, buckets or communicates them; it broadcasts rank 0's
    parameters once, here. Buffers are not re-broadcast every forward (LLMs have no running statistics).
    """
    if ctx.strategy != "ddp":
        return model
    check_model(model)
    devices = {p.device for p in model.parameters()}
    if ctx.device is not None and devices != {ctx.device}:
        raise ConfigError(
            f"the model's weights are on {', '.join(sorted(map(str, devices)))} but this rank's device is {ctx.device} "
            "(model.device); a model passed to the Trainer must already be there"
        )
    if not any(p.requires_grad for p in model.parameters()):  # ZO only: DDP refuses a module without gradients
        with torch.no_grad():
            for t in list(model.parameters()) + list(model.buffers()):
                tdist.broadcast(t.data, src=0)  # the same starting point on every rank, as DDP would ensure
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device is not None and ctx.device.type == "cuda" else None
    # No buffer broadcast before every forward (torch >= 2.13 renamed the switch; both still sync once, here).
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_buffer_sync = {"forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers": False}
    return DistributedDataParallel(model, device_ids=ids, **no_buffer_sync)


def no_sync(model: nn.Module) -> Callable[[], contextlib.AbstractContextManager] | None:
    """A context factory that skips the gradient all-reduce / reduce-scatter for non-final micro-batches."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.no_sync
    if _is_fsdp(model):

        @contextlib.contextmanager
        def fsdp_no_sync():
            model.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                model.set_requires_gradient_sync(True)

        return fsdp_no_sync
    return None


def _is_fsdp(model: nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, FSDPModule)


def full_state_dict(model: nn.Module, *, cpu_offload: bool = True) -> dict[str, torch.Tensor]:
    """The whole model's state dict, for writing a checkpoint on rank 0.

    Under FSDP2 this is a collective: call it on every rank; rank 0 receives the gathered full tensors (on the CPU
    with cpu_offload), the other ranks an empty dict. Unsharded models (DDP wrapper stripped) return their own
    state dict on every rank.
    """
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        model = model.module
    if not any(_is_fsdp(m) for m in model.modules()):
        sd = model.state_dict()
        return {k: v.detach().cpu() for k, v in sd.items()} if cpu_offload else sd
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=cpu_offload))


# -- the one all_reduce of a step's scalars ----------------------------------------------------------------------------
class LossSync:
    """Mean over ranks of a step's loss and ZO projected gradients, in one all_reduce, just before the update.

    hybrid_step runs with the identity `reduce`, so each rank's losses and g_j stay local; `wrap(accept)` gives the
    accept hook that hybrid_step calls right before it updates either group: it all-reduces [loss, the accumulated
    g (q), the per-query mean g (q)], writes the means back, and only then asks the inner accept (so a divergence
    guard decides on the global loss, identically on every rank). A step-pre-hook on the optimizer refuses a ZO update
    whose gradients did not go through it, so ranks can never drift apart silently.
    """

    def __init__(self, ctx: DistContext, opt):
        self.ctx, self.opt = ctx, opt
        self._synced: torch.Tensor | None = None
        if ctx.world_size > 1:
            opt.register_step_pre_hook(self._check)

    def wrap(self, accept: Callable | None) -> Callable | None:
        if self.ctx.world_size == 1:
            return accept

        def synced_accept(result) -> bool:
            self.sync(result)
            return True if accept is None else accept(result)

        return synced_accept

    def sync(self, result) -> None:
        grads = self.opt._grads  # sum over micro-batches of this rank's g, or None before the ZO pass
        zo = result.zo_grads
        parts = [result.loss.detach().float().reshape(1)]
        parts += [x.detach().float().reshape(-1) for x in (grads, zo) if x is not None]
        buf = self.ctx.all_reduce_mean_(torch.cat(parts))
        result.loss = buf[0]
        i = 1
        if grads is not None:
            grads.copy_(buf[i : i + grads.numel()].view_as(grads))
            i += grads.numel()
            self._synced = grads
        if zo is not None:
            result.zo_grads = buf[i : i + zo.numel()].view_as(zo)

    def _check(self, opt, args, kwargs) -> None:
        groups = kwargs.get("groups", ("fo", "zo"))
        if "zo" in groups and opt._grads is not None and opt._grads is not self._synced:
            raise RuntimeError(
                "hyft.dist: a ZO update was about to use this rank's projected gradients without the cross-rank "
                "all_reduce (hybrid_step must run with LossSync.wrap(accept)); ranks would diverge"
            )
