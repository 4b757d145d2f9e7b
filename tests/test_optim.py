import pytest
import torch

from conftest import tiny_model
from hyft.optim import HybridOptimizer


def _opt(model, **kw):
    fo = [model.lm_head.weight]
    zo = [p for p in model.parameters() if p is not model.lm_head.weight]
    for p in zo:
        p.requires_grad_(False)
    return HybridOptimizer(model, fo_params=fo, zo_params=zo, **kw)


def test_groups_are_tagged_and_shared_with_the_inner_optimizer():
    opt = _opt(tiny_model("llama"), fo_optimizer="adamw", fo_lr=1e-3, zo_lr=1e-6)
    kinds = [g["kind"] for g in opt.param_groups]
    assert kinds == ["fo", "zo"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, [lambda s: 0.5, lambda s: 0.25])
    assert opt.fo.param_groups[0] is opt.param_groups[0]
    assert opt.fo.param_groups[0]["lr"] == pytest.approx(5e-4) and opt.zo_group["lr"] == pytest.approx(2.5e-7)
    del sched


def test_state_dict_roundtrip_continues_identically():
    def run(split):
        model = tiny_model("llama")
        opt = _opt(model, fo_optimizer="adamw", zo_momentum=0.9, zo_lr=1e-3)
        ids = torch.randint(0, 200, (2, 8), generator=torch.Generator().manual_seed(1))
        for i in range(4):
            if i == split:
                state = opt.state_dict()
                opt = _opt(model, fo_optimizer="adamw", zo_momentum=0.9, zo_lr=1e-3)
                opt.load_state_dict(state)
            model(input_ids=ids).logits.float().pow(2).mean().backward()
            opt.accumulate_zo(torch.tensor([0.5 + i]))
            opt.step()
            opt.zero_grad()
        return [p.detach().clone() for p in model.parameters()], opt

    a, opt_a = run(split=-1)
    b, opt_b = run(split=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert opt_a.zo_step == opt_b.zo_step == 4 and len(opt_b.ledger) == 4


def test_zo_step_without_estimate_is_an_error():
    opt = _opt(tiny_model("llama"))
    with pytest.raises(RuntimeError, match="accumulate_zo"):
        opt.step()
