"""Golden runs: fingerprints of short runs of every method and schedule, to show a refactor changed no behaviour.

    python benchmarks/golden.py record runs/golden.json            # before the change
    python benchmarks/golden.py check runs/golden.json             # after: exit 1 and the differing cases if any
    python benchmarks/golden.py record runs/golden.json --real     # also SmolLM2-135M hybrid, 3 steps

Each case trains a tiny random model (built in code, as the tests do) for 3 steps and records the sha256 of its
metrics (all but elapsed_s), of every tensor of its final checkpoint (bytes, names, dtypes, shapes) and of its seed
ledger. Float results depend on the CPU's kernels, so record and check on the same machine and torch build; the file
stores both (and the torch thread count), and check refuses a file from another platform or thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# name -> (method, extra overrides)
CASES = {
    "ft": ("ft", []),
    "lora-sgd": ("lora", []),
    "lora-adamw": ("lora", ["--fo.optimizer", "adamw"]),
    "prefix": ("prefix", []),
    "prompt": ("prompt", []),
    "mezo": ("mezo", []),
    "mezo-rademacher": ("mezo", ["--zo.distribution", "rademacher"]),
    "zo-lora": ("zo-lora", []),
    "hybrid-onesided": ("hybrid", []),
    "hybrid-central-q2": ("hybrid", ["--zo.schedule", "central", "--zo.queries", "2"]),
    "hybrid-alternating": ("hybrid", ["--zo.schedule", "alternating"]),
    "hybrid-momentum-wd": ("hybrid", ["--zo.momentum", "0.9", "--zo.weight_decay", "0.1"]),
    "hybrid-prefix": ("hybrid", ["--peft.type", "prefix"]),
    "hybrid-prompt": ("hybrid", ["--peft.type", "prompt"]),
    "hybrid-accum-dropout": ("hybrid", ["--train.grad_accum", "2", "--train.dropout", "shared"]),
    "hybrid-bf16": ("hybrid", ["--model.dtype", "bfloat16"]),
    "hybrid-bf16-master": ("hybrid", ["--model.dtype", "bfloat16", "--zo.fp32_master", "true"]),
    "hybrid-opt": ("hybrid", []),
}


def platform_key() -> dict[str, str]:
    cpu = ""
    try:
        cpu = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
    except (OSError, StopIteration):
        pass
    # CPU kernels reduce in another order at another thread count (OMP_NUM_THREADS=1 changed 12 of 18 cases)
    return {"torch": torch.__version__, "machine": platform.machine(), "cpu": cpu.split(":", 1)[-1].strip(),
            "threads": torch.get_num_threads()}  # fmt: skip


def fingerprint(run: Path) -> dict[str, str]:
    from runs import checkpoint_tensors, final_checkpoint, metrics

    c = final_checkpoint(run)
    h = hashlib.sha256()
    for name, t in sorted(checkpoint_tensors(c).items()):
        h.update(f"{name}:{t.dtype}:{list(t.shape)}".encode())
        h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
    ledger = json.loads((c / "ledger.json").read_text())
    return {
        "metrics": hashlib.sha256(json.dumps(metrics(run), sort_keys=True).encode()).hexdigest(),
        "tensors": h.hexdigest(),
        "ledger": hashlib.sha256(json.dumps(ledger.get("updates", []), sort_keys=True).encode()).hexdigest(),
    }


def run_case(name: str, out: Path) -> dict[str, str]:
    from runs import make_trainer

    method, extra = CASES[name]
    kind = "opt" if name.endswith("-opt") else "llama"
    dtype = torch.bfloat16 if "bf16" in name else torch.float32
    make_trainer(out / name, method, 3, extra, kind=kind, dtype=dtype).fit()
    return fingerprint(out / name)


def run_real(out: Path) -> dict[str, str]:
    from hyft.cli import main

    args = ["train", "--config", str(ROOT / "examples" / "smollm2_defaults.yaml"), "--train.steps", "3",
            "--train.eval_before", "false", "--data.n_dev", "8", "--data.n_test", "8", "--train.progress", "false",
            "--train.output_dir", str(out / "smollm2"), "--train.ablate_zo", "false"]  # fmt: skip
    if main(args) != 0:
        raise SystemExit("the SmolLM2 golden run failed")
    return fingerprint(out / "smollm2")


def record(real: bool) -> dict:
    import contextlib
    import io

    out = Path(tempfile.mkdtemp(prefix="hyft-golden-"))
    cases = {}
    for name in CASES:
        with contextlib.redirect_stdout(io.StringIO()):
            cases[name] = run_case(name, out)
        print(f"{name}: {cases[name]['tensors'][:16]}", flush=True)
    if real:
        cases["smollm2-hybrid"] = run_real(out)
    return {"platform": platform_key(), "cases": cases}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("action", choices=("record", "check"))
    ap.add_argument("file", type=Path)
    ap.add_argument("--real", action="store_true", help="also SmolLM2-135M hybrid, 3 steps (minutes on a CPU)")
    a = ap.parse_args()
    if a.action == "record":
        doc = record(a.real)
        a.file.parent.mkdir(parents=True, exist_ok=True)
        a.file.write_text(json.dumps(doc, indent=1))
        print(f"recorded {len(doc['cases'])} cases in {a.file}")
        return 0
    want = json.loads(a.file.read_text())
    if "threads" not in want["platform"]:  # recorded before the thread count was stored
        print(
            f"note: {a.file} does not say at how many torch threads it was recorded; this check runs at "
            f"{torch.get_num_threads()} (a different count changes float results)"
        )
        want["platform"]["threads"] = torch.get_num_threads()
    if want["platform"] != platform_key():
        print(f"{a.file} was recorded on {want['platform']}, this is {platform_key()}: record and check on one "
              "machine, at one thread count")  # fmt: skip
        return 2
    got = record(a.real or "smollm2-hybrid" in want["cases"])
    bad = [k for k in want["cases"] if got["cases"].get(k) != want["cases"][k]]
    for k in bad:
        print(f"DIFFERS {k}: {want['cases'][k]} -> {got['cases'].get(k)}")
    print(f"{len(want['cases']) - len(bad)} identical, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
