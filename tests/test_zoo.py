"""ncakit.zoo: a float64 oracle per loss (values and gradients), the identities that tie each loss to the
core, closed-form optima, TRL 1.16 parity (sppo_hard, the f-divergences), numerics, masks, the uniform
bandit-style call over the whole registry, and bad inputs. Every assertion names its reason."""

from __future__ import annotations

import functools
import inspect
import math

import _inputs
import pytest
import torch
from _inputs import chosen_first

import ncakit.variants as V
import ncakit.zoo as Z
from ncakit import losses as L
from ncakit.registry import LOSS_SPECS, get_loss, loss_spec

torch.set_num_threads(1)
TOL = dict(rtol=0, atol=1e-10)
DIVERGENCES = V.F_DIVERGENCES


rand_inputs = functools.partial(_inputs.rand_inputs, scale=2.0)  # log-probs spread 2, not 3


# ---------------------------------------------------------------------------------------------
# The float64 oracle: every zoo loss computed a second, naive way (explicit loops, u = exp(s))
# ---------------------------------------------------------------------------------------------


def _ls(x):  # log sigmoid, the naive way (inputs here are moderate)
    return -torch.log1p(torch.exp(-x))


def f_prime(s, divergence, coef=0.5):
    """f'(u) at u = exp(s), written from the f-divergence formulas (not from the implementation)."""
    u = torch.exp(s)
    if divergence == "reverse_kl":
        return torch.log(u)
    if divergence == "forward_kl":
        return 1 - 1 / u
    if divergence == "js_divergence":
        return torch.log(2 * u / (1 + u))
    return (u ** (coef - 1) - 1) / (coef - 1)


def soft(values, alpha):
    z = sum(torch.exp(v / alpha) for v in values)
    return [torch.exp(v / alpha) / z for v in values]


def oracle(name, pol, ref, rew, beta, **kw):
    B, K = pol.shape
    out = []
    for b in range(B):
        s = [pol[b, k] - ref[b, k] for k in range(K)]
        if name == "sppo":
            if kw.get("alpha") is None:
                p = [rew[b, k] for k in range(K)]
            else:  # win rate vs the K samples, self included (the SPPO authors' estimator)
                a = kw["alpha"]
                p = [
                    sum(1 / (1 + torch.exp(-(rew[b, k] - rew[b, j]) / a)) for j in range(K)) / K
                    for k in range(K)
                ]
            loss = sum((s[k] - (p[k] - 0.5) / beta) ** 2 for k in range(K))
        elif name == "f_dpo":
            f = [f_prime(x, kw["divergence"], kw.get("coef", 0.5)) for x in s]
            loss = -_ls(beta * (f[0] - f[1]))
        elif name in ("f_nca", "f_infonca"):
            f = [beta * f_prime(x, kw["divergence"], kw.get("coef", 0.5)) for x in s]
            w = soft([rew[b, k] for k in range(K)], kw["alpha"])
            if name == "f_nca":
                loss = -sum(w[k] * _ls(f[k]) for k in range(K)) - sum(_ls(-f[k]) for k in range(K)) / K
            else:
                lz = torch.log(sum(torch.exp(x) for x in f))
                loss = -sum(w[k] * (f[k] - lz) for k in range(K))
        elif name == "dpop":
            lam = kw["dpop_lambda"]
            loss = -_ls(beta * (s[0] - s[1] - lam * max(torch.zeros((), dtype=pol.dtype), -s[0])))
        elif name == "pro":
            order = sorted(range(K), key=lambda k: -float(rew[b, k]))
            if kw["reference_free"]:
                c = {k: pol[b, k] / kw["lengths"][b, k] for k in range(K)}
            else:  # the reference-based option: beta * s, length-normalised when lengths are given
                c = {k: beta * s[k] / kw["lengths"][b, k] for k in range(K)}
            loss = 0
            for pos in range(K - 1):
                k, rest = order[pos], order[pos + 1 :]
                gaps = {j: (rew[b, k] - rew[b, j]) / kw["alpha"] for j in rest}
                t_k = max(gaps.values())
                denom = torch.exp(t_k * c[k]) + sum(torch.exp(gaps[j] * c[j]) for j in rest)
                loss = loss + torch.log(denom) - t_k * c[k]
            loss = loss + kw["sft_weight"] * (K - 1) ** 2 * (-pol[b, order[0]])
        elif name == "asft":
            ell = [pol[b, k] / kw["lengths"][b, k] for k in range(2)]
            odds = [torch.log(torch.exp(e) / (1 - torch.exp(e))) for e in ell]
            lam = kw["align_weight"]
            loss = -ell[0] + lam * (-_ls(beta * odds[0]) - _ls(-beta * odds[1]))
        elif name == "cpl":
            lam, bc = kw["contrastive_bias"], kw["bc_weight"]
            loss = -_ls(beta * pol[b, 0] - lam * beta * pol[b, 1]) + bc * (-pol[b, 0])
        elif name in ("nca_lsc", "infonca_lsc"):
            r = sorted(float(rew[b, k]) for k in range(K))
            pos = 0.5 * (K - 1)  # the median by linear interpolation
            lo = math.floor(pos)
            median = r[lo] + (pos - lo) * (r[min(lo + 1, K - 1)] - r[lo])
            u = [_ls(rew[b, k] - median) for k in range(K)]
            w = soft(u, kw["alpha"])
            r_hat = [beta * x for x in s]
            if name == "nca_lsc":
                loss = (
                    -sum(w[k] * _ls(r_hat[k]) for k in range(K)) - sum(_ls(-r_hat[k]) for k in range(K)) / K
                )
            else:
                lz = torch.log(sum(torch.exp(x) for x in r_hat))
                loss = -sum(w[k] * (r_hat[k] - lz) for k in range(K))
        else:
            raise AssertionError(name)
        out.append(loss)
    return torch.stack(out)


def lengths_like(pol, seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randint(5, 40, pol.shape, generator=g).to(pol.dtype)


# (oracle name, how to call ncakit, K, extra oracle kwargs)
def _cases():
    c = []
    for d in DIVERGENCES:
        c.append((f"f_dpo[{d}]", "f_dpo", 2, dict(divergence=d)))
        c.append((f"f_nca[{d}]", "f_nca", 4, dict(divergence=d, alpha=0.7)))
        c.append((f"f_infonca[{d}]", "f_infonca", 4, dict(divergence=d, alpha=0.7)))
    c.append(("f_dpo[alpha c=0.3]", "f_dpo", 2, dict(divergence="alpha_divergence", coef=0.3)))
    c.append(("f_dpo[alpha c=1.7]", "f_dpo", 2, dict(divergence="alpha_divergence", coef=1.7)))
    c += [
        ("sppo[win probs]", "sppo", 4, dict(alpha=None)),
        ("sppo[bt alpha]", "sppo", 4, dict(alpha=0.8)),
        ("dpop", "dpop", 2, dict(dpop_lambda=5.0)),
        ("pro[paper]", "pro", 4, dict(reference_free=True, alpha=0.9, sft_weight=0.05)),
        ("pro[ref-based]", "pro", 4, dict(reference_free=False, alpha=1.3, sft_weight=0.2)),
        ("asft", "asft", 2, dict(align_weight=0.3)),
        ("cpl", "cpl", 2, dict(contrastive_bias=0.5, bc_weight=0.1)),
        ("nca_lsc", "nca_lsc", 4, dict(alpha=0.6)),
        ("infonca_lsc", "infonca_lsc", 4, dict(alpha=0.6)),
    ]
    return c


CASES = _cases()


def call(name, pol, ref, rew, beta, kw):
    """ncakit's call for an oracle case."""
    if name == "f_dpo":
        return V.f_dpo(
            pol, ref, rew, beta=beta, divergence=kw["divergence"], f_alpha_divergence_coef=kw.get("coef", 0.5)
        )
    if name in ("f_nca", "f_infonca"):
        fn = V.with_f_divergence(name[2:], kw["divergence"])
        return fn(pol, ref, rew, beta=beta, alpha=kw["alpha"])
    if name == "sppo":
        return Z.sppo(pol, ref, rew, beta=beta, alpha=kw["alpha"])
    if name == "pro":
        return Z.pro(
            pol, ref, rew, beta=beta, alpha=kw["alpha"], sft_weight=kw["sft_weight"],
            reference_free=kw["reference_free"], lengths=kw.get("lengths"),
        )  # fmt: skip
    if name == "asft":
        return Z.asft(pol, ref, rew, beta=beta, align_weight=kw["align_weight"], lengths=kw["lengths"])
    return get_loss(name)(pol, ref, rew, beta=beta, **kw)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", range(2))
def test_oracle_values_and_gradients(case, seed):
    _, name, K, kw = case
    kw = dict(kw)
    pol, ref, rew = rand_inputs(B=4, K=K, seed=seed)
    beta = 0.7
    if K == 2:
        rew = chosen_first(rew)
    if name == "sppo" and kw["alpha"] is None:
        rew = torch.rand(rew.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    if name in ("pro", "asft"):
        kw["lengths"] = lengths_like(pol, seed)
    got = call(name, pol, ref, rew, beta, kw).loss
    pol2 = pol.detach().clone().requires_grad_(True)
    want = oracle(name, pol2, ref, rew, beta, **kw)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    g = torch.randn(4, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    (grad_got,) = torch.autograd.grad((got * g).sum(), pol)
    (grad_want,) = torch.autograd.grad((want * g).sum(), pol2)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-9, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# Identities tying each loss to the core (random tensors, float64, 1e-10)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_f_dpo_reverse_kl_is_dpo(seed):
    pol, ref, rew = rand_inputs(K=2, seed=seed)
    dpo = L.dpo(pol, ref, beta=0.3).loss
    # f'(u) = log u: f-DPO with reverse KL is DPO, by name, by default and via the α → 1 limit.
    torch.testing.assert_close(V.f_dpo(pol, ref, beta=0.3, divergence="reverse_kl").loss, dpo, **TOL)
    torch.testing.assert_close(get_loss("f_dpo")(pol, ref, beta=0.3).loss, dpo, **TOL)
    torch.testing.assert_close(
        V.f_dpo(pol, ref, beta=0.3, divergence="alpha_divergence", f_alpha_divergence_coef=1.0).loss,
        dpo,
        **TOL,
    )
    # Just off c = 1 the α-divergence score (e^{(c-1)s} - 1)/(c-1) = s + O((c-1) s^2) is still near DPO.
    near = V.f_dpo(pol, ref, beta=0.3, divergence="alpha_divergence", f_alpha_divergence_coef=1 + 1e-4).loss
    assert 0 < (near - dpo).abs().max() < 1e-3


@pytest.mark.parametrize("base", ["nca", "infonca", "plackett_luce"])
def test_f_wrapper_reverse_kl_is_the_base_loss_with_mask(base):
    pol, ref, rew = rand_inputs(K=5, seed=3)
    mask = torch.tensor(
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 1, 0, 1]]
    ).bool()
    kw = {} if base == "plackett_luce" else {"alpha": 0.8}
    # NaN padding must not leak through the transform into values or gradients.
    pol_pad = torch.where(mask, pol.detach(), torch.full_like(pol, float("nan"))).requires_grad_(True)
    got = V.with_f_divergence(base)(pol_pad, ref, rew, beta=0.4, mask=mask, **kw)
    want = get_loss(base)(pol, ref, rew, beta=0.4, mask=mask, **kw)
    torch.testing.assert_close(got.loss, want.loss, **TOL)
    torch.testing.assert_close(got.implicit_rewards, want.implicit_rewards, **TOL)
    torch.testing.assert_close(got.weights, want.weights, **TOL)
    (g_got,) = torch.autograd.grad(got.loss.sum(), pol_pad)
    (g_want,) = torch.autograd.grad(want.loss.sum(), pol)
    torch.testing.assert_close(g_got, torch.where(mask, g_want, torch.zeros_like(g_want)), **TOL)


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("beta", [0.1, 1.0])
def test_f_divergence_anchors_at_reference(divergence, beta):
    # Every TRL-normalised f' has f'(1) = 0, so at policy = reference the scores vanish and the core
    # anchors hold: f-DPO = ln 2, f-NCA = 2 ln 2, f-InfoNCA = ln K (MATH.md, test anchors).
    ref = torch.randn(3, 4, dtype=torch.float64) - 10
    rew = torch.randn(3, 4, dtype=torch.float64)
    ln2 = math.log(2)
    out = V.f_dpo(ref[:, :2].clone(), ref[:, :2], beta=beta, divergence=divergence)
    torch.testing.assert_close(out.loss, torch.full((3,), ln2, dtype=torch.float64), **TOL)
    nca = V.with_f_divergence("nca", divergence)(ref.clone(), ref, rew, beta=beta, alpha=0.5)
    torch.testing.assert_close(nca.loss, torch.full((3,), 2 * ln2, dtype=torch.float64), **TOL)
    info = V.with_f_divergence("infonca", divergence)(ref.clone(), ref, rew, beta=beta, alpha=0.5)
    torch.testing.assert_close(info.loss, torch.full((3,), math.log(4), dtype=torch.float64), **TOL)


@pytest.mark.parametrize(
    "divergence, slope", [("reverse_kl", 1.0), ("forward_kl", 1.0), ("js_divergence", 0.5)]
)
def test_f_dpo_gradient_anchor(divergence, slope):
    # dL/ds_w at s = 0 is -beta/2 * f''-slope of the score at u = 1: d/ds[1 - e^{-s}] = 1,
    # d/ds[log 2 + log sigma(s)] = sigma(-s) = 1/2, d/ds[s] = 1 (alpha: d/ds expm1((c-1)s)/(c-1) = 1).
    beta = 0.4
    ref = torch.randn(3, 2, dtype=torch.float64)
    pol = ref.clone().requires_grad_(True)
    V.f_dpo(pol, ref, beta=beta, divergence=divergence).loss.sum().backward()
    torch.testing.assert_close(
        pol.grad[:, 0], torch.full((3,), -beta / 2 * slope, dtype=torch.float64), **TOL
    )
    torch.testing.assert_close(pol.grad[:, 1], torch.full((3,), beta / 2 * slope, dtype=torch.float64), **TOL)


def test_alpha_divergence_coefficient_maps_to_the_paper():
    # The f-DPO authors score -u^{-a}/a; TRL scores (u^{c-1} - 1)/(c - 1). With a = 1 - c the two differ
    # by the constant 1/a, which cancels in the chosen-minus-rejected difference: same f-DPO loss.
    pol, ref, _ = rand_inputs(K=2, seed=5)
    s = (pol - ref).detach()
    for c in (0.2, 0.5, 0.8):
        a = 1 - c
        paper = -torch.exp(-a * s) / a
        ours = V.f_divergence_scores(s, "alpha_divergence", c)
        torch.testing.assert_close(ours[:, 0] - ours[:, 1], paper[:, 0] - paper[:, 1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", range(3))
def test_pro_without_temperature_or_sft_is_plackett_luce_and_dpo(seed):
    pol, ref, rew = rand_inputs(K=5, seed=seed)
    kw = dict(temperature=False, sft_weight=0.0, reference_free=False)
    # With all temperatures 1, no SFT term and the reference-based score beta*s, PRO is listwise PL.
    torch.testing.assert_close(
        Z.pro(pol, ref, rew, beta=0.3, **kw).loss, L.plackett_luce(pol, ref, rew, beta=0.3).loss, **TOL
    )
    # ... and K = 2 is DPO (MATH.md: PL(K=2) == DPO).
    p2, r2, w2 = pol[:, :2], ref[:, :2], chosen_first(rew)
    torch.testing.assert_close(Z.pro(p2, r2, w2, beta=0.3, **kw).loss, L.dpo(p2, r2, beta=0.3).loss, **TOL)


def test_pro_temperature_k2_scales_the_dpo_logit_by_the_reward_gap():
    # K = 2 with temperature: T = r_w - r_l on both scores, so L = -log sigma(gap * (c_w - c_l)).
    pol, ref, rew = rand_inputs(K=2, seed=2)
    rew = chosen_first(rew)
    gap = rew[:, 0] - rew[:, 1]
    got = Z.pro(pol, ref, rew, beta=0.5, reference_free=False, sft_weight=0.0).loss
    s = pol - ref
    want = -torch.nn.functional.logsigmoid(gap * 0.5 * (s[:, 0] - s[:, 1]))
    torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("seed", range(3))
def test_dpop_lambda_zero_is_dpo_and_penalty_only_below_reference(seed):
    pol, ref, _ = rand_inputs(K=2, seed=seed)
    dpo = L.dpo(pol, ref, beta=0.2).loss
    torch.testing.assert_close(Z.dpop(pol, ref, beta=0.2, dpop_lambda=0.0).loss, dpo, **TOL)
    # max(0, -s_w) = 0 when the chosen log-ratio is >= 0: DPOP == DPO there, for any lambda.
    pol_up = (ref + torch.tensor([[0.5, -1.0]], dtype=torch.float64)).requires_grad_(True)
    torch.testing.assert_close(
        Z.dpop(pol_up, ref, beta=0.2, dpop_lambda=50.0).loss, L.dpo(pol_up, ref, beta=0.2).loss, **TOL
    )
    # Below the reference the penalty raises the loss and pushes s_w up harder than DPO does.
    pol_dn = (ref + torch.tensor([[-0.5, -1.0]], dtype=torch.float64)).requires_grad_(True)
    dpop = Z.dpop(pol_dn, ref, beta=0.2, dpop_lambda=50.0).loss
    assert (dpop > L.dpo(pol_dn, ref, beta=0.2).loss).all()
    (g_dpop,) = torch.autograd.grad(dpop.sum(), pol_dn)
    (g_dpo,) = torch.autograd.grad(L.dpo(pol_dn, ref, beta=0.2).loss.sum(), pol_dn)
    assert (g_dpop[:, 0] < g_dpo[:, 0]).all()


@pytest.mark.parametrize("seed", range(3))
def test_sppo_hard_is_trls_formula(seed):
    pol, ref, _ = rand_inputs(K=2, seed=seed)
    beta = [0.1, 0.5, 2.0][seed]
    s = pol - ref
    # TRL 1.16 dpo_trainer.py, loss_type == "sppo_hard", written out.
    trl = (s[:, 0] - 0.5 / beta) ** 2 + (s[:, 1] + 0.5 / beta) ** 2
    torch.testing.assert_close(get_loss("sppo_hard")(pol, ref, beta=beta).loss, trl, **TOL)
    # Hard win probabilities (1, 0) passed explicitly give the same.
    hard = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(pol.shape[0], 2)
    torch.testing.assert_close(Z.sppo(pol, ref, hard, beta=beta).loss, trl, **TOL)


def test_sppo_optimum_is_closed_form():
    # Each response regresses onto (P - 1/2)/beta independently: loss 0 and zero gradient there.
    g = torch.Generator().manual_seed(1)
    p = torch.rand(3, 5, generator=g, dtype=torch.float64)
    ref = torch.randn(3, 5, generator=g, dtype=torch.float64)
    beta = 0.25
    pol = (ref + (p - 0.5) / beta).requires_grad_(True)
    out = Z.sppo(pol, ref, p, beta=beta)
    torch.testing.assert_close(out.loss, torch.zeros(3, dtype=torch.float64), **TOL)
    out.loss.sum().backward()
    torch.testing.assert_close(pol.grad, torch.zeros_like(pol), **TOL)
    # Winners (P > 1/2) end above the reference likelihood, losers below.
    assert ((pol - ref).detach().sign() == (p - 0.5).sign()).all()


def test_win_rates_match_the_sppo_estimator_and_average_to_one_half():
    rew = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    p = Z.win_rates(rew)
    sig = torch.sigmoid
    # Row 0, response 0: (sigma(0) + sigma(2) + sigma(3)) / 3, self-comparison 1/2 included.
    want00 = (
        0.5 + sig(torch.tensor(2.0, dtype=torch.float64)) + sig(torch.tensor(3.0, dtype=torch.float64))
    ) / 3
    torch.testing.assert_close(p[0, 0], want00, **TOL)
    # P(i > j) + P(j > i) = 1 for every pair, so the K win rates average to exactly 1/2; equal rewards: 1/2 each.
    torch.testing.assert_close(p.mean(dim=1), torch.full((2,), 0.5, dtype=torch.float64), **TOL)
    torch.testing.assert_close(p[1], torch.full((3,), 0.5, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("seed", range(3))
def test_cpl_with_unit_bias_is_reference_free_dpo(seed):
    pol, ref, _ = rand_inputs(K=2, seed=seed)
    # lambda = 1: -log sigma(beta (log pi_w - log pi_l)) = DPO with a uniform (zero log-prob) reference.
    want = L.dpo(pol, torch.zeros_like(ref), beta=0.3).loss
    torch.testing.assert_close(Z.cpl(pol, ref, beta=0.3, contrastive_bias=1.0).loss, want, **TOL)
    # Reference-free: the loss does not depend on ref_logps (only implicit_rewards do).
    torch.testing.assert_close(Z.cpl(pol, ref + 3.0, beta=0.3).loss, Z.cpl(pol, ref, beta=0.3).loss, **TOL)


@pytest.mark.parametrize("seed", range(3))
def test_cpl_token_mean_bc_is_the_summed_bc_divided_by_the_chosen_length(seed):
    pol, ref, _ = rand_inputs(K=2, seed=seed)
    g = torch.Generator().manual_seed(100 + seed)
    lengths = torch.randint(1, 40, pol.shape, generator=g).to(torch.float64)
    kw = dict(beta=0.3, contrastive_bias=0.5)
    base = Z.cpl(pol, ref, **kw).loss  # bc_weight = 0: the CPL term alone
    # Identity: the BC term is linear in bc_weight, so (loss - base)/w is the BC term itself; "token_mean" must
    # equal the summed BC (-log pi_w) divided by |y_w|, and "sum" the summed BC.
    w = 0.7
    summed = Z.cpl(pol, ref, bc_weight=w, lengths=lengths, **kw).loss
    mean = Z.cpl(pol, ref, bc_weight=w, bc_reduction="token_mean", lengths=lengths, **kw).loss
    torch.testing.assert_close((summed - base) / w, -pol[:, 0], **TOL)
    torch.testing.assert_close((mean - base) / w, -pol[:, 0] / lengths[:, 0], **TOL)
    # Feeding per-token-averaged log-probs to the CPL term would change it; token_mean only rescales BC.
    torch.testing.assert_close(mean - w * (-pol[:, 0] / lengths[:, 0]), base, **TOL)
    # Equal lengths n: the mean over the batch equals the authors' mean over all (B, n) steps, i.e. the summed
    # BC averaged over prompts divided by n.
    n = 7.0
    eq = Z.cpl(pol, ref, bc_weight=w, bc_reduction="token_mean", lengths=torch.full_like(pol, n), **kw).loss
    torch.testing.assert_close((eq - base).mean() / w, (-pol[:, 0]).sum() / (pol.shape[0] * n), **TOL)
    # Gradient by autograd against the closed form: d/d log pi_w of w * (-log pi_w / n_w) is -w / n_w, on top
    # of the CPL term's gradient; log pi_l sees only the CPL term.
    x = pol.detach().clone().requires_grad_(True)
    Z.cpl(x, ref, bc_weight=w, bc_reduction="token_mean", lengths=lengths, **kw).loss.sum().backward()
    y = pol.detach().clone().requires_grad_(True)
    Z.cpl(y, ref, **kw).loss.sum().backward()
    torch.testing.assert_close(x.grad[:, 0], y.grad[:, 0] - w / lengths[:, 0], **TOL)
    torch.testing.assert_close(x.grad[:, 1], y.grad[:, 1], **TOL)
    # The CPL term's gradient itself, by hand: h = beta (l_w - lam l_l), d(-log sigma(h)) = -sigma(-h) dh.
    h = 0.3 * (pol[:, 0] - 0.5 * pol[:, 1])
    torch.testing.assert_close(y.grad[:, 0], -torch.sigmoid(-h) * 0.3, **TOL)
    torch.testing.assert_close(y.grad[:, 1], torch.sigmoid(-h) * 0.3 * 0.5, **TOL)


def test_cpl_token_mean_needs_lengths_and_a_known_reduction():
    pol, ref, _ = rand_inputs(K=2, seed=0)
    with pytest.raises(ValueError, match=r"lengths: bc_reduction='token_mean' divides"):
        Z.cpl(pol, ref, bc_weight=0.1, bc_reduction="token_mean")
    with pytest.raises(ValueError, match=r"bc_reduction: expected 'sum' or 'token_mean', got 'mean'"):
        Z.cpl(pol, ref, bc_weight=0.1, bc_reduction="mean")
    with pytest.raises(ValueError, match=r"lengths: expected positive token counts"):
        Z.cpl(pol, ref, bc_weight=0.1, bc_reduction="token_mean", lengths=torch.zeros_like(pol))
    # Through the registry, lengths travel as a per-example tensor keyword like IPO's.
    lengths = torch.full_like(pol, 4.0)
    got = get_loss("cpl")(pol, ref, bc_weight=0.2, bc_reduction="token_mean", lengths=lengths).loss
    torch.testing.assert_close(
        got, Z.cpl(pol, ref, bc_weight=0.2, bc_reduction="token_mean", lengths=lengths).loss
    )


def test_asft_beta_one_is_absolute_likelihood_bce():
    # With beta = 1, sigma(log-odds) = P, so the align term is -log P_w - log(1 - P_l).
    ell = torch.tensor([[-0.3, -1.2], [-2.0, -0.05], [-5.0, -4.0]], dtype=torch.float64)
    got = Z.asft(ell, torch.zeros_like(ell), beta=1.0, align_weight=0.4).loss
    P = torch.exp(ell)
    want = -ell[:, 0] + 0.4 * (-torch.log(P[:, 0]) - torch.log(1 - P[:, 1]))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # Reference-free: ref_logps do not change the loss.
    torch.testing.assert_close(Z.asft(ell, torch.ones_like(ell), align_weight=0.4).loss, got, **TOL)


def test_reward_transform_is_monotone_bounded_and_centred():
    r = torch.linspace(-30, 30, 61, dtype=torch.float64).reshape(1, -1)
    u = V.transform_rewards(r, 2.0)
    # log sigma(r - r_ref): strictly increasing, <= 0, -log 2 at r = r_ref, and saturating above it.
    assert (u.diff(dim=1) > 0).all() and (u <= 0).all()
    torch.testing.assert_close(u[0, 32], torch.tensor(-math.log(2), dtype=torch.float64), **TOL)
    assert u[0, -1] > -1e-10 and u[0, -1] - u[0, -2] < 1e-10 < u[0, 1] - u[0, 0]
    # Per-prompt references ([B] tensor) and the quantile option: the median row reference is its middle reward.
    rew = torch.tensor([[1.0, 5.0, 3.0], [0.0, -2.0, 4.0]], dtype=torch.float64)
    u_q = V.transform_rewards(rew, reference_quantile=0.5)
    u_t = V.transform_rewards(rew, torch.tensor([3.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(u_q, u_t, **TOL)
    # The paper's "AND" property: summing transformed rewards = log of the product of "good" probabilities.
    a, b = V.transform_rewards(rew, 1.0), V.transform_rewards(2 * rew, 0.5)
    torch.testing.assert_close(
        a + b, torch.log(torch.sigmoid(rew - 1.0) * torch.sigmoid(2 * rew - 0.5)), **TOL
    )


@pytest.mark.parametrize("base", ["nca", "infonca"])
def test_lsc_losses_are_the_base_loss_on_transformed_rewards(base):
    pol, ref, rew = rand_inputs(K=4, seed=2)
    u = V.transform_rewards(rew, reference_quantile=0.5)
    want = get_loss(base)(pol, ref, u, beta=0.3, alpha=0.5).loss
    torch.testing.assert_close(get_loss(f"{base}_lsc")(pol, ref, rew, beta=0.3, alpha=0.5).loss, want, **TOL)
    # An explicit reference reward per prompt replaces the quantile.
    r_ref = torch.tensor([0.1, -0.2, 0.3, 0.0, 0.5], dtype=torch.float64)
    u2 = V.transform_rewards(rew, r_ref)
    torch.testing.assert_close(
        get_loss(f"{base}_lsc")(pol, ref, rew, beta=0.3, alpha=0.5, reference_reward=r_ref).loss,
        get_loss(base)(pol, ref, u2, beta=0.3, alpha=0.5).loss,
        **TOL,
    )


def test_nca_lsc_anchor_and_optimum():
    # Soft labels only change: at policy = reference NCA-LSC is still 2 ln 2, and its per-response optimum
    # is log(K w) with w = softmax(log sigma(r - r_ref) / alpha) (MATH.md, NCA optimum).
    rew = torch.tensor([[2.0, 0.5, -1.0, 3.0]], dtype=torch.float64)
    ref = torch.zeros(1, 4, dtype=torch.float64)
    out = get_loss("nca_lsc")(ref.clone(), ref, rew, beta=1.0, alpha=0.5)
    torch.testing.assert_close(out.loss, torch.full((1,), 2 * math.log(2), dtype=torch.float64), **TOL)
    r_hat = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([r_hat], lr=1, max_iter=200, tolerance_grad=1e-14, tolerance_change=1e-16)

    def closure():
        opt.zero_grad()
        loss = get_loss("nca_lsc")(r_hat, ref, rew, beta=1.0, alpha=0.5).loss.sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = torch.softmax(V.transform_rewards(rew, reference_quantile=0.5) / 0.5, dim=-1)
    torch.testing.assert_close(r_hat.detach(), torch.log(4 * w), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Outputs, masks, numerics, registry
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", Z.ZOO_LOSSES)
def test_outputs_shapes_detached_and_implicit_rewards(name):
    info = LOSS_SPECS[name]
    K = 2 if info.pairwise else 4
    pol, ref, rew = rand_inputs(B=3, K=K)
    if info.pairwise:
        rew = chosen_first(rew)
    kw = {} if info.pairwise else {"alpha": 0.7}
    out = get_loss(name)(pol, ref, rew, beta=0.25, **kw)
    assert out.loss.shape == (3,) and out.loss.requires_grad and torch.isfinite(out.loss).all()
    assert not out.implicit_rewards.requires_grad and not out.weights.requires_grad
    # ncakit's convention for every zoo loss: implicit rewards are beta * (log pi - log mu) of the inputs.
    torch.testing.assert_close(out.implicit_rewards, 0.25 * (pol - ref).detach(), **TOL)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(3, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("name", [n for n in Z.ZOO_LOSSES if not LOSS_SPECS[n].pairwise])
def test_kway_mask_equals_dropping_the_padded_columns(name):
    pol, ref, rew = rand_inputs(B=1, K=5, seed=3)
    mask = torch.tensor([[1, 0, 1, 1, 0]], dtype=torch.bool)
    keep = mask[0].nonzero().flatten()
    pol_pad = torch.where(mask, pol.detach(), torch.full_like(pol, float("nan"))).requires_grad_(True)
    rew_pad = torch.where(mask, rew, torch.full_like(rew, float("nan")))
    a = get_loss(name)(pol_pad, ref, rew_pad, beta=0.3, alpha=0.7, mask=mask)
    b = get_loss(name)(pol[:, keep], ref[:, keep], rew[:, keep], beta=0.3, alpha=0.7)
    torch.testing.assert_close(a.loss, b.loss, **TOL)
    (g,) = torch.autograd.grad(a.loss.sum(), pol_pad)
    assert torch.isfinite(g).all() and (g[~mask] == 0).all()


@pytest.mark.parametrize("name", Z.ZOO_LOSSES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("magnitude", [1e2, 1e4])
def test_extreme_values_stay_finite(name, dtype, magnitude):
    info = LOSS_SPECS[name]
    K = 2 if info.pairwise else 4
    signs = torch.tensor([[1.0, -1.0, 1.0, -1.0][:K], [-1.0, 1.0, -1.0, 1.0][:K]])
    if name == "asft":  # log-probabilities must be <= 0 for the log-odds: extreme but valid ones
        pol = (-(signs + 1.5) * magnitude).to(dtype).requires_grad_(True)
    else:
        pol = (signs * magnitude).to(dtype).requires_grad_(True)
    ref = torch.zeros(2, K, dtype=dtype)
    rew = torch.tensor([[3.0, 1.0, 2.0, 0.0][:K]] * 2, dtype=dtype)
    kw = {} if info.pairwise else {"alpha": 0.5}
    out = get_loss(name)(pol, ref, rew, beta=1.0, **kw)
    assert out.loss.dtype == torch.float32, "bf16/fp32 inputs are computed in float32"
    assert torch.isfinite(out.loss).all(), out.loss
    out.loss.sum().backward()
    assert torch.isfinite(pol.grad.float()).all()


def _accepts_alpha(fn):
    return "alpha" in inspect.signature(fn).parameters


def test_every_registered_loss_takes_the_same_call():
    # The bandit's contract: for EVERY registry entry (core + zoo), fn(logps, ref, rewards, beta=...,
    # [alpha=... for K-way reward losses], validate=...) works on scalar rewards sorted best-first, gives a
    # finite [B] loss and gradients, and validate=False gives the same values. Every K-way zoo loss takes the
    # reward temperature alpha (the core's plackett_luce does not: it only ranks).
    for name in Z.ZOO_LOSSES:
        assert LOSS_SPECS[name].pairwise or _accepts_alpha(LOSS_SPECS[name].fn), name
    g = torch.Generator().manual_seed(0)
    for name, info in LOSS_SPECS.items():
        K = 2 if info.pairwise else 4
        pol = (torch.randn(6, K, generator=g, dtype=torch.float64) - 6).requires_grad_(True)
        ref = torch.randn(6, K, generator=g, dtype=torch.float64) - 3
        rew = torch.sort(
            torch.randn(6, K, generator=g, dtype=torch.float64) * 3, dim=1, descending=True
        ).values
        kw = {"beta": 0.2}
        if not info.pairwise and _accepts_alpha(info.fn):
            kw["alpha"] = 0.5
        a = info.fn(pol, ref, rew, validate=True, **kw)
        b = info.fn(pol, ref, rew, validate=False, **kw)
        assert a.loss.shape == (6,) and torch.isfinite(a.loss).all(), name
        torch.testing.assert_close(a.loss, b.loss, **TOL)
        (grad,) = torch.autograd.grad(a.loss.sum(), pol)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_registry_entries_and_aliases():
    for name in Z.ZOO_LOSSES:
        info = loss_spec(name)
        assert info.paper and "arXiv" in info.paper and info.fn.__doc__, name
        assert get_loss(name) is info.fn
    assert loss_spec("sppo_hard").name == "sppo" and LOSS_SPECS["sppo"].trl_name == "sppo_hard"
    assert LOSS_SPECS["f_dpo"].pairwise and not LOSS_SPECS["pro"].pairwise and LOSS_SPECS["pro"].needs_rewards
    # Re-running the registration (e.g. importlib.reload) is a no-op, not a "name already registered" error.
    Z._register_all()


# ---------------------------------------------------------------------------------------------
# Parity with TRL 1.16, driving TRL's own DPOTrainer._compute_loss (see tests/test_trl_parity.py)
# ---------------------------------------------------------------------------------------------


def _trl_batch(seed, B=5, T=7):
    g = torch.Generator().manual_seed(seed)
    completion_mask = torch.zeros(2 * B, T + 1, dtype=torch.long)
    for i in range(2 * B):
        completion_mask[i, 1 + int(torch.randint(0, 3, (1,), generator=g)) :] = 1
    shift_mask = completion_mask[:, 1:]
    per_token = (-torch.rand(2 * B, T, generator=g) * 3) * shift_mask
    logps = per_token.sum(dim=1)
    ref = logps + torch.randn(2 * B, generator=g)
    lengths = shift_mask.sum(dim=1).float()
    return per_token, completion_mask, logps, ref, lengths, B


def _run_trl_or_skip():
    pytest.importorskip("trl.trainer.dpo_trainer", reason="trl not installed")
    from test_trl_parity import _run_trl

    return _run_trl


@pytest.mark.parametrize("seed", range(3))
def test_sppo_hard_matches_trl(seed):
    run = _run_trl_or_skip()
    per_token, cmask, logps, ref, _, B = _trl_batch(seed)
    beta = [0.1, 0.5, 2.0][seed]
    trl_loss, _ = run("sppo_hard", per_token, cmask, ref[:B], ref[B:], beta)
    ours = get_loss("sppo_hard")(
        L.pairwise_to_k(logps[:B], logps[B:]), L.pairwise_to_k(ref[:B], ref[B:]), beta=beta
    )
    torch.testing.assert_close(ours.loss.mean(), trl_loss, rtol=1e-6, atol=1e-6)


F_PARITY = [
    ("sigmoid", d, c) for d in DIVERGENCES for c in ((0.5, 0.3) if d == "alpha_divergence" else (0.5,))
] + [("hinge", "js_divergence", 0.5), ("ipo", "forward_kl", 0.5), ("ipo", "alpha_divergence", 0.3)]


@pytest.mark.parametrize(
    "trl_loss_type, divergence, coef", F_PARITY, ids=[f"{a}-{b}-{c}" for a, b, c in F_PARITY]
)
@pytest.mark.parametrize("seed", range(2))
def test_f_divergences_match_trl(trl_loss_type, divergence, coef, seed):
    run = _run_trl_or_skip()
    per_token, cmask, logps, ref, lengths, B = _trl_batch(seed)
    beta = [0.1, 1.0][seed]
    trl_loss, _ = run(
        trl_loss_type,
        per_token,
        cmask,
        ref[:B],
        ref[B:],
        beta,
        f_divergence_type=divergence,
        f_alpha_divergence_coef=coef,
    )
    policy, reference = L.pairwise_to_k(logps[:B], logps[B:]), L.pairwise_to_k(ref[:B], ref[B:])
    if trl_loss_type == "sigmoid":
        out = V.f_dpo(policy, reference, beta=beta, divergence=divergence, f_alpha_divergence_coef=coef)
    else:  # TRL length-normalises the f-scores for IPO; ncakit's ipo does it with `lengths`
        kw = {"lengths": L.pairwise_to_k(lengths[:B], lengths[B:])} if trl_loss_type == "ipo" else {}
        fn = V.with_f_divergence(trl_loss_type, divergence, f_alpha_divergence_coef=coef)
        out = fn(policy, reference, beta=beta, **kw)
    torch.testing.assert_close(out.loss.mean(), trl_loss, rtol=1e-6, atol=1e-6)


def test_forward_kl_cap_is_ncakits_own_and_matches_trl_above_it():
    # TRL 1.16's forward-KL score is 1 - exp(-s) with NO clamp (its alpha-divergence branch is the one that
    # clamps); ncakit caps the exponent -s at 80 so the loss stays finite (test_extreme_values_stay_finite).
    pytest.importorskip("trl.trainer.dpo_trainer", reason="trl not installed")
    from trl.trainer.dpo_trainer import DPOTrainer

    code = inspect.getsource(DPOTrainer._compute_loss)
    branch = code[
        code.index('f_divergence_type == "forward_kl"') : code.index('f_divergence_type == "js_divergence"')
    ]
    assert "1 - torch.exp(-chosen_logratios)" in branch and "clamp" not in branch
    assert "clamp" in code[code.index('f_divergence_type == "alpha_divergence"') :]
    # Above the cap (s >= -80) ncakit's score is TRL's formula; below it TRL's overflows float32 to -inf.
    s = torch.tensor([-80.0, -30.0, 0.0, 5.0, -88.0, -100.0, -1e4], dtype=torch.float32, requires_grad=True)
    ours = V.f_divergence_scores(s, "forward_kl")
    trl = 1 - torch.exp(-s.detach())
    torch.testing.assert_close(ours[:4], trl[:4], rtol=1e-6, atol=0)
    assert torch.isinf(trl[5:]).all() and (trl[5:] < 0).all()
    cap = -math.expm1(80.0)  # 1 - e^80: the saturated value, finite in float32
    torch.testing.assert_close(
        ours[4:].detach(), torch.full((3,), cap, dtype=torch.float32), rtol=1e-6, atol=0
    )
    (g,) = torch.autograd.grad(ours.sum(), s)
    # d/ds (1 - e^(-s)) = e^(-s) above the cap; zero where the exponent is clamped (s < -80).
    torch.testing.assert_close(g[1:4], torch.exp(-s.detach()[1:4]), rtol=1e-6, atol=0)
    assert (g[4:] == 0).all()


# ---------------------------------------------------------------------------------------------
# Bad inputs: each error names the argument and what was expected
# ---------------------------------------------------------------------------------------------

B_, K_ = 3, 4
P, R = torch.zeros(B_, K_) - 1, torch.zeros(B_, K_) - 1
P2, R2 = torch.zeros(B_, 2) - 1, torch.zeros(B_, 2) - 1
W = torch.randn(B_, K_)

BAD = [
    ("win prob > 1", lambda: Z.sppo(P, R, W.abs() + 1.5), ValueError, r"rewards: sppo expects win probabilities in \[0, 1\]"),
    ("win prob < 0", lambda: Z.sppo(P, R, -W.abs() - 0.1), ValueError, r"rewards: sppo expects win probabilities"),
    ("sppo no rewards K=4", lambda: Z.sppo(P, R), ValueError, r"rewards: sppo needs win probabilities .*K = 2"),
    ("sppo alpha no rewards", lambda: Z.sppo(P2, R2, alpha=1.0), ValueError, r"alpha: converts scalar rewards"),
    ("sppo alpha 0", lambda: Z.sppo(P, R, W, alpha=0.0), ValueError, r"alpha: expected a finite value > 0"),
    ("dpop lambda < 0", lambda: Z.dpop(P2, R2, dpop_lambda=-1.0), ValueError, r"dpop_lambda: expected a finite value >= 0, got -1"),
    ("dpop lambda nan", lambda: Z.dpop(P2, R2, dpop_lambda=float("nan")), ValueError, r"dpop_lambda: expected a finite"),
    ("dpop lambda str", lambda: Z.dpop(P2, R2, dpop_lambda="5"), TypeError, r"dpop_lambda: expected a float"),
    ("dpop K=4", lambda: Z.dpop(P, R), ValueError, r"policy_logps: pairwise losses expect K = 2"),
    ("unknown divergence", lambda: V.f_dpo(P2, R2, divergence="hellinger"), ValueError, r"divergence: unknown f-divergence 'hellinger'; expected one of"),
    ("divergence type", lambda: V.f_dpo(P2, R2, divergence=None), TypeError, r"divergence: expected one of"),
    ("alpha coef inf", lambda: V.f_dpo(P2, R2, divergence="alpha_divergence", f_alpha_divergence_coef=float("inf")), ValueError, r"f_alpha_divergence_coef: expected a finite value"),
    ("wrap unknown loss", lambda: V.with_f_divergence("nope"), ValueError, r"name: unknown loss 'nope'"),
    ("wrap reference-free", lambda: V.with_f_divergence("cpl"), ValueError, r"loss: 'cpl' scores the policy's own log-probs"),
    ("wrap unregistered fn", lambda: V.with_f_divergence(lambda *a, **k: None), ValueError, r"loss: .* is not a registered loss function"),
    ("wrap bad type", lambda: V.with_f_divergence(3), TypeError, r"loss: expected a registered loss name or function"),
    ("f_nca no rewards", lambda: V.with_f_divergence("nca")(P, R), ValueError, r"rewards: this loss needs explicit rewards"),
    ("pro alpha 0", lambda: Z.pro(P, R, W, alpha=0.0), ValueError, r"alpha: expected a finite value > 0"),
    ("pro sft < 0", lambda: Z.pro(P, R, W, sft_weight=-0.1), ValueError, r"sft_weight: expected a finite value >= 0, got -0.1"),
    ("pro temperature str", lambda: Z.pro(P, R, W, temperature="yes"), TypeError, r"temperature: expected True or False"),
    ("pro no rewards", lambda: Z.pro(P, R), ValueError, r"rewards: this loss needs explicit rewards"),
    ("pro lengths shape", lambda: Z.pro(P, R, W, lengths=torch.ones(B_)), ValueError, r"lengths: expected a tensor of shape \[3, 4\]"),
    ("pro lengths 0", lambda: Z.pro(P, R, W, lengths=torch.zeros(B_, K_)), ValueError, r"lengths: expected positive token counts"),
    ("asft positive logp", lambda: Z.asft(P2 + 2, R2), ValueError, r"policy_logps: asft needs log-probabilities <= 0"),
    ("asft weight < 0", lambda: Z.asft(P2, R2, align_weight=-1.0), ValueError, r"align_weight: expected a finite value >= 0, got -1"),
    ("cpl bias 0", lambda: Z.cpl(P2, R2, contrastive_bias=0.0), ValueError, r"contrastive_bias: expected a value in \(0, 1\]"),
    ("cpl bias > 1", lambda: Z.cpl(P2, R2, contrastive_bias=1.5), ValueError, r"contrastive_bias: expected a value in \(0, 1\]"),
    ("cpl bc < 0", lambda: Z.cpl(P2, R2, bc_weight=-0.5), ValueError, r"bc_weight: expected a finite value >= 0, got -0.5"),
    ("transform both", lambda: V.transform_rewards(W, 0.0, reference_quantile=0.5), ValueError, r"reference_reward / reference_quantile: pass exactly one"),
    ("transform neither", lambda: V.transform_rewards(W), ValueError, r"pass exactly one"),
    ("quantile > 1", lambda: V.transform_rewards(W, reference_quantile=1.5), ValueError, r"reference_quantile: expected a value in \[0, 1\], got 1.5"),
    ("reference shape", lambda: V.transform_rewards(W, torch.zeros(B_, 2)), ValueError, r"reference_reward: expected a float or a tensor of shape \[3\] or \[3, 1\]"),
    ("reference nan", lambda: V.transform_rewards(W, float("nan")), ValueError, r"reference_reward: expected a finite value"),
    ("transform nan rewards", lambda: V.transform_rewards(torch.full((2, 2), float("nan")), 0.0), ValueError, r"rewards: expected finite values"),
    ("lsc pairwise base", lambda: V.with_reward_transform("dpo"), ValueError, r"loss: 'dpo' does not use rewards"),
    ("win_rates 1-D", lambda: Z.win_rates(torch.zeros(4)), ValueError, r"rewards: expected shape \[B, K\]"),
    ("sppo nan logps", lambda: Z.sppo(torch.full((B_, K_), float("nan")), R, W.sigmoid()), ValueError, r"policy_logps: expected finite"),
]  # fmt: skip


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_inputs_raise_clear_errors(case):
    _, thunk, exc, pattern = case
    with pytest.raises(exc, match=pattern):
        thunk()


def test_zoo_docstring_example_runs():
    import doctest

    result = doctest.testmod(Z, verbose=False)
    assert result.attempted >= 1 and result.failed == 0
