import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from riskcl.losses import (RCL_PRESETS, class_weights_from_counts, create_loss, cross_entropy, focal_loss,
                           hierarchical_cross_entropy, list_losses, risk_calibrated_loss, soft_label_loss)
from riskcl.taxonomy import Taxonomy, get_taxonomy, severity_matrix

TAX = get_taxonomy("isic2018")
COUNTS = [50, 400, 30, 20, 60, 10, 15]


def _batch(n=16, k=7, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g, dtype=dtype) * scale, torch.randint(0, k, (n,), generator=g))


# --- independent references -----------------------------------------------------------------------------------
def test_ce_ls_wce_match_plain_pytorch():
    x, y = _batch()
    torch.testing.assert_close(create_loss("ce")(x, y), F.cross_entropy(x, y))
    torch.testing.assert_close(create_loss("ls", epsilon=0.1)(x, y), F.cross_entropy(x, y, label_smoothing=0.1))
    w = torch.tensor([sum(COUNTS) / (7 * c) for c in COUNTS])
    torch.testing.assert_close(create_loss("wce", taxonomy=TAX, class_counts=COUNTS)(x, y),
                               F.cross_entropy(x, y, weight=w))


def test_label_smoothing_by_hand():
    x = torch.tensor([[1.0, 2.0, 0.5]])
    eps = 0.1
    logp = torch.log_softmax(x, 1)[0]
    q = torch.tensor([eps / 3, eps / 3, 1 - eps + eps / 3])
    assert create_loss("ls", epsilon=eps)(x, torch.tensor([2])).item() == pytest.approx(-(q * logp).sum().item())


def test_class_weights_formula():
    w = class_weights_from_counts([30, 10])
    assert w.tolist() == pytest.approx([40 / 60, 40 / 20])
    with pytest.raises(ValueError, match=r"classes \[1\] have none"):
        class_weights_from_counts([3, 0])


def test_focal_direct_formula():
    x, y = _batch(seed=3)
    p = torch.softmax(x.double(), 1)[torch.arange(len(y)), y]
    want = (-0.25 * (1 - p) ** 2 * torch.log(p)).mean()
    assert create_loss("focal")(x.double(), y).item() == pytest.approx(want.item(), rel=1e-10)
    # gamma = 0, alpha = 1 is CE.
    torch.testing.assert_close(focal_loss(x, y, gamma=0.0, alpha=1.0), F.cross_entropy(x, y))


def test_rcl_direct_formula_hand_case():
    m = torch.tensor([[1.0, 5.0], [20.0, 1.0]])
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [0.0, 4.0]])
    y = torch.tensor([1, 0, 0, 1])  # Type II, Type I, correct, correct
    ce = [math.log1p(math.exp(2)), math.log1p(math.exp(1)), math.log1p(math.exp(-2)), math.log1p(math.exp(-4))]
    want = (20 * ce[0] + 5 * ce[1] + ce[2] + ce[3]) / 4
    assert risk_calibrated_loss(x, y, m).item() == pytest.approx(want, rel=1e-6)


def test_rcl_matches_direct_formula_on_random_batches():
    x, y = _batch(64, seed=5)
    m = torch.as_tensor(severity_matrix(TAX, 5, 20), dtype=torch.float32)
    want = torch.stack([m[y[i], x[i].argmax()] * -torch.log_softmax(x[i], 0)[y[i]] for i in range(64)]).mean()
    torch.testing.assert_close(create_loss("rcl-proposed", taxonomy=TAX)(x, y), want)


def test_rcl_presets_are_the_papers_table_iv():
    assert RCL_PRESETS == {"light": (5, 5), "balanced": (2, 10), "structsafe": (5, 10), "uniform": (10, 10),
                           "sparse": (1, 20), "proposed": (5, 20), "highstruct": (10, 20)}
    for name, (l1, l2) in RCL_PRESETS.items():
        loss = create_loss(f"rcl-{name}", taxonomy=TAX)
        np.testing.assert_array_equal(loss.matrix.numpy(), severity_matrix(TAX, l1, l2).astype(np.float32))


# --- properties -------------------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), seed=st.integers(0, 10_000), scale=st.floats(0.1, 50))
def test_rcl_with_unit_lambdas_equals_ce_exactly(n, seed, scale):
    x, y = _batch(n, seed=seed, scale=scale)
    rcl = create_loss("rcl", taxonomy=TAX, lambda1=1, lambda2=1)(x, y)
    assert torch.equal(rcl, create_loss("ce")(x, y))
    torch.testing.assert_close(rcl, F.cross_entropy(x, y))


def _loss(name: str):
    """Loss ``name`` as the training loop calls it; distillation with a teacher that disagrees (flipped logits)."""
    if name != "distill":
        return create_loss(name, taxonomy=TAX, class_counts=COUNTS)
    loss = create_loss(name, teacher="in memory")
    loss.attach_teacher(torch.nn.Identity())

    def call(x, y):
        loss.set_inputs(x.detach().flip(1))
        return loss(x, y)
    return call


@pytest.mark.parametrize("name", list_losses("classification"))
def test_every_loss_is_invariant_to_batch_order(name):
    x, y = _batch(32, seed=11)
    loss = _loss(name)
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(loss(x, y), loss(x[perm], y[perm]))


@pytest.mark.parametrize("name", list_losses("classification"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_loss_is_finite_on_extreme_logits(name, dtype):
    x, y = _batch(16, seed=2, scale=1e4, dtype=dtype)
    x.requires_grad_(True)
    value = _loss(name)(x, y)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("name", list_losses("classification"))
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_loss_under_autocast_low_precision_logits(name, dtype):
    x, y = _batch(16, seed=4, scale=300.0)
    x = x.to(dtype).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = _loss(name)(x, y)
    value.backward()
    assert value.dtype in (torch.float32, torch.float64) and torch.isfinite(value)
    assert torch.isfinite(x.grad.float()).all()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), l1=st.floats(0, 30), l2=st.floats(0, 30))
def test_rcl_gradient_is_weight_times_ce_gradient_per_sample(seed, l1, l2):
    x, y = _batch(8, seed=seed)
    m = torch.as_tensor(severity_matrix(TAX, l1, l2), dtype=torch.float64)
    for i in range(8):
        xi = x[i : i + 1].double().requires_grad_(True)
        risk_calibrated_loss(xi, y[i : i + 1], m).backward()
        xc = x[i : i + 1].double().requires_grad_(True)
        F.cross_entropy(xc, y[i : i + 1]).backward()
        w = m[y[i], x[i].argmax()]
        torch.testing.assert_close(xi.grad, w * xc.grad)


def test_modules_keep_matrices_as_buffers():
    loss = create_loss("rcl-proposed", taxonomy=TAX)
    assert "matrix" in loss.state_dict()
    wce = create_loss("wce", taxonomy=TAX, class_counts=COUNTS)
    assert "weight" in wce.state_dict()
    assert loss.to(torch.float64).matrix.dtype == torch.float64


# --- hierarchy-aware baselines ------------------------------------------------------------------------------------
def test_hxe_collapsed_hierarchy_or_zero_alpha_equals_ce():
    x, y = _batch(32, seed=9)
    sup = torch.as_tensor(TAX.superclass)
    torch.testing.assert_close(hierarchical_cross_entropy(x, y, sup, alpha=0.7, levels=1), F.cross_entropy(x, y))
    torch.testing.assert_close(hierarchical_cross_entropy(x, y, sup, alpha=0.0), F.cross_entropy(x, y))


def test_hxe_hand_case():
    tax = Taxonomy("t", ("b1", "b2", "m1"), (0, 0, 1))
    x = torch.tensor([[1.0, 0.0, 2.0]])
    p = torch.softmax(x, 1)[0]
    ps = p[0] + p[1]
    want = -(torch.log(p[0] / ps)) - math.exp(-0.5) * torch.log(ps)
    got = create_loss("hxe", taxonomy=tax, alpha=0.5)(x, torch.tensor([0]))
    assert got.item() == pytest.approx(want.item(), rel=1e-6)


def test_soft_labels_approach_ce_as_beta_grows():
    x, y = _batch(32, seed=7)
    sup = torch.as_tensor(TAX.superclass)
    ce = F.cross_entropy(x, y).item()
    gaps = [abs(soft_label_loss(x, y, sup, beta).item() - ce) for beta in (1.0, 5.0, 20.0, 60.0)]
    assert gaps == sorted(gaps, reverse=True) and gaps[-1] < 1e-6


def test_expected_cost_loss_formula():
    x, y = _batch(8, seed=1)
    m = torch.as_tensor(severity_matrix(TAX, 5, 20), dtype=torch.float32)
    want = F.cross_entropy(x, y) + 0.5 * (torch.softmax(x, 1) * m[y]).sum(1).mean()
    torch.testing.assert_close(create_loss("expected-cost", taxonomy=TAX, weight=0.5)(x, y), want)


# --- errors ------------------------------------------------------------------------------------------------------
def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="did you mean 'rcl-proposed'"):
        create_loss("rcl-proposd", taxonomy=TAX)
    with pytest.raises(ValueError, match="has no parameter 'lamda2'.*did you mean 'lambda2'"):
        create_loss("rcl", taxonomy=TAX, lamda2=3)
    with pytest.raises(ValueError, match="needs `class_counts`"):
        create_loss("wce", taxonomy=TAX)
    with pytest.raises(ValueError, match="needs a `taxonomy`"):
        create_loss("rcl")
    with pytest.raises(ValueError, match="lambda2"):
        create_loss("rcl", taxonomy=TAX, lambda2=-1)
    with pytest.raises(ValueError, match="shape"):
        create_loss("rcl", taxonomy=TAX, cost_matrix=[[1, 2], [3, 1]])
    with pytest.raises(ValueError, match=r"shape \(N, K\)"):
        cross_entropy(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="integer tensor"):
        cross_entropy(torch.zeros(3, 2), torch.zeros(3))
    with pytest.raises(ValueError, match="K = 7"):
        create_loss("rcl", taxonomy=TAX)(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


def test_custom_cost_matrix_through_registry():
    m = np.ones((7, 7))
    m[0, 1] = 100.0  # MEL called NV
    loss = create_loss("rcl", taxonomy=TAX, cost_matrix=m.tolist())
    x = torch.zeros(1, 7)
    x[0, 1] = 5.0
    assert loss(x, torch.tensor([0])).item() == pytest.approx(100 * F.cross_entropy(x, torch.tensor([0])).item())


# --- the frontier's contenders: reference, gradient check, bf16 ------------------------------------------------
def _mal_logodds_reference(x):
    p = torch.softmax(x.double(), 1)
    sup = torch.as_tensor(TAX.superclass, dtype=torch.bool)
    p_mal = p[:, sup].sum(1)
    return p_mal, torch.log(p_mal) - torch.log(1 - p_mal)


def test_logit_adjusted_ce_against_its_formula():
    x, y = _batch(32, seed=21)
    prior = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)
    for tau in (0.0, 1.0, 2.5):
        want = F.cross_entropy(x.double() + tau * torch.log(prior), y)
        got = create_loss("logit-adjust", taxonomy=TAX, class_counts=COUNTS, tau=tau)(x.double(), y)
        assert got.item() == pytest.approx(want.item(), rel=1e-6)  # the log priors are a float32 buffer
    torch.testing.assert_close(create_loss("logit-adjust", taxonomy=TAX, class_counts=COUNTS, tau=0.0)(x, y),
                               F.cross_entropy(x, y))


def test_marginal_bce_against_a_plain_reference():
    x, y = _batch(32, seed=22)
    p_mal, _ = _mal_logodds_reference(x)
    s = torch.as_tensor(TAX.superclass)[y].double()
    for weight, pos_weight in ((1.0, 1.0), (0.5, 3.0)):
        bce = -(pos_weight * s * torch.log(p_mal) + (1 - s) * torch.log(1 - p_mal))
        want = (F.cross_entropy(x.double(), y, reduction="none") + weight * bce).mean()
        got = create_loss("marginal-bce", taxonomy=TAX, weight=weight, pos_weight=pos_weight)(x.double(), y)
        assert got.item() == pytest.approx(want.item(), rel=1e-9)
    auto = create_loss("marginal-bce", taxonomy=TAX, class_counts=COUNTS, pos_weight="auto")
    sup = np.asarray(TAX.superclass)
    assert auto.pos_weight == pytest.approx(np.sum(np.array(COUNTS)[sup == 0]) / np.sum(np.array(COUNTS)[sup == 1]))


def test_partial_auc_surrogate_against_a_pairwise_loop():
    x, y = _batch(40, seed=23)
    _, z = _mal_logodds_reference(x)
    mal = torch.as_tensor(TAX.superclass, dtype=torch.bool)[y]
    beta, margin, weight = 0.25, 1.0, 0.7
    pos, neg = sorted(z[mal].tolist()), z[~mal].tolist()
    hardest = pos[: max(1, int(np.ceil(beta * len(pos))))]
    pairs = [max(0.0, margin - (p - n)) ** 2 for p in hardest for n in neg]
    want = F.cross_entropy(x.double(), y).item() + weight * float(np.mean(pairs))
    got = create_loss("pauc", taxonomy=TAX, weight=weight, beta=beta, margin=margin)(x.double(), y)
    assert got.item() == pytest.approx(want, rel=1e-9)
    only_benign = torch.tensor([1, 4, 5, 6, 1, 4])  # no malignant case: the surrogate adds nothing
    xb = x[:6].double()
    assert create_loss("pauc", taxonomy=TAX)(xb, only_benign).item() == pytest.approx(
        F.cross_entropy(xb, only_benign).item())


def test_rcl_warmup_is_ce_until_the_warmup_ends():
    x, y = _batch(32, seed=24)
    loss = create_loss("rcl-proposed", taxonomy=TAX, warmup_epochs=2)
    for epoch, same_as_ce in ((0, True), (1, True), (2, False)):
        loss.set_epoch(epoch)
        assert torch.equal(loss(x, y), F.cross_entropy(x, y, reduction="none").mean()) == same_as_ce
    loss.set_epoch(5)
    torch.testing.assert_close(loss(x, y), create_loss("rcl-proposed", taxonomy=TAX)(x, y))


@pytest.mark.parametrize("name,params", [("logit-adjust", {}), ("marginal-bce", {"pos_weight": 2.0}),
                                         ("pauc", {"beta": 0.5}), ("rcl-proposed", {"warmup_epochs": 1})])
def test_new_losses_pass_gradcheck(name, params):
    x, y = _batch(12, seed=25, scale=1.0, dtype=torch.float64)
    loss = create_loss(name, taxonomy=TAX, class_counts=COUNTS, **params).double()
    assert torch.autograd.gradcheck(lambda z: loss(z, y), (x.requires_grad_(True),))
