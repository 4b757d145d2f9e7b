import pytest
import torch

from conftest import tiny_model
from hyft.optim import HybridOptimizer
from hyft.step import hybrid_step, step_counts


def _lm_loss(model):
    ids = torch.randint(0, 200, (4, 12), generator=torch.Generator().manual_seed(0))

    def loss(batch):
        logits = model(input_ids=ids).logits[:, :-1]
        return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    return loss


def test_shared_dropout_makes_compared_forwards_the_same_function():
    grads = {}
    for dropout in ("shared", "independent"):
        model = tiny_model("opt").train()  # OPT applies dropout 0.1 in train mode
        for p in model.parameters():
            p.requires_grad_(False)
        opt = HybridOptimizer(model, zo_params=list(model.parameters()), zo_lr=0.0, mu=1e-5)
        # "independent" emulates not handling dropout: each forward draws its own masks.
        mode = "shared" if dropout == "shared" else "off"
        r = hybrid_step(opt, _lm_loss(model), [None], schedule="onesided", dropout=mode)
        grads[dropout] = r.zo_grads.abs().item()
    assert grads["shared"] * 20 < grads["independent"], grads


def test_eval_mode_forwards_are_deterministic():
    model = tiny_model("opt").eval()
    loss = _lm_loss(model)
    with torch.no_grad():
        assert torch.equal(loss(None), loss(None))


def test_gradient_accumulation_shares_one_direction_and_averages():
    model = tiny_model("llama")
    params = list(model.parameters())
    for p in params:
        p.requires_grad_(False)
    opt = HybridOptimizer(model, zo_params=params, zo_lr=1e-3, mu=1e-3, queries=2)
    r = hybrid_step(opt, _lm_loss(model), [None, None, None], schedule="central")
    assert r.forwards == 3 * 4 and r.backwards == 0 and opt.zo_step == 1
    # identical micro-batches: the average equals one micro-batch's estimate
    model2 = tiny_model("llama")
    for p in model2.parameters():
        p.requires_grad_(False)
    opt2 = HybridOptimizer(model2, zo_params=list(model2.parameters()), zo_lr=1e-3, mu=1e-3, queries=2)
    r2 = hybrid_step(opt2, _lm_loss(model2), [None], schedule="central")
    torch.testing.assert_close(r.zo_grads, r2.zo_grads)
    for a, b in zip(model.parameters(), model2.parameters()):
        torch.testing.assert_close(a, b)


def test_vetoed_step_changes_nothing_and_keeps_the_step_key():
    model = tiny_model("llama")
    fo = [model.lm_head.weight]
    zo = [p for p in model.parameters() if p is not model.lm_head.weight]
    for p in zo:
        p.requires_grad_(False)
    opt = HybridOptimizer(model, fo_params=fo, zo_params=zo, fo_lr=1e-2, zo_lr=1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    r = hybrid_step(opt, _lm_loss(model), [None], accept=lambda res: False)
    assert not r.applied and opt.zo_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert all(p.grad is None for p in fo)


def test_step_counts_table():
    assert step_counts("onesided", True, True, 1) == (2, 1)
    assert step_counts("central", True, True, 2) == (5, 1)
    assert step_counts("onesided", False, True, 3) == (4, 0)
    assert step_counts("central", False, True, 1) == (2, 0)
    assert step_counts("alternating", True, False, 1) == (1, 1)


def _recording_loss(model, draws):
    """An LM loss that also records one draw of the global RNG per forward: what a dropout mask would see."""
    lm = _lm_loss(model)

    def loss(batch):
        draws.append((batch, torch.rand(3)))
        return lm(batch)

    return loss


def _masks_over_steps(fo: bool, zo: bool, schedule: str = "onesided", steps: int = 3, micro: int = 2):
    model = tiny_model("llama")
    head = [model.lm_head.weight]
    rest = [p for p in model.parameters() if p is not model.lm_head.weight]
    for p in rest:
        p.requires_grad_(False)
    opt = HybridOptimizer(model, fo_params=head if fo else (), zo_params=rest if zo else (), fo_lr=1e-3, zo_lr=1e-6)
    per_step = []
    for _ in range(steps):
        draws = []
        hybrid_step(opt, _recording_loss(model, draws), list(range(micro)), schedule=schedule, dropout="shared")
        per_step.append(draws)
    return per_step


@pytest.mark.parametrize(
    "fo, zo, schedule",
    [(True, False, "onesided"), (True, True, "onesided"), (False, True, "onesided"), (True, True, "alternating"),
     (False, True, "central")],
    ids=["fo-only", "hybrid", "zo-only", "alternating", "zo-central"],
)  # fmt: skip
def test_shared_dropout_draws_new_masks_every_step_and_micro_batch(fo, zo, schedule):
    """dropout shared: all forwards of one micro-batch in a step (FO, perturbed, baseline) see one mask; another
    micro-batch or another optimizer step sees another, whatever groups the method has."""
    per_step = _masks_over_steps(fo, zo, schedule)
    masks = []
    for draws in per_step:
        by_batch = {}
        for batch, d in draws:
            by_batch.setdefault(batch, []).append(d)
        for ds in by_batch.values():  # the compared forwards compute one function
            assert all(torch.equal(ds[0], d) for d in ds[1:])
        masks.extend(ds[0] for ds in by_batch.values())
    assert len(masks) == 3 * 2
    for i in range(len(masks)):
        for j in range(i):
            assert not torch.equal(masks[i], masks[j]), (i, j)


def test_the_dropout_step_key_survives_a_state_dict_round_trip():
    model = tiny_model("llama")
    opt = HybridOptimizer(model, fo_params=[model.lm_head.weight], fo_lr=1e-3)
    for _ in range(2):
        hybrid_step(opt, _lm_loss(model), [None])
    again = HybridOptimizer(model, fo_params=[model.lm_head.weight], fo_lr=1e-3)
    again.load_state_dict(opt.state_dict())
    assert opt.steps == again.steps == 2 and again.zo_step == 0
