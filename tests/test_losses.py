"""ncakit.losses against MATH.md: anchors, identities, closed-form optima, a float64 oracle, numerics,
masks and a table of bad inputs. Every assertion names its reason."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _inputs import chosen_first, rand_inputs

from ncakit import losses as L
from ncakit.registry import LOSS_SPECS, get_loss, loss_names, loss_spec

# The core losses of MATH.md. Extension modules (ncakit.zoo) register more; they have their own tests.
CORE = [
    "infonca",
    "nca",
    "plackett_luce",
    "dpo",
    "nca_pair",
    "biased_nca",
    "ipo",
    "label_smoothed_dpo",
    "robust_dpo",
    "hinge",
]
KWAY = ["infonca", "nca", "plackett_luce"]
PAIRWISE = [n for n in CORE if LOSS_SPECS[n].pairwise]
TOL = dict(rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Anchors at policy = reference (MATH.md "Test anchors")
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("K", [2, 3, 4, 7])
@pytest.mark.parametrize("beta", [0.01, 0.1, 1.0])
def test_kway_anchors_at_reference(K, beta):
    ref = torch.randn(6, K, dtype=torch.float64) - 30
    rew = torch.randn(6, K, dtype=torch.float64) * 4
    expected = {"infonca": math.log(K), "nca": 2 * math.log(2), "plackett_luce": math.lgamma(K + 1)}
    for name, value in expected.items():
        out = (
            get_loss(name)(ref.clone(), ref, rew, beta=beta, alpha=0.7)
            if name != "plackett_luce"
            else get_loss(name)(ref.clone(), ref, rew, beta=beta)
        )
        # MATH.md anchors: InfoNCA = ln K, NCA = 2 ln 2, Plackett-Luce = ln K! for ANY rewards.
        torch.testing.assert_close(out.loss, torch.full((6,), value, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_pairwise_anchors_at_reference(beta):
    ref = torch.randn(4, 2, dtype=torch.float64) - 10
    ln2 = math.log(2)
    expected = {
        "dpo": ln2,  # -log sigma(0)
        "nca_pair": 2 * ln2,  # -log s(0) - 1/2 log s(0) - 1/2 log s(0)
        "biased_nca": 2 * ln2,
        "label_smoothed_dpo": ln2,  # (1-e) ln2 + e ln2
        "robust_dpo": ln2,  # [(1-e) ln2 - e ln2] / (1-2e)
        "hinge": 1.0,  # max(0, 1 - 0)
        "ipo": (1 / (2 * beta)) ** 2,  # (0 - 1/(2 beta))^2
    }
    assert set(expected) == set(PAIRWISE), "every registered pairwise loss has an anchor here"
    for name, value in expected.items():
        out = get_loss(name)(ref.clone(), ref, beta=beta)
        torch.testing.assert_close(out.loss, torch.full((4,), value, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("beta", [0.05, 0.5])
def test_dpo_gradient_anchor(beta):
    # MATH.md: dL_DPO/ds_w = -beta/2 at policy = reference (and +beta/2 for s_l).
    ref = torch.randn(3, 2, dtype=torch.float64)
    pol = ref.clone().requires_grad_(True)
    L.dpo(pol, ref, beta=beta).loss.sum().backward()
    torch.testing.assert_close(pol.grad[:, 0], torch.full((3,), -beta / 2, dtype=torch.float64), **TOL)
    torch.testing.assert_close(pol.grad[:, 1], torch.full((3,), beta / 2, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("K", [2, 4, 5])
def test_nca_and_infonca_gradient_anchor(K):
    # MATH.md: dL_NCA/dr_hat_i = (1/K - w_i)/2 at r_hat = 0. InfoNCA: p - w = 1/K - w.
    beta, alpha = 0.3, 0.5
    ref = torch.randn(4, K, dtype=torch.float64)
    rew = torch.randn(4, K, dtype=torch.float64)
    w = torch.softmax(rew / alpha, dim=-1)
    for name, factor in (("nca", 0.5), ("infonca", 1.0)):
        pol = ref.clone().requires_grad_(True)
        get_loss(name)(pol, ref, rew, beta=beta, alpha=alpha).loss.sum().backward()
        # d/ds = beta * d/dr_hat
        torch.testing.assert_close(pol.grad, beta * factor * (1 / K - w), **TOL)


# ---------------------------------------------------------------------------------------------
# Identities (random tensors, float64, 1e-10)
# ---------------------------------------------------------------------------------------------


def one_hot_rewards(B, dtype=torch.float64):
    # r = (1, 0) with alpha = 1e-3: softmax gives exp(-1000) = 0.0 exactly in float64, i.e. one-hot.
    return torch.tensor([[1.0, 0.0]], dtype=dtype).expand(B, 2).clone()


@pytest.mark.parametrize("seed", range(3))
def test_k2_one_hot_identities(seed):
    pol, ref, _ = rand_inputs(K=2, seed=seed)
    oh = one_hot_rewards(pol.shape[0])
    beta = 0.2
    dpo = L.dpo(pol, ref, beta=beta).loss
    # InfoNCA(K=2, one-hot) == DPO; NCA(K=2, one-hot) == pairwise NCA; PL(K=2) == DPO.
    torch.testing.assert_close(L.infonca(pol, ref, oh, beta=beta, alpha=1e-3).loss, dpo, **TOL)
    torch.testing.assert_close(
        L.nca(pol, ref, oh, beta=beta, alpha=1e-3).loss, L.nca_pair(pol, ref, beta=beta).loss, **TOL
    )
    torch.testing.assert_close(L.plackett_luce(pol, ref, oh, beta=beta).loss, dpo, **TOL)
    # label smoothing eps = 0 == DPO; robust eps = 0 == DPO.
    torch.testing.assert_close(
        L.label_smoothed_dpo(pol, ref, beta=beta, label_smoothing=0.0).loss, dpo, **TOL
    )
    torch.testing.assert_close(L.robust_dpo(pol, ref, beta=beta, label_smoothing=0.0).loss, dpo, **TOL)


def test_infonca_alpha_to_zero_approaches_dpo():
    # Soft labels -> one-hot as alpha -> 0: the gap to DPO shrinks monotonically.
    pol, ref, _ = rand_inputs(K=2, seed=4)
    rew = torch.tensor([[0.7, 0.2]], dtype=torch.float64).expand(pol.shape[0], 2)
    dpo = L.dpo(pol, ref, beta=0.1).loss
    gaps = [
        (L.infonca(pol, ref, rew, beta=0.1, alpha=a).loss - dpo).abs().max().item() for a in (1.0, 0.1, 0.01)
    ]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-10


@pytest.mark.parametrize("seed", range(3))
def test_shift_invariance(seed):
    pol, ref, rew = rand_inputs(seed=seed)
    shift = torch.randn(pol.shape[0], 1, dtype=torch.float64) * 5
    a = L.infonca(pol, ref, rew, beta=0.3).loss
    b = L.infonca(pol + shift, ref, rew, beta=0.3).loss
    # InfoNCA only sees differences within a prompt (softmax is shift-invariant).
    torch.testing.assert_close(a, b, **TOL)
    # NCA scores each response's absolute log-ratio: a per-prompt shift changes it.
    n_a = L.nca(pol, ref, rew, beta=0.3).loss
    n_b = L.nca(pol + shift, ref, rew, beta=0.3).loss
    assert (n_a - n_b).abs().min() > 1e-6
    # Both are blind to a constant added to all rewards of a prompt (softmax of r/alpha).
    for name in ("infonca", "nca", "plackett_luce"):
        fn = get_loss(name)
        torch.testing.assert_close(
            fn(pol, ref, rew, beta=0.3).loss, fn(pol, ref, rew + shift, beta=0.3).loss, **TOL
        )


@pytest.mark.parametrize("name", KWAY)
def test_joint_permutation_invariance(name):
    pol, ref, rew = rand_inputs(seed=7)
    perm = torch.tensor([2, 0, 3, 1])
    a = get_loss(name)(pol, ref, rew, beta=0.4).loss
    b = get_loss(name)(pol[:, perm], ref[:, perm], rew[:, perm], beta=0.4).loss
    torch.testing.assert_close(a, b, **TOL)


def _minimise(name, rew, alpha, K, steps=200):
    r_hat = torch.zeros(1, K, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([r_hat], lr=1, max_iter=steps, tolerance_grad=1e-14, tolerance_change=1e-16)
    ref = torch.zeros(1, K, dtype=torch.float64)

    def closure():
        opt.zero_grad()
        # beta = 1 so that the policy log-ratio IS r_hat.
        loss = get_loss(name)(r_hat, ref, rew, beta=1.0, alpha=alpha).loss.sum()
        loss.backward()
        return loss

    opt.step(closure)
    return r_hat.detach()[0]


@pytest.mark.parametrize("K", [2, 4, 6])
def test_optima_reached_by_lbfgs(K):
    g = torch.Generator().manual_seed(K)
    rew = torch.randn(1, K, generator=g, dtype=torch.float64)
    alpha = 0.8
    w = torch.softmax(rew[0] / alpha, dim=-1)
    # MATH.md: NCA's per-response optimum r_hat* = log(K w).
    torch.testing.assert_close(_minimise("nca", rew, alpha, K), torch.log(K * w), rtol=0, atol=1e-6)
    # MATH.md: InfoNCA's optimum r_hat* = r/alpha + C: compare after removing the mean.
    r_star = _minimise("infonca", rew, alpha, K)
    target = rew[0] / alpha
    torch.testing.assert_close(r_star - r_star.mean(), target - target.mean(), rtol=0, atol=1e-6)


def test_nca_pair_optimum_is_log2():
    # MATH.md: pairwise NCA's optimum for the chosen response is r_hat_w* = log 2.
    r = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([r], lr=1, max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = L.nca_pair(r, torch.zeros(1, 2, dtype=torch.float64), beta=1.0).loss.sum()
        loss.backward()
        return loss

    opt.step(closure)
    assert abs(r[0, 0].item() - math.log(2)) < 1e-6


# ---------------------------------------------------------------------------------------------
# The float64 oracle: every loss computed a second, naive way (explicit loops, no logsigmoid)
# ---------------------------------------------------------------------------------------------


def _log_sigmoid(x):
    return -torch.log1p(torch.exp(-x))


def oracle(name, pol, ref, rew, beta, alpha=1.0, mask=None, eps=0.1):
    B, K = pol.shape
    losses = []
    for b in range(B):
        idx = [k for k in range(K) if mask is None or bool(mask[b, k])]
        r_hat = {k: beta * (pol[b, k] - ref[b, k]) for k in idx}
        if name in ("infonca", "nca"):
            z = sum(torch.exp(rew[b, k] / alpha) for k in idx)
            w = {k: torch.exp(rew[b, k] / alpha) / z for k in idx}
        if name == "infonca":
            lz = torch.log(sum(torch.exp(r_hat[k]) for k in idx))
            loss = -sum(w[k] * (r_hat[k] - lz) for k in idx)
        elif name == "nca":
            loss = -sum(w[k] * _log_sigmoid(r_hat[k]) for k in idx) - sum(
                _log_sigmoid(-r_hat[k]) for k in idx
            ) / len(idx)
        elif name == "plackett_luce":
            order = sorted(idx, key=lambda k: -float(rew[b, k]))
            loss = 0
            for pos in range(len(order) - 1):
                denom = sum(torch.exp(r_hat[j]) for j in order[pos:])
                loss = loss - (r_hat[order[pos]] - torch.log(denom))
        else:
            h = r_hat[0] - r_hat[1]
            if name == "dpo":
                loss = -_log_sigmoid(h)
            elif name == "nca_pair":
                loss = -_log_sigmoid(r_hat[0]) - 0.5 * _log_sigmoid(-r_hat[0]) - 0.5 * _log_sigmoid(-r_hat[1])
            elif name == "biased_nca":
                loss = -_log_sigmoid(r_hat[0]) - _log_sigmoid(-r_hat[1])
            elif name == "ipo":
                loss = ((pol[b, 0] - ref[b, 0]) - (pol[b, 1] - ref[b, 1]) - 1 / (2 * beta)) ** 2
            elif name == "label_smoothed_dpo":
                loss = -(1 - eps) * _log_sigmoid(h) - eps * _log_sigmoid(-h)
            elif name == "robust_dpo":
                loss = ((1 - eps) * -_log_sigmoid(h) - eps * -_log_sigmoid(-h)) / (1 - 2 * eps)
            elif name == "hinge":
                loss = torch.clamp(1 - h, min=0)
            else:
                raise AssertionError(name)
        losses.append(loss)
    return torch.stack(losses)


def _kwargs(name, alpha):
    if name in ("infonca", "nca"):
        return {"alpha": alpha}
    if name in ("label_smoothed_dpo", "robust_dpo"):
        return {"label_smoothing": 0.1}
    return {}


@pytest.mark.parametrize("name", sorted(CORE))
@pytest.mark.parametrize("seed", range(2))
def test_oracle_values_and_gradients(name, seed):
    pairwise = LOSS_SPECS[name].pairwise
    K = 2 if pairwise else 5
    pol, ref, rew = rand_inputs(B=4, K=K, seed=seed, scale=2.0)
    if pairwise:
        rew = chosen_first(rew)
    beta, alpha = 0.7, 0.6
    fn = get_loss(name)
    got = fn(pol, ref, rew, beta=beta, **_kwargs(name, alpha)).loss
    pol2 = pol.detach().clone().requires_grad_(True)
    want = oracle(name, pol2, ref, rew, beta, alpha)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g = torch.randn(4, dtype=torch.float64)
    (grad_got,) = torch.autograd.grad((got * g).sum(), pol)
    (grad_want,) = torch.autograd.grad((want * g).sum(), pol2)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", KWAY)
def test_oracle_with_mask_and_nan_padding(name):
    pol, ref, rew = rand_inputs(B=4, K=5, seed=11, scale=2.0)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 1, 0], [0, 1, 1, 1, 1]], dtype=torch.bool
    )
    # Garbage in padded slots must not reach values or gradients.
    pol_pad = torch.where(mask, pol.detach(), torch.full_like(pol, float("nan"))).requires_grad_(True)
    ref_pad = torch.where(mask, ref, torch.full_like(ref, float("inf")))
    rew_pad = torch.where(mask, rew, torch.full_like(rew, float("nan")))
    got = get_loss(name)(pol_pad, ref_pad, rew_pad, beta=0.5, mask=mask, **_kwargs(name, 0.9)).loss
    pol2 = pol.detach().clone().requires_grad_(True)
    want = oracle(name, pol2, ref, rew, 0.5, 0.9, mask=mask)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    (grad_got,) = torch.autograd.grad(got.sum(), pol_pad)
    (grad_want,) = torch.autograd.grad(want.sum(), pol2)
    assert torch.isfinite(grad_got).all()
    torch.testing.assert_close(grad_got, torch.where(mask, grad_want, torch.zeros_like(grad_want)), **TOL)


@pytest.mark.parametrize("name", KWAY)
def test_mask_equals_dropping_the_padded_columns(name):
    # A masked K=5 row must equal the same loss on that row's valid responses alone.
    pol, ref, rew = rand_inputs(B=1, K=5, seed=3)
    mask = torch.tensor([[1, 0, 1, 1, 0]], dtype=torch.bool)
    keep = mask[0].nonzero().flatten()
    a = get_loss(name)(pol, ref, rew, beta=0.3, mask=mask).loss
    b = get_loss(name)(pol[:, keep], ref[:, keep], rew[:, keep], beta=0.3).loss
    torch.testing.assert_close(a, b, **TOL)


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORE))
def test_outputs_shapes_detached_and_implicit_rewards(name):
    pairwise = LOSS_SPECS[name].pairwise
    K = 2 if pairwise else 4
    pol, ref, rew = rand_inputs(B=3, K=K)
    if pairwise:
        rew = chosen_first(rew)
    out = get_loss(name)(pol, ref, rew, beta=0.25)
    assert out.loss.shape == (3,) and out.loss.requires_grad
    assert not out.implicit_rewards.requires_grad and not out.weights.requires_grad
    if name != "ipo":  # ipo without lengths: r_hat = beta * (summed) log-ratio as well
        torch.testing.assert_close(out.implicit_rewards, 0.25 * (pol - ref).detach(), **TOL)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, dtype=torch.float64), **TOL)


def test_ipo_lengths_normalise_like_trl():
    pol, ref, _ = rand_inputs(B=3, K=2)
    lengths = torch.tensor([[4.0, 9.0], [1.0, 2.0], [7.0, 7.0]], dtype=torch.float64)
    a = L.ipo(pol, ref, beta=0.1, lengths=lengths).loss
    b = L.ipo(pol / lengths, ref / lengths, beta=0.1).loss  # averaged log-probs passed directly
    torch.testing.assert_close(a, b, **TOL)


def test_soft_labels_limits_and_tie_break():
    r = torch.tensor([[9.0, 9.0, 5.0, 1.0]], dtype=torch.float64)
    # alpha large -> uniform; alpha small -> one-hot on the best (ties split equally).
    torch.testing.assert_close(
        L.soft_labels(r, 1e9), torch.full((1, 4), 0.25, dtype=torch.float64), atol=1e-8, rtol=0
    )
    torch.testing.assert_close(
        L.soft_labels(r, 1e-3), torch.tensor([[0.5, 0.5, 0.0, 0.0]], dtype=torch.float64), **TOL
    )
    # The authors' +0.01 bonus on the first response with temperature 1e-4 breaks the tie: one-hot on column 0.
    w = L.soft_labels(r, 1e-4, first_bonus=0.01)
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64), **TOL)


def test_pairwise_to_k():
    c, r = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    torch.testing.assert_close(L.pairwise_to_k(c, r), torch.tensor([[1.0, 3.0], [2.0, 4.0]]))
    out = L.dpo(L.pairwise_to_k(c, r), L.pairwise_to_k(torch.zeros(2), torch.zeros(2)), beta=1.0)
    # h = (1 - 3) and (2 - 4): -log sigma(-2)
    torch.testing.assert_close(
        out.loss, torch.full((2,), -math.log(torch.sigmoid(torch.tensor(-2.0)).item()))
    )


def test_registry_names_follow_trl():
    for trl_name in ("sigmoid", "ipo", "hinge", "robust", "nca_pair", "bco_pair"):
        assert trl_name in loss_names(aliases=True)
    assert get_loss("sigmoid") is L.dpo and get_loss("robust") is L.robust_dpo
    assert loss_spec("sigmoid").name == "dpo"
    with pytest.raises(ValueError, match="unknown loss 'nope'.*expected one of"):
        get_loss("nope")


# ---------------------------------------------------------------------------------------------
# Numerics: |r_hat| up to 1e4, float32 and bfloat16 inputs
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CORE))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_extreme_values_stay_finite(name, dtype, magnitude):
    pairwise = LOSS_SPECS[name].pairwise
    K = 2 if pairwise else 4
    signs = torch.tensor([[1.0, -1.0, 1.0, -1.0][:K], [-1.0, 1.0, -1.0, 1.0][:K]])
    beta = 1.0
    pol = (signs * magnitude / beta).to(dtype).requires_grad_(True)
    ref = torch.zeros(2, K, dtype=dtype)
    rew = torch.tensor([[3.0, 1.0, 2.0, 0.0][:K], [3.0, 1.0, 2.0, 0.0][:K]], dtype=dtype)
    out = get_loss(name)(pol, ref, rew, beta=beta, **_kwargs(name, 0.5))
    assert out.loss.dtype == torch.float32, "bf16/fp32 inputs are computed in float32"
    assert torch.isfinite(out.loss).all(), out.loss
    out.loss.sum().backward()
    assert torch.isfinite(pol.grad.float()).all()


# ---------------------------------------------------------------------------------------------
# Bad inputs: each error names the argument and what was expected
# ---------------------------------------------------------------------------------------------

B, K = 3, 4
P, R, W = torch.zeros(B, K), torch.zeros(B, K), torch.randn(B, K)
P2, R2 = torch.zeros(B, 2), torch.zeros(B, 2)
NAN = torch.tensor(float("nan"))

BAD = [
    # (id, loss, args, kwargs, error type, message regex)
    ("1-D policy", "nca", (torch.zeros(4), R, W), {}, ValueError, r"policy_logps: expected shape \[B, K\]"),
    (
        "3-D policy",
        "nca",
        (torch.zeros(B, K, 1), R, W),
        {},
        ValueError,
        r"policy_logps: expected shape \[B, K\]",
    ),
    (
        "ref shape",
        "nca",
        (P, torch.zeros(B, K + 1), W),
        {},
        ValueError,
        r"ref_logps: expected the same shape .*\[3, 4\].*got \[3, 5\]",
    ),
    (
        "K mismatch rewards",
        "infonca",
        (P, R, torch.zeros(B, K - 1)),
        {},
        ValueError,
        r"rewards: expected the same shape",
    ),
    (
        "B mismatch rewards",
        "infonca",
        (P, R, torch.zeros(B + 1, K)),
        {},
        ValueError,
        r"rewards: expected the same shape",
    ),
    ("missing rewards", "nca", (P, R, None), {}, ValueError, r"rewards: this loss needs explicit rewards"),
    (
        "nan rewards",
        "nca",
        (P, R, torch.where(torch.eye(B, K).bool(), NAN, W)),
        {},
        ValueError,
        r"rewards: expected finite",
    ),
    (
        "inf policy",
        "infonca",
        (torch.full((B, K), float("-inf")), R, W),
        {},
        ValueError,
        r"policy_logps: expected finite",
    ),
    ("nan ref", "dpo", (P2, torch.full((B, 2), float("nan"))), {}, ValueError, r"ref_logps: expected finite"),
    ("alpha 0", "nca", (P, R, W), {"alpha": 0.0}, ValueError, r"alpha: expected a finite value > 0"),
    (
        "alpha negative",
        "infonca",
        (P, R, W),
        {"alpha": -1.0},
        ValueError,
        r"alpha: expected a finite value > 0",
    ),
    ("beta 0", "dpo", (P2, R2), {"beta": 0.0}, ValueError, r"beta: expected a finite value > 0"),
    ("beta inf", "nca", (P, R, W), {"beta": float("inf")}, ValueError, r"beta: expected a finite value > 0"),
    ("beta str", "nca", (P, R, W), {"beta": "0.1"}, TypeError, r"beta: expected a float > 0, got str"),
    (
        "mask < 2",
        "nca",
        (P, R, W),
        {"mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]]).bool()},
        ValueError,
        r"mask: every prompt needs at least 2 valid responses; rows \[1\]",
    ),
    (
        "mask dtype",
        "nca",
        (P, R, W),
        {"mask": torch.ones(B, K)},
        TypeError,
        r"mask: expected dtype torch.bool",
    ),
    (
        "mask shape",
        "nca",
        (P, R, W),
        {"mask": torch.ones(B, K + 1, dtype=torch.bool)},
        ValueError,
        r"mask: expected shape \[3, 4\]",
    ),
    (
        "int dtype",
        "nca",
        (torch.zeros(B, K, dtype=torch.long), R, W),
        {},
        TypeError,
        r"policy_logps: expected a floating-point tensor",
    ),
    ("numpy input", "nca", (P.numpy(), R, W), {}, TypeError, r"policy_logps: expected a torch.Tensor"),
    (
        "empty batch",
        "nca",
        (torch.zeros(0, K), torch.zeros(0, K), torch.zeros(0, K)),
        {},
        ValueError,
        r"policy_logps: empty batch",
    ),
    (
        "K = 1",
        "infonca",
        (torch.zeros(B, 1), torch.zeros(B, 1), torch.zeros(B, 1)),
        {},
        ValueError,
        r"policy_logps: expected K >= 2",
    ),
    ("pairwise K=4", "dpo", (P, R), {}, ValueError, r"policy_logps: pairwise losses expect K = 2"),
    (
        "pairwise order",
        "nca_pair",
        (P2, R2, torch.tensor([[0.0, 1.0]] * B)),
        {},
        ValueError,
        r"rewards: pairwise losses expect the chosen response first",
    ),
    (
        "robust eps 0.5",
        "robust_dpo",
        (P2, R2),
        {"label_smoothing": 0.5},
        ValueError,
        r"label_smoothing: expected a value in \[0, 0.5\), got 0.5",
    ),
    (
        "cdpo eps > 1",
        "label_smoothed_dpo",
        (P2, R2),
        {"label_smoothing": 1.5},
        ValueError,
        r"label_smoothing: expected a value in \[0, 1\], got 1.5",
    ),
    (
        "pl alpha 0",
        "plackett_luce",
        (P, R, W),
        {"alpha": 0.0},
        ValueError,
        r"alpha: expected a finite value > 0",
    ),
    (
        "ipo lengths shape",
        "ipo",
        (P2, R2),
        {"lengths": torch.ones(B)},
        ValueError,
        r"lengths: expected a tensor of shape \[3, 2\]",
    ),
    (
        "ipo lengths zero",
        "ipo",
        (P2, R2),
        {"lengths": torch.zeros(B, 2)},
        ValueError,
        r"lengths: expected positive token counts",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_clear_errors(case):
    _, name, args, kwargs, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        get_loss(name)(*args, **kwargs)


def test_bad_input_table_is_large_enough():
    assert len(BAD) >= 15


def test_unknown_name_and_bad_types_in_registry():
    with pytest.raises(TypeError, match="name: expected a loss name"):
        get_loss(3)
    with pytest.raises(ValueError, match="pairwise_to_k|rejected: expected the same shape"):
        L.pairwise_to_k(torch.zeros(3), torch.zeros(4))


def test_every_loss_has_a_docstring_citing_math_md():
    for name in CORE:
        assert "MATH.md" in (LOSS_SPECS[name].fn.__doc__ or ""), (
            f"{name}: docstring should cite its MATH.md equation"
        )
    for name, info in LOSS_SPECS.items():  # extensions included: every registered loss names its paper
        assert info.paper and info.fn.__doc__, name


def test_plackett_luce_does_not_depend_on_alpha():
    # The ranking by reward is the same for every alpha > 0, so the loss is too.
    pol, ref, rew = rand_inputs()
    torch.testing.assert_close(
        L.plackett_luce(pol, ref, rew, alpha=0.01).loss,
        L.plackett_luce(pol, ref, rew, alpha=100.0).loss,
        **TOL,
    )


def test_validate_false_skips_checks_but_same_values():
    pol, ref, rew = rand_inputs()
    for name in KWAY:
        a = get_loss(name)(pol, ref, rew, beta=0.2).loss
        b = get_loss(name)(pol, ref, rew, beta=0.2, validate=False).loss
        torch.testing.assert_close(a, b, **TOL)


def test_all_pairs_of_kway_losses_agree_on_k2_with_one_hot_labels():
    # InfoNCA and Plackett-Luce are both DPO at K = 2: a three-way consistency check over seeds.
    for seed in range(3):
        pol, ref, _ = rand_inputs(K=2, seed=seed)
        oh = one_hot_rewards(pol.shape[0])
        vals = [
            L.infonca(pol, ref, oh, beta=0.5, alpha=1e-3).loss,
            L.plackett_luce(pol, ref, oh, beta=0.5).loss,
            L.dpo(pol, ref, beta=0.5).loss,
        ]
        for a, b in itertools.combinations(vals, 2):
            torch.testing.assert_close(a, b, **TOL)
