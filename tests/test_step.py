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
