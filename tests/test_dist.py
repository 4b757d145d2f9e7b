"""Distributed training: 2 CPU processes (gloo) under torchrun against single-process references.

The 2-rank run (tests/dist_scripts/worker.py) is launched once per module (~15 s on 2 cores). What is equal, and
tested as such:
  * DDP: every rank ends with bit-identical weights (same regenerated z, same all-reduced scalars, DDP-averaged FO
    gradients), and 2 ranks x 4 examples follow the trajectory of 1 process x 8 examples with the same seed, up to
    float rounding (the mean of two 4-example means is not bitwise the 8-example mean).
  * FSDP2: z is keyed by global element position (hyft/zo/sharded.py), not by rank, so 2 ranks follow the trajectory
    of a 1-rank FSDP2 run with the global batch; it is a different trajectory from DDP's (other directions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import byte_tokenizer, tiny_model
from hyft.config import load_config
from hyft.dist import DistContext, LossSync, check_environment, setup
from hyft.errors import ConfigError
from hyft.trainer import Trainer
from hyft.zo.sharded import ChunkedDirection, ShardedHybridOptimizer, draw_rows, round_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "dist_scripts"))
from worker import SCENARIOS, args_for  # noqa: E402


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [*cmd, str(ROOT / "tests/dist_scripts/worker.py"), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _reference(name: str, out: Path, strategy: str) -> tuple[dict, dict]:
    """The same scenario in this process, 1 rank with the whole global batch: (initial, final) full state dicts."""
    import torch.distributed as tdist

    from hyft.dist import full_state_dict

    try:
        cfg = load_config(None, args_for(name, out, strategy))
        tr = Trainer(cfg, model=tiny_model("llama"), tokenizer=byte_tokenizer())
        assert tr.dist.world_size == 1 and tr.dist.strategy == strategy
        initial = {k: v.clone() for k, v in full_state_dict(tr.model).items()}
        tr.fit()
        return initial, full_state_dict(tr.model)
    finally:
        if tdist.is_initialized():  # the 1-rank FSDP2 reference started a process group
            tdist.destroy_process_group()


def _assert_same_trajectory(dist_dir: Path, ref_dir: Path, steps: int) -> None:
    got, want = _metrics(dist_dir), _metrics(ref_dir)
    assert [r["step"] for r in got] == [r["step"] for r in want] == list(range(1, steps + 1))  # rank 0 wrote once
    for g, w in zip(got, want):
        assert g["loss"] == pytest.approx(w["loss"], rel=1e-5, abs=1e-6), (g, w)
        if "zo_projected_grad" in w:
            assert g["zo_projected_grad"] == pytest.approx(w["zo_projected_grad"], rel=1e-3, abs=1e-3), (g, w)


def _assert_same_weights(got: dict, ref: tuple[dict, dict]) -> None:
    """Per tensor, the two runs' weights differ by under 0.1% of how far training moved them (and not at all where
    training did not move them): float rounding, not a different trajectory."""
    initial, want = ref
    assert got.keys() == want.keys()
    moved = 0
    for k in want:
        err = (got[k].double() - want[k].double()).norm().item()
        disp = (want[k].double() - initial[k].double()).norm().item()
        assert err <= 1e-3 * disp, (k, err, disp)
        moved += disp > 0
    assert moved >= len(want) // 2


# -- DDP -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ddp_hybrid", "ddp_mezo"])
def test_ddp_ranks_end_bit_identical(two_ranks, name):
    _, res = two_ranks
    rank0, rank1 = res[name]["checksums"]
    assert rank0 == rank1  # every parameter: the ZO-updated base weights and the DDP-trained LoRA
    assert res[name]["distributed"] == {"strategy": "ddp", "world_size": 2, "backend": "gloo"}
    # hybrid has FO parameters, so DDP wraps it; mezo has none and runs unwrapped (loss scalars only)
    assert res[name]["ddp"] == ("DistributedDataParallel" if name == "ddp_hybrid" else "LlamaForCausalLM")


@pytest.mark.parametrize("name", ["ddp_hybrid", "ddp_mezo"])
def test_ddp_two_ranks_follow_the_one_process_trajectory(two_ranks, tmp_path, name):
    out, _ = two_ranks
    ref = _reference(name, tmp_path, "none")
    steps = int(SCENARIOS[name][SCENARIOS[name].index("--train.steps") + 1])
    _assert_same_trajectory(out / name, tmp_path / name, steps)
    _assert_same_weights(torch.load(out / f"{name}.pt"), ref)


# -- FSDP2 -----------------------------------------------------------------------------------------------------------
def test_fsdp_two_ranks_follow_the_one_rank_fsdp_trajectory(two_ranks, tmp_path):
    out, res = two_ranks
    assert res["fsdp_hybrid"]["distributed"]["strategy"] == "fsdp"
    rank0, rank1 = res["fsdp_hybrid"]["checksums"]
    assert rank0.keys() == rank1.keys() and rank0 != rank1  # each rank holds different row shards
    ref = _reference("fsdp_hybrid", tmp_path, "fsdp")
    _assert_same_trajectory(out / "fsdp_hybrid", tmp_path / "fsdp_hybrid", 4)
    _assert_same_weights(torch.load(out / "fsdp_hybrid.pt"), ref)
    # ... and not the unsharded trajectory: chunk-keyed directions differ from Direction.z.
    unsharded = _reference("fsdp_hybrid", tmp_path / "plain", "none")[1]
    base = "base_model.model.model.layers.0.mlp.up_proj.weight"
    assert not torch.allclose(unsharded[base], ref[1][base])


# -- communication, rank-0 guards ------------------------------------------------------------------------------------
def test_bytes_all_reduced_per_step(two_ranks):
    _, res = two_ranks
    hybrid, ft = res["comm"]
    assert hybrid["method"] == "hybrid" and ft["method"] == "ft"
    # hybrid: the LoRA gradients (fp32) + one all_reduce of [loss, g, mean g] (q = 1): 3 floats
    assert hybrid["bytes_per_step"] == {"ddp_grad_buckets": 4 * hybrid["fo_params"], "all_reduce": 12}
    assert hybrid["calls_per_step"]["all_reduce"] == 1
    # DDP full fine-tuning: every weight's gradient (+ the loss for logging)
    assert ft["bytes_per_step"] == {"ddp_grad_buckets": 4 * ft["fo_params"], "all_reduce": 4}
    assert ft["fo_params"] == hybrid["zo_params"] > 10 * hybrid["fo_params"]


def test_an_error_on_rank0_is_raised_on_every_rank(two_ranks):
    _, res = two_ranks
    assert len(res["errors"]) == 2
    assert all(e and "already holds a run" in e for e in res["errors"])


# -- single-process pieces -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(37, 5), (9,), (4, 3, 2), (1, 7)])
@pytest.mark.parametrize("chunk_numel", [1, 10, 1000])
def test_chunk_keyed_draws_do_not_depend_on_the_sharding(shape, chunk_numel):
    direction = ChunkedDirection(3, 7, 1, "gaussian", chunk_numel)
    whole = draw_rows(shape, 0, shape[0], direction.seed(4), direction._draw, "cpu", chunk_numel)
    assert whole.shape == shape
    x = torch.randn(shape) * 0.02
    whole_round = round_rows(x, torch.bfloat16, 11, shape, 0, chunk_numel)
    for world in (2, 3, 5, 64):
        per = -(-shape[0] // world)
        parts, rounded = [], []
        for r in range(world):
            row0 = min(r * per, shape[0])
            rows = max(0, min(per, shape[0] - row0))
            parts.append(draw_rows(shape, row0, rows, direction.seed(4), direction._draw, "cpu", chunk_numel))
            rounded.append(round_rows(x[row0 : row0 + rows], torch.bfloat16, 11, shape, row0, chunk_numel))
        assert torch.equal(torch.cat(parts), whole)
        assert torch.equal(torch.cat(rounded), whole_round)


def test_sharded_optimizer_perturbs_exactly_and_updates_like_sgd():
    """On plain tensors (one 'shard' = the whole tensor) the FSDP2 code path restores bf16 weights bit-exactly."""
    model = tiny_model("llama", dtype=torch.bfloat16)
    params = [p for n, p in model.named_parameters() if "layers" in n]
    opt = ShardedHybridOptimizer(model, zo_params=params, zo_lr=1e-2, mu=1e-2, seed=5, chunk_numel=64)
    before = [p.detach().clone() for p in params]
    ids = torch.randint(0, 258, (2, 8))
    with torch.no_grad():
        base = model(input_ids=ids).logits
        for _ in range(50):
            with opt.perturb(0, +1.0):
                assert not torch.equal(model(input_ids=ids).logits, base)
    assert all(torch.equal(p, b) for p, b in zip(params, before))
    opt.rounding = "nearest"
    opt.accumulate_zo(torch.tensor([2.0]))
    opt.step()
    z = ChunkedDirection(5, 0, 0, "gaussian", 64)  # step 0's direction, as the update regenerated it
    for t, b in zip(opt.zo_tensors, before):
        want = (b.float() - 1e-2 * (z.z(t) * 2.0)).to(torch.bfloat16)
        assert torch.equal(t.param.detach(), want)
    assert opt.zo_step == 1 and opt.ledger[0][0] == 0


def test_unsynchronised_zo_gradients_are_refused():
    model = tiny_model("llama")
    opt = ShardedHybridOptimizer(model, zo_params=list(model.parameters())[:2])
    LossSync(DistContext(strategy="ddp", world_size=2), opt)  # world 2: installs the step pre-hook
    opt.accumulate_zo(torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="without the cross-rank all_reduce"):
        opt.step(groups=("zo",))


@pytest.mark.parametrize(
    "env,match",
    [
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "ZeRO-3 is not supported"),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, "DeepSpeed .*not supported"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP1"),
        ({"ACCELERATE_USE_FSDP": "true"}, "FSDP1"),
        ({"PARALLELISM_CONFIG_TP_SIZE": "2"}, "tensor parallelism"),
        ({"ACCELERATE_USE_MEGATRON_LM": "true"}, "Megatron"),
    ],
)
def test_unsupported_launch_setups_are_refused(env, match):
    with pytest.raises(ConfigError, match=match):
        check_environment(env)


def test_supported_launch_environments_pass():
    check_environment({})
    check_environment({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "PARALLELISM_CONFIG_TP_SIZE": "1"})


def test_setup_errors_before_starting_a_process_group(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "2")
    base = ["--train.output_dir", str(tmp_path), "--dist.backend", "gloo", "--model.device", "cpu"]
    with pytest.raises(ConfigError, match="every process would train its own copy"):
        setup(load_config(None, [*base, "--dist.strategy", "none"]))
    with pytest.raises(ConfigError, match="divisible by world size 2"):
        setup(load_config(None, [*base, "--train.batch_size", "6", "--train.grad_accum", "2"]))
    with pytest.raises(ConfigError, match="dist.strategy"):
        setup(load_config(None, [*base, "--dist.strategy", "zero3"]))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP1"):
        setup(load_config(None, base))


def test_single_process_is_unchanged(tmp_path):
    ctx = setup(load_config(None, ["--train.output_dir", str(tmp_path)]))
    assert ctx == DistContext() and ctx.is_main and ctx.local_slice([3, 1, 2]) == [3, 1, 2]


def test_each_rank_takes_its_slice_of_the_global_batch():
    idx = list(range(10, 18))
    parts = [DistContext(strategy="ddp", rank=r, world_size=4).local_slice(idx) for r in range(4)]
    assert parts == [[10, 11], [12, 13], [14, 15], [16, 17]]
