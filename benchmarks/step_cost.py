"""Cost of one optimisation step of each method, in one process, through hyft's own code paths.

    python benchmarks/step_cost.py --configs opt-1.3b:16x128,llama-7b:8x256      # on a GPU (bf16)
    python benchmarks/step_cost.py --configs tiny:2x16 --device cpu --iters 2    # CI smoke run
    python benchmarks/step_cost.py --configs smollm2-135m:16x96 --device cpu --interleave --iters 5 --warmup 1

Models are random-initialised from their configs (no download); the loss is hyft's LM loss (scoring.loss, kind "lm")
on random tokens. Each method is a HybridOptimizer + hybrid_step exactly as the trainer runs it:
    ft            all weights first order, AdamW
    lora          LoRA (peft defaults: q, v; r 8) first order, SGD; base frozen
    mezo          base weights zeroth order, central (2 forwards), no PEFT
    hybrid-*      base weights zeroth order + LoRA first order, schedule onesided / central / alternating
    forward       one no-grad forward of the loss (plain model, and with LoRA attached)
    perturb pass  one perturbation pass over all ZO weights (one launch), vs a device copy of the same bytes
    update pass   one fused ZO update over all ZO weights, vs the same copy
Times: CUDA events around each step (steps issued back to back, as in training), median over --iters after --warmup;
on CPU wall clock. Peak memory: torch.cuda.max_memory_allocated over the method's warmup and timed steps.

With --interleave (the CPU table) the rows are measured interleaved instead: every round runs each of them once (order
rotated per round), so that a noisy, shared machine slows all of them alike; each ratio is the median over rounds of
that round's ratio. All rows then use the LoRA-attached model (MeZO with its adapters frozen), the torch reference
path ("torch") beside the CPU fast paths ("blocked", hyft.zo.blocked; "counter", its counter-based generator
hyft.zo.counter; both through the compiled loops of hyft.zo.native where a C compiler is found, which the header
says). --passes_only times only the passes and the copy. smollm2-135m is the real model (the bundled GGUF,
dequantized), the others random-initialised.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from hyft import scoring  # noqa: E402
from hyft.config import PeftConfig  # noqa: E402
from hyft.models import adapter_parameters, attach_peft, output_head  # noqa: E402
from hyft.optim import HybridOptimizer  # noqa: E402
from hyft.partition import partition  # noqa: E402
from hyft.step import hybrid_step  # noqa: E402
from hyft.zo import kernels as zk  # noqa: E402
from hyft.zo.perturb import Direction, apply_update, perturbed_value  # noqa: E402
from hyft.zo.rng import DIRECTION, mix  # noqa: E402


def model_config(name: str):
    from transformers import LlamaConfig, OPTConfig

    if name == "opt-1.3b":  # facebook/opt-1.3b's config, written out
        return OPTConfig(
            vocab_size=50272, hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32,
            max_position_embeddings=2048, word_embed_proj_dim=2048, do_layer_norm_before=True, dropout=0.1,
            attention_dropout=0.0, activation_function="relu", enable_bias=True, tie_word_embeddings=True,
            pad_token_id=1, bos_token_id=2, eos_token_id=2,
        )  # fmt: skip
    if name == "llama-7b":  # LLaMA-7B shape
        return LlamaConfig(
            vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
            num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
        )  # fmt: skip
    if name == "tiny":
        return LlamaConfig(
            vocab_size=258, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        )  # fmt: skip
    raise ValueError(f"unknown model config {name!r} (opt-1.3b, llama-7b, tiny, smollm2-135m)")


def build_model(name: str, device: torch.device, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM

    if name == "smollm2-135m":  # the real weights (bundled GGUF, dequantized; cached by hyft.models)
        from hyft.config import ModelConfig
        from hyft.models import load_model

        dname = str(dtype).removeprefix("torch.")
        return load_model(ModelConfig(name=name, dtype=dname, device=str(device)))[0].eval()
    torch.manual_seed(0)
    with torch.device(device):  # initialise on the device, in the target dtype
        model = AutoModelForCausalLM.from_config(model_config(name), dtype=dtype)
    return model.to(device=device, dtype=dtype).eval()


def random_batch(vocab: int, batch: int, seq: int, device) -> scoring.Batch:
    """Random tokens; every position after the first is scored (a full LM loss)."""
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(3, vocab, (batch, seq), generator=g).tolist()
    enc = [scoring.Encoded(((tuple(r[:1]), tuple(r[1:])),), 0) for r in rows]
    return scoring.collate(enc, pad_id=1, only_label=True).to(device)


@dataclass
class Row:
    name: str
    ms: float | None
    peak: int | None = None
    note: str = ""


@dataclass
class Result:
    config: str
    batch: str
    rows: dict[str, Row] = field(default_factory=dict)
    ratios: list[tuple[str, float | None, str]] = field(default_factory=list)


class Bench:
    def __init__(self, device: torch.device, warmup: int, iters: int):
        self.device, self.warmup, self.iters = device, warmup, iters
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def clean(self):
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)

    def measure(self, fn) -> tuple[float, int | None]:
        """(median ms, peak bytes) of fn(); iterations issued back to back, each bracketed by CUDA events."""
        self.clean()
        for _ in range(self.warmup):
            fn()
        self.sync()
        if self.cuda:
            event = lambda: torch.cuda.Event(enable_timing=True)
            ev = [(event(), event()) for _ in range(self.iters)]
            for s, e in ev:
                s.record()
                fn()
                e.record()
            self.sync()
            times = [s.elapsed_time(e) for s, e in ev]
            return statistics.median(times), torch.cuda.max_memory_allocated(self.device)
        times = []
        for _ in range(self.iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times), None

    def interleaved(self, fns: dict, warmup: int | None = None, iters: int | None = None) -> dict[str, list[float]]:
        """ms of each fn per round; each round calls every fn once, in an order rotated round by round."""
        warmup = self.warmup if warmup is None else warmup
        iters = self.iters if iters is None else iters
        names = list(fns)
        times: dict[str, list[float]] = {k: [] for k in names}
        for r in range(warmup + iters):
            k = r % len(names)
            for name in names[k:] + names[:k]:
                self.sync()
                t0 = time.perf_counter()
                fns[name]()
                self.sync()
                if r >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
            if r >= warmup:
                print(f"  round {r - warmup + 1}/{iters}: " + ", ".join(f"{n} {times[n][-1]:.0f}" for n in names),
                      flush=True)  # fmt: skip
        return times


def _free(opt) -> None:
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = None
    opt.state.clear()


def run_config(name: str, batch: int, seq: int, args, bench: Bench) -> Result:
    device, dtype = bench.device, getattr(torch, args.dtype)
    res = Result(name, f"{batch}x{seq}")
    model = build_model(name, device, dtype)
    head = output_head(model)
    data = random_batch(model.config.vocab_size, batch, seq, device)
    state = {"model": model}
    loss_fn = lambda b: scoring.loss(state["model"], head, b, "lm")
    # fused rows: on CUDA, or on CPU under Triton's interpreter (TRITON_INTERPRET=1: slow, to check the code paths)
    fused_ok = (bench.cuda or zk._interpreting()) and zk.triton_available()
    kernel_variants = ["triton", "torch"] if fused_ok else ["torch"]

    def row(key, fn, note=""):
        try:
            ms, peak = bench.measure(fn)
        except Exception as e:  # one failing method (e.g. out of memory) must not lose the others
            res.rows[key] = Row(key, None, None, f"FAILED: {type(e).__name__}: {str(e)[:160]}")
            print(f"  {key:<34} FAILED {type(e).__name__}: {e}", flush=True)
            bench.clean()
            return
        res.rows[key] = Row(key, ms, peak, note)
        print(f"  {key:<34} {ms:9.2f} ms  peak {_gb(peak)}  {note}", flush=True)

    def forward():
        with torch.no_grad():
            loss_fn(data)

    def step_with(opt, schedule):
        return lambda: hybrid_step(opt, loss_fn, [data], schedule=schedule)

    print(f"== {name} {batch}x{seq} {args.dtype} on {device}", flush=True)
    row("forward", forward, "no grad, plain model")

    # -- full fine-tuning (AdamW) --
    part = partition(model, adapter_params=[], base="fo")
    opt = HybridOptimizer(model, part.fo, fo_optimizer="adamw", fo_lr=1e-6)
    row("ft (AdamW)", step_with(opt, "onesided"), "1F+1B")
    _free(opt)
    del opt

    # -- MeZO: ZO on the base, central --
    part = partition(model, adapter_params=[], base="zo")
    zo_params = part.zo
    for kernels in kernel_variants:
        for dist in ("gaussian", "rademacher") if kernels == "triton" else ("gaussian",):
            opt = HybridOptimizer(model, zo_params=zo_params, zo_lr=1e-7, distribution=dist, kernels=kernels)
            row(f"mezo {kernels} {dist}", step_with(opt, "central"), "2F")
            _free(opt)
            del opt

    # -- perturbation and update passes over all ZO weights vs a copy of the same bytes --
    passes(model, zo_params, res, row, fused_ok, device, sweep=args.sweep and not args.swept)
    args.swept = args.swept or args.sweep

    # -- LoRA, and hybrid = ZO base + FO LoRA --
    model = attach_peft(model, "lora", PeftConfig())
    state["model"] = model
    row("forward (LoRA model)", forward, "no grad")
    adapters = adapter_parameters(model)
    part = partition(model, adapter_params=adapters, base="frozen", adapter="fo")
    opt = HybridOptimizer(model, part.fo, fo_optimizer="sgd", fo_lr=1e-4)
    row("lora", step_with(opt, "onesided"), "1F+1B")
    _free(opt)
    del opt
    part = partition(model, adapter_params=adapters, base="zo", adapter="fo")
    variants = [("onesided", "triton", "gaussian", "block")] if fused_ok else []
    if fused_ok:
        variants += [
            ("onesided", "triton", "rademacher", "block"),
            ("onesided", "triton", "gaussian", "all"),
            ("onesided", "triton", "gaussian", "module"),
            ("central", "triton", "gaussian", "block"),
            ("alternating", "triton", "gaussian", "block"),
        ]
    variants += [("onesided", "torch", "gaussian", "-"), ("central", "torch", "gaussian", "-")]
    if not fused_ok:
        variants.append(("alternating", "torch", "gaussian", "-"))
    for schedule, kernels, dist, scope in variants:
        opt = HybridOptimizer(
            model, part.fo, part.zo, fo_lr=1e-4, zo_lr=1e-7, distribution=dist, kernels=kernels,
            scratch=scope if scope != "-" else "block",
        )  # fmt: skip
        key = f"hybrid {schedule} {kernels} {dist}" + (f" {scope}" if kernels == "triton" else "")
        row(key, step_with(opt, schedule), {"onesided": "2F+1B"}.get(schedule, "3F+1B"))
        _free(opt)
        del opt
    ratios(res, fused_ok)
    del model, state["model"]
    bench.clean()
    return res


def run_config_interleaved(name: str, batch: int, seq: int, args, bench: Bench) -> Result:
    """The CPU rows (see the module docstring), measured interleaved on the LoRA-attached model."""
    from hyft.zo import blocked
    from hyft.zo.perturb import zo_tensors

    device, dtype = bench.device, getattr(torch, args.dtype)
    res = Result(name, f"{batch}x{seq}")
    model = build_model(name, device, dtype)
    head = output_head(model)
    data = random_batch(model.config.vocab_size, batch, seq, device)
    model = attach_peft(model, "lora", PeftConfig())
    loss_fn = lambda b: scoring.loss(model, head, b, "lm")
    adapters = adapter_parameters(model)
    hybrid_part = partition(model, adapter_params=adapters, base="zo", adapter="fo")
    lora_fo = [p for p in hybrid_part.fo]  # the same LoRA tensors; the base stays frozen for the LoRA step

    def forward():
        with torch.no_grad():
            loss_fn(data)

    def step_with(opt, schedule):
        return lambda: hybrid_step(opt, loss_fn, [data], schedule=schedule)

    variants = [("torch", "gaussian"), *((k, d) for k in ("blocked", "counter") for d in ("gaussian", "rademacher"))]
    fns, notes = {}, {}
    if not args.passes_only:
        fns = {"forward": forward, "lora": step_with(HybridOptimizer(model, lora_fo, fo_lr=1e-4), "onesided")}
        notes = {"forward": "no grad, LoRA model", "lora": "1F+1B"}
        for kernels, dist in variants:
            key = f"hybrid onesided {kernels} {dist}"
            opt = HybridOptimizer(model, lora_fo, hybrid_part.zo, fo_lr=1e-4, zo_lr=1e-7, distribution=dist,
                                  kernels=kernels)  # fmt: skip
            fns[key], notes[key] = step_with(opt, "onesided"), "2F+1B"
        for kernels, dist in variants:
            key = f"mezo {kernels} {dist}"
            opt = HybridOptimizer(model, zo_params=hybrid_part.zo, zo_lr=1e-7, distribution=dist, kernels=kernels)
            fns[key], notes[key] = step_with(opt, "central"), "2F, adapters frozen"
    tensors = zo_tensors(model, hybrid_part.zo)
    n = sum(t.param.numel() for t in tensors)
    nbytes = sum(t.param.numel() * t.param.element_size() for t in tensors)
    src = torch.empty(n, dtype=tensors[0].param.dtype, device=device).normal_()
    dst = torch.empty_like(src)
    fns["copy of the ZO weights' bytes"] = lambda: dst.copy_(src)
    notes["copy of the ZO weights' bytes"] = f"{nbytes / 1e9:.2f} GB read + written"
    coeffs = torch.ones(1, device=device)
    for kernels, dist in variants:
        direction = Direction(0, 0, 0, dist, kernels)

        def perturb_pass(direction=direction):
            for t in tensors:
                v = perturbed_value(t, direction, 1e-3)
                if direction.kernel != "torch":  # as the perturbed forward does after each module
                    blocked.release(v)

        def update_pass(direction=direction):
            for t in tensors:
                apply_update(t, [direction], coeffs, lr=1e-9)

        fns[f"perturb pass {kernels} {dist}"] = perturb_pass
        fns[f"update pass {kernels} {dist}"] = update_pass
        notes[f"perturb pass {kernels} {dist}"] = f"{len(tensors)} tensors, {torch.get_num_threads()} threads"
        notes[f"update pass {kernels} {dist}"] = "stochastic rounding where 16-bit"
    print(f"== {name} {batch}x{seq} {args.dtype} on {device}, interleaved ({len(fns)} rows per round)", flush=True)
    times = bench.interleaved(fns)
    for key, ts in times.items():
        res.rows[key] = Row(key, statistics.median(ts), None, notes[key])

    def per_round(f) -> float:
        return statistics.median(f(i) for i in range(len(times["copy of the ZO weights' bytes"])))

    T = lambda key, i: times[key][i]  # noqa: E731
    out = res.ratios
    step_variants = () if args.passes_only else variants  # the step and MeZO rows were not measured
    targets = {"rademacher": ("<= 1.15", "<= 1.5"), "gaussian": ("<= 1.3", "<= 3")}
    for kernels, dist in step_variants:
        key = f"hybrid onesided {kernels} {dist}"
        value = per_round(lambda i, key=key: T(key, i) / (T("lora", i) + T("forward", i)))
        out.append((f"{key} / (lora + forward)", value, targets[dist][0] if kernels != "torch" else ""))
    for kernels, dist in variants:
        for what in ("perturb", "update"):
            key = f"{what} pass {kernels} {dist}"
            value = per_round(lambda i, key=key: T(key, i) / T("copy of the ZO weights' bytes", i))
            target = targets[dist][1] if kernels != "torch" and what == "perturb" else ""
            out.append((f"{key} / copy", value, target))
    for kernels, dist in step_variants:
        key = f"mezo {kernels} {dist}"
        value = per_round(lambda i, key=key: (T(key, i) - 2 * T("forward", i)) / T("copy of the ZO weights' bytes", i))
        out.append((f"({key} - 2 forwards) / copy", value, "excess in passes at copy speed"))
    for kernels, dist in step_variants:
        key = f"mezo {kernels} {dist}"
        out.append((f"{key} / (2 forwards)", per_round(lambda i, key=key: T(key, i) / (2 * T("forward", i))), ""))
    return res


def sweep_launch_shapes(model, tensors, row, device) -> None:
    """The fused passes at other (BLOCK, num_warps); the direction map does not depend on them."""
    default = zk.BLOCK, zk.NUM_WARPS
    coeffs = torch.ones(1, device=device)
    try:
        for block, warps in ((1024, 4), (4096, 4), (2048, 8), (4096, 8)):
            zk.BLOCK, zk.NUM_WARPS = block, warps
            eng = zk.FusedZO(model, tensors, scope="all", backend="triton")
            eng.refresh()
            scratch = [torch.empty(g.scratch_numel, dtype=g.dtype, device=device) for g in eng.all.groups]
            for dist in ("rademacher", "gaussian"):
                seed = mix(DIRECTION, 0, 2)

                def fused_pass(dist=dist, seed=seed, eng=eng, scratch=scratch):
                    for g, s in zip(eng.all.groups, scratch):
                        eng.perturb_into(g, s, seed, 0, 1e-3, dist)

                upd = lambda dist=dist, seed=seed, eng=eng: eng.update(coeffs, step_seed=seed, round_seed=seed + 1,
                                                                       lr=1e-9, distribution=dist)  # fmt: skip
                row(f"perturb pass fused {dist} [B{block} w{warps}]", fused_pass, "sweep")
                row(f"update pass fused {dist} [B{block} w{warps}]", upd, "sweep")
            del eng, scratch
    finally:
        zk.BLOCK, zk.NUM_WARPS = default


def passes(model, zo_params, res: Result, row, fused_ok: bool, device, sweep: bool = False) -> None:
    from hyft.zo.perturb import zo_tensors

    tensors = zo_tensors(model, zo_params)
    n = sum(t.param.numel() for t in tensors)
    nbytes = sum(t.param.numel() * t.param.element_size() for t in tensors)
    bufs = [torch.empty(n, dtype=tensors[0].param.dtype, device=device).normal_()]
    bufs.append(torch.empty_like(bufs[0]))
    row("copy of the ZO weights' bytes", lambda: bufs[1].copy_(bufs[0]), f"{nbytes / 1e9:.2f} GB read + written")
    bufs.clear()
    direction = Direction(0, 0, 0)

    def torch_pass():
        for t in tensors:
            perturbed_value(t, direction, 1e-3)

    row("perturb pass torch (per tensor)", torch_pass, f"{len(tensors)} tensors")
    if fused_ok:
        eng = zk.FusedZO(model, tensors, scope="all", backend="triton")
        eng.refresh()
        groups = eng.all.groups
        scratch = [torch.empty(g.scratch_numel, dtype=g.dtype, device=device) for g in groups]
        coeffs = torch.ones(1, device=device)
        for dist in ("rademacher", "gaussian"):
            seed = mix(DIRECTION, 0, 1)

            def fused_pass(dist=dist, seed=seed):
                for g, s in zip(groups, scratch):
                    eng.perturb_into(g, s, seed, 0, 1e-3, dist)

            row(f"perturb pass fused {dist}", fused_pass, f"{len(groups)} launch(es)")
            upd = lambda dist=dist, seed=seed: eng.update(coeffs, step_seed=seed, round_seed=seed + 1, lr=1e-9,
                                                          distribution=dist)  # fmt: skip
            row(f"update pass fused {dist}", upd, "stochastic rounding")
        del scratch
        if sweep:
            sweep_launch_shapes(model, tensors, row, device)
    else:
        coeffs = torch.ones(1, device=device)

    def torch_update():
        for t in tensors:
            apply_update(t, [direction], coeffs, lr=1e-9)

    row("update pass torch (per tensor)", torch_update, "")


def _ms(res: Result, key: str) -> float | None:
    r = res.rows.get(key)
    return r.ms if r is not None else None


def _add(*xs):
    return None if any(x is None for x in xs) else sum(xs)


def _div(a, b):
    return None if a is None or b is None or b == 0 else a / b


def ratios(res: Result, fused_ok: bool) -> None:
    lora, f_lora, f = _ms(res, "lora"), _ms(res, "forward (LoRA model)"), _ms(res, "forward")
    copy = _ms(res, "copy of the ZO weights' bytes")
    lora_peak = res.rows["lora"].peak if "lora" in res.rows else None
    out = res.ratios
    for key in [k for k in res.rows if k.startswith("hybrid onesided")]:
        out.append((f"{key} / (lora + forward)", _div(_ms(res, key), _add(lora, f_lora)), "target <= 1.05"))
    for key in [k for k in res.rows if k.startswith(("hybrid central", "hybrid alternating"))]:
        out.append((f"{key} / (lora + 2 forwards)", _div(_ms(res, key), _add(lora, f_lora, f_lora)), ""))
    for key in [k for k in res.rows if k.startswith("mezo")]:
        out.append((f"{key} / (2 forwards)", _div(_ms(res, key), _add(f, f)), "target <= 1.2"))
    for key in [k for k in res.rows if " pass " in k]:
        target = "target <= 1.2" if "rademacher" in key else "target <= 2.2"
        out.append((f"{key} / copy", _div(_ms(res, key), copy), target if "perturb pass fused" in key else ""))
    for key in [k for k in res.rows if k.startswith("hybrid")]:
        peak = res.rows[key].peak
        out.append((f"{key} peak / lora peak", _div(peak, lora_peak), "target <= 1.02"))


def _gb(b) -> str:
    return "   n/a  " if b is None else f"{b / 2**30:6.2f} GB"


def versions(device: torch.device) -> str:
    import peft
    import transformers

    parts = [
        f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        f"python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"transformers {transformers.__version__}",
        f"peft {peft.__version__}",
    ]
    if zk.triton_available():
        import triton

        parts.append(f"triton {triton.__version__}")
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    else:
        parts.append(f"CPU {platform.processor() or platform.machine()}")
    return ", ".join(parts)


def print_tables(results: list[Result], header: str) -> None:
    print(f"\n## Step cost ({header})\n")
    for res in results:
        print(f"### {res.config} {res.batch}\n")
        print("| what | ms | peak memory | note |")
        print("|---|---:|---:|---|")
        for r in res.rows.values():
            ms = "n/a" if r.ms is None else f"{r.ms:.2f}"
            print(f"| {r.name} | {ms} | {_gb(r.peak).strip()} | {r.note} |")
        print("\n| ratio | value | target |")
        print("|---|---:|---|")
        for name, value, target in res.ratios:
            print(f"| {name} | {'n/a' if value is None else f'{value:.3f}'} | {target} |")
        print()


def main(argv: list[str] | None = None) -> list[Result]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", default="opt-1.3b:16x128,llama-7b:8x256", help="MODEL:BATCHxSEQ,...")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="bfloat16 (cuda default) or float32 (cpu default)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--interleave", action="store_true",
                    help="the CPU rows (torch vs blocked ZO passes), measured interleaved round by round")  # fmt: skip
    ap.add_argument("--passes_only", action="store_true",
                    help="with --interleave: only the ZO passes and the copy (seconds, not minutes)")  # fmt: skip
    ap.add_argument(
        "--sweep", action="store_true", help="also time the fused passes at other launch shapes (1st config)"
    )
    args = ap.parse_args(argv)
    args.swept = False
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    bench = Bench(device, args.warmup, args.iters)
    from hyft.zo import native

    header = versions(device) + f", {args.dtype}, {torch.get_num_threads()} threads"
    if device.type == "cpu":
        header += f", compiled CPU passes: {'yes' if native.library() else 'no (' + str(native.error()) + ')'}"
    print(header, flush=True)
    results = []
    for spec in args.configs.split(","):
        name, shape = spec.split(":")
        b, s = (int(x) for x in shape.lower().split("x"))
        results.append((run_config_interleaved if args.interleave else run_config)(name, b, s, args, bench))
        print_tables(results[-1:], header)
        if args.json:  # after every config: a later one running out of time keeps the earlier results
            write_json(args.json, header, results)
    if len(results) > 1:
        print_tables(results, header)
    return results


def write_json(path: str, header: str, results: list[Result]) -> None:
    data = {
        "header": header,
        "results": [
            {"config": r.config, "batch": r.batch, "rows": [vars(x) for x in r.rows.values()], "ratios": r.ratios}
            for r in results
        ],
    }
    Path(path).write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
