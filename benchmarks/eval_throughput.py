"""Evaluation throughput: hyft's batched candidate scoring against one-example-one-candidate scoring.

The reference path is how MeZO evaluates (large_models/run.py, `one_step_pred`): one forward per candidate, each
sequence alone (no padding), full logits over every position and the whole vocabulary, log-softmax, the mean
log-probability of the candidate's tokens, argmax over candidates. The batched path is
`hyft.evaluate.candidate_scores`: many examples' candidates per padded batch, one sequence per distinct model input
(a candidate's last token is never read, so one-token verbalizers sharing a context share one sequence), the LM head
only at the positions that predict candidate tokens.
Both score the same encoded examples with the same model; the script checks that they predict the same candidate
for every example and reports the largest score difference.

To even out load from other processes, the batched pass runs before and after the reference pass and its time is
the mean of the two.

    PYTHONPATH=src python benchmarks/eval_throughput.py --task sst2 --n 200 --out runs/bench/eval_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def reference_scores(model, encoded) -> list[list[float]]:
    out = []
    with torch.no_grad():
        for e in encoded:
            scores = []
            for ctx, cont in e.pairs:
                ids = torch.tensor([list(ctx) + list(cont)], device=next(model.parameters()).device)
                logits = model(input_ids=ids).logits[0]  # [L, vocab]: the full head output
                logp = torch.log_softmax(logits.float(), dim=-1)
                pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont), device=ids.device)
                tgt = torch.tensor(cont, device=ids.device)
                scores.append(logp[pos, tgt].mean().item())
            out.append(scores)
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    from hyft import scoring, tasks
    from hyft.config import ModelConfig
    from hyft.evaluate import argmax_predictions, candidate_scores
    from hyft.models import load_model, output_head

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="auto")
    p.add_argument("--task", default="sst2")
    p.add_argument("--split", default="test", help="test = the labelled validation file (SST-2: GLUE dev)")
    p.add_argument("--n", type=int, default=200, help="examples (seeded sample of the split)")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--batch_size", type=int, default=64, help="sequences per batch of the batched path")
    p.add_argument("--max_length", type=int, default=256)
    p.add_argument("--out", default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)

    model, tok = load_model(ModelConfig(name=args.model, dtype=args.dtype, device=args.device))
    model.eval()
    head = output_head(model)
    device = next(model.parameters()).device
    n = {"train": (args.n, 0, 0), "dev": (0, args.n, 0), "test": (0, 0, args.n)}[args.split]
    data = tasks.load_task(args.task, args.data_dir, n_train=n[0], n_dev=n[1], n_test=n[2], seed=0)
    examples = data.split(args.split)
    enc = [scoring.encode(tok, e, args.max_length) for e in examples]
    n_seq = sum(len(e.pairs) for e in enc)
    tokens = sum(len(c) + len(t) for e in enc for c, t in e.pairs)
    print(f"{args.task} {args.split}: {len(enc)} examples, {n_seq} candidate sequences, {tokens} tokens; "
          f"device {device}, torch threads {torch.get_num_threads()}", flush=True)  # fmt: skip

    load_start = os.getloadavg()[0]
    # Warm-up (allocator, kernels) on a few examples, both paths.
    candidate_scores(model, head, enc[:4], tok.pad_token_id, max_sequences=args.batch_size)
    reference_scores(model, enc[:2])

    def batched():
        sync(device)
        t = time.perf_counter()
        s = candidate_scores(model, head, enc, tok.pad_token_id, max_sequences=args.batch_size)
        sync(device)
        return s, time.perf_counter() - t

    s_batched, t1 = batched()
    print(f"batched pass 1: {t1:.1f} s", flush=True)
    sync(device)
    t = time.perf_counter()
    s_ref = reference_scores(model, enc)
    sync(device)
    t_ref = time.perf_counter() - t
    print(f"reference pass: {t_ref:.1f} s", flush=True)
    s_batched2, t2 = batched()
    print(f"batched pass 2: {t2:.1f} s", flush=True)
    t_batched = (t1 + t2) / 2

    p_batched, p_ref = argmax_predictions(s_batched), argmax_predictions(s_ref)
    mismatches = [i for i, (a, b) in enumerate(zip(p_batched, p_ref)) if a != b]
    max_diff = max(abs(a - b) for sa, sb in zip(s_batched, s_ref) for a, b in zip(sa, sb))
    labels = [e.label for e in enc]
    acc = lambda preds: sum(int(a == b) for a, b in zip(preds, labels)) / len(labels)
    result = {
        "model": args.model,
        "dtype": args.dtype,
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "task": args.task,
        "split": args.split,
        "examples": len(enc),
        "candidate_sequences": n_seq,
        "tokens": tokens,
        "batch_size_sequences": args.batch_size,
        "batched_seconds": [round(t1, 3), round(t2, 3)],
        "reference_seconds": round(t_ref, 3),
        "batched_examples_per_s": len(enc) / t_batched,
        "reference_examples_per_s": len(enc) / t_ref,
        "speedup": t_ref / t_batched,
        "identical_predictions": not mismatches,
        "mismatched_examples": mismatches,
        "max_abs_score_diff": max_diff,
        "accuracy": acc(p_batched),
        "accuracy_reference": acc(p_ref),
        "batched_runs_agree": s_batched == s_batched2,
        "load_average_1min": [round(load_start, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps(result, indent=1))
    print(f"\nbatched {result['batched_examples_per_s']:.2f} ex/s | one-candidate-per-forward "
          f"{result['reference_examples_per_s']:.2f} ex/s | speedup {result['speedup']:.1f}x | identical predictions: "
          f"{result['identical_predictions']} (max |score diff| {max_diff:.2e})")  # fmt: skip
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0 if result["identical_predictions"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
