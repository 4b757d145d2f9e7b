import torch
from torch import nn

from conftest import tiny_model
from hyft.zo.perturb import Direction, perturbed, zo_tensors


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


class _Small(nn.Module):
    """Embedding + linear + tied head in bf16: the owner/tie structure of an LM at a size 1,000 cycles can afford."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(64, 48)
        self.mid = nn.Linear(48, 48)
        self.head = nn.Linear(48, 64, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.mid(self.emb(ids))))


def test_perturb_restore_is_bit_exact_after_1000_cycles_bf16():
    torch.manual_seed(0)
    model = _Small().to(torch.bfloat16)
    before = _snapshot(model)
    tensors = zo_tensors(model, list(model.parameters()))
    ids = torch.arange(8)[None]
    with torch.no_grad():
        clean = model(ids)
        for i in range(1000):
            with perturbed(tensors, Direction(0, i, i % 3), 1e-3 if i % 2 else -1e-3):
                out = model(ids)
            assert not torch.equal(out, clean)  # the forward saw perturbed weights
    after = _snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_perturb_restore_is_bit_exact_on_a_whole_llm_bf16():
    model = tiny_model("llama", dtype=torch.bfloat16)
    before = _snapshot(model)
    tensors = zo_tensors(model, list(model.parameters()))
    ids = torch.randint(0, 200, (1, 4))
    with torch.no_grad():
        for i in range(20):
            with perturbed(tensors, Direction(0, i, 0), 1e-3 if i % 2 else -1e-3):
                model(input_ids=ids)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())


def test_in_place_add_subtract_is_not_exact_in_bf16():
    """The reason for the design: w + mu z - mu z != w in bf16."""
    w = (torch.randn(10000) * 0.02).to(torch.bfloat16)
    z = torch.randn(10000, generator=torch.Generator().manual_seed(0))
    v = w.clone()
    for _ in range(50):
        v.add_((1e-3 * z).to(torch.bfloat16)).sub_((1e-3 * z).to(torch.bfloat16))
    assert (v != w).float().mean() > 0.05


def test_perturbed_forward_equals_functional_perturbation():
    model = tiny_model("opt").eval()  # OPT has dropout: compare deterministic forwards
    tensors = zo_tensors(model, list(model.parameters()))
    d = Direction(3, 7, 1)
    ids = torch.randint(0, 200, (2, 5))
    with torch.no_grad(), perturbed(tensors, d, 0.01):
        got = model(input_ids=ids).logits
    shifted = {n: (p + 0.01 * d.z(t)) for (n, p), t in zip(model.named_parameters(), tensors)}
    with torch.no_grad():
        want = torch.func.functional_call(model, shifted, (), {"input_ids": ids}).logits
    torch.testing.assert_close(got, want)


def test_tied_weights_are_one_tensor_perturbed_once_consistently():
    model = tiny_model("llama")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    tensors = zo_tensors(model, list(model.parameters()))
    tied = [t for t in tensors if t.param is model.lm_head.weight]
    assert len(tied) == 1 and len(tied[0].owners) == 2


def test_directions_are_keyed_and_leave_global_rng_alone():
    p = nn.Parameter(torch.zeros(1000))
    m = nn.Linear(1, 1)
    m.weight2 = p
    (t,) = zo_tensors(m, [p])
    state = torch.random.get_rng_state()
    a = Direction(1, 2, 3).z(t)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, Direction(1, 2, 3).z(t))
    for other in (Direction(1, 2, 4), Direction(1, 3, 3), Direction(2, 2, 3)):
        b = other.z(t)
        assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1]) < 0.1
    r = Direction(1, 2, 3, "rademacher").z(t)
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(a.mean()) < 0.1 and abs(a.std() - 1) < 0.1


def test_unperturbed_module_is_reported():
    m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    tensors = zo_tensors(m, list(m.parameters()))
    try:
        with perturbed(tensors, Direction(0, 0, 0), 0.1):
            m[0](torch.ones(1, 2))  # m[1] never called
    except RuntimeError as e:
        assert "never called" in str(e)
    else:
        raise AssertionError("expected an error")
    assert all(p.data.data_ptr() for p in m.parameters())
