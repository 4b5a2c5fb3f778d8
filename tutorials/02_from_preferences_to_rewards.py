# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 2. From preferences to rewards
#
# **Goal.** DPO learns from *preferences*: a pair of answers and which one won. NCA and InfoNCA
# (Chen et al., NeurIPS 2024) learn from *rewards*: K answers per prompt, each with a score. This
# notebook builds the bridge in seven short sections, each checked by a number: scores become **soft
# labels** w = softmax(r/α); **InfoNCA** is a K-way classification trained on those labels, and
# **DPO** is its K = 2, α → 0 special case; **NCA** is one binary classification per response;
# the **gradients** show why InfoNCA cannot tell when every likelihood falls while NCA pulls each
# response towards its own target; the **closed-form optima** are found again by plain gradient
# descent; and the **anchor values** at policy = reference pin down what a correct implementation
# prints. Every loss value and gradient comes from `ncakit.losses`: the same functions the bandit
# (notebook 1) and `scale/train.py` call.
#
# **Objectives.** After this notebook you can
# - turn K scores into soft labels w = softmax(r/α) and say what α → 0 and α → ∞ do;
# - show that InfoNCA is a K-way cross-entropy on the implicit rewards, and that DPO is its K = 2,
#   α → 0 case (label-smoothed DPO its finite-α case);
# - rewrite NCA as K weighted binary cross-entropies and read off its optimum r̂ᵢ\* = log(K·wᵢ);
# - compute each loss's gradient coefficients with autograd and explain why InfoNCA cannot resist a
#   common fall of all likelihoods while NCA can;
# - check an implementation against the anchor values at policy = reference.
#
# **Prerequisites.** [Notebook 1](01_decreasing_likelihood.ipynb) (the losses written down, and the
# effect these facts explain). Python with PyTorch tensors and autograd (`requires_grad`,
# `.backward()`); the softmax, the logistic sigmoid, cross-entropy, a derivative.
#
# **Paper.** Chen et al., [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (v3,
# [HTML](https://arxiv.org/html/2402.05369v3)): §2 (Background: Direct Preference Optimization),
# §3 (InfoNCA: Extending DPO from Preference to Explicit Rewards) and §4 (NCA: Fixing Decreased
# Response Likelihood Issue for InfoNCA). The names come from noise-contrastive estimation (NCE,
# Gutmann & Hyvärinen 2010) and the InfoNCE loss (van den Oord et al. 2018).
#
# **Time to run.** About 10 seconds on the project's 2-core CI machine (measured by
# `tutorials/build.py`); a slower laptop can take a few times longer.
#
# **Notation** ([MATH.md](../ncakit/MATH.md), the project's formula sheet, cited by section name
# below). A prompt x has K responses y₁…y_K with rewards r₁…r_K.
# The log-ratio of response i is sᵢ = log π_θ(yᵢ|x) − log μ(yᵢ|x), where μ is the frozen
# reference (SFT) policy, and the implicit reward is r̂ᵢ = β·sᵢ. In this notebook the policy is a
# free vector of implicit rewards: we set β = 1 and log μ = 0, so r̂ is the policy's log-probability.

# %%
# %matplotlib inline
import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import ncakit
from ncakit import get_loss
from ncakit.losses import dpo, infonca, label_smoothed_dpo, nca, nca_pair, soft_labels
from ncakit.registry import loss_color  # one colour per loss across the whole project
from ncakit.utils import notebook_style, rounded  # plain floats for printing (checked cells compare text)

gen = ncakit.seed_everything(0)  # seed once; `gen` feeds every random tensor below
torch.set_default_dtype(torch.float64)  # float64: the identities below then hold to ~1e-15
torch.set_num_threads(1)  # every tensor here is tiny: extra threads would only add overhead

notebook_style()  # readable fonts, a light grid, wide figures


# The running example: one prompt, K = 4 responses with GPT-4-style scores (1-10), best first.
r = torch.tensor([8.0, 6.0, 5.0, 2.0])
K = len(r)
alpha = 2.0  # the reward temperature α used throughout
RANK_COLORS = plt.cm.viridis(np.linspace(0.0, 0.8, K))  # response 1 (best) dark ... response 4 light
names = [f"y{i + 1} (r = {v:g})" for i, v in enumerate(r.tolist())]

# %% [markdown]
# ## 1. Soft labels: what α does
#
# *Paper: §3 (InfoNCA: Extending DPO from Preference to Explicit Rewards), the step from scores to
# targets.*
#
# A reward is a score, not a probability. Both losses first turn the K scores of a prompt into
# **soft labels** (MATH.md, notation)
#
# $$w_i = \mathrm{softmax}(r/\alpha)_i = \frac{e^{r_i/\alpha}}{\sum_j e^{r_j/\alpha}} .$$
#
# Why this form? The paper's target policy is π\*(y|x) ∝ μ(y|x)·exp(r(x, y)/α). If the K responses
# were sampled from μ, then wᵢ is exactly the (self-normalised) importance weight of yᵢ under π\*:
# the answer to "which of these K would π\* have picked?". The temperature α decides how much the
# score *gaps* matter: α → 0 puts all the weight on the best response (a hard preference), α → ∞
# spreads it evenly (1/K each: the scores are ignored).

# %%
alphas = torch.logspace(-1.5, 2, 200)  # α from 0.03 to 100
w_of_alpha = torch.stack([soft_labels(r[None], a.item())[0] for a in alphas])  # [200, K]

fig, (ax1, ax2) = plt.subplots(1, 2, gridspec_kw={"width_ratios": [1.4, 1]})
for i in range(K):
    ax1.plot(alphas, w_of_alpha[:, i], color=RANK_COLORS[i], lw=2.5, label=names[i])
ax1.axhline(1 / K, color="gray", ls="--", lw=1.5)
ax1.text(0.04, 1 / K + 0.02, "uniform 1/K", color="gray", fontsize=12)
ax1.axvline(alpha, color="k", ls=":", lw=1.5)
ax1.text(alpha * 1.1, 0.9, f"α = {alpha:g}\n(used below)", fontsize=12)
ax1.set(xscale="log", xlabel="reward temperature α", ylabel="soft label $w_i$", ylim=(-0.02, 1.02))
ax1.set_title("w = softmax(r / α) for r = (8, 6, 5, 2)")
ax1.legend(loc="center right")

shown = [0.5, alpha, 10.0]
width = 0.8 / len(shown)
for j, a in enumerate(shown):
    wj = soft_labels(r[None], a)[0]
    ax2.bar(
        np.arange(K) + (j - 1) * width,
        wj,
        width,
        color=RANK_COLORS,
        alpha=(0.3, 0.65, 1.0)[j],
        edgecolor="k",
        label=f"α = {a:g}",
    )
ax2.axhline(1 / K, color="gray", ls="--", lw=1.5)
ax2.set_xticks(range(K), [f"y{i + 1}" for i in range(K)])
ax2.set(ylabel="$w_i$", title="small α: winner takes all")
ax2.legend()
fig.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
# Checked: the two limits of the temperature, and the labels used in the rest of the notebook.
for a, why in [
    (0.01, "α → 0: one-hot on the best"),
    (alpha, "the running example"),
    (1e4, "α → ∞: uniform 1/K"),
]:
    print(f"α = {a:>7g}:  w = {rounded(soft_labels(r[None], a)[0])}   ({why})")
w = soft_labels(r[None], alpha)[0]  # the running example's labels, [K]

# %% [markdown]
# > **Try this.** (1) Two responses tie for the best score: what is w as α → 0?
# > (2) What happens to w if every score of the prompt is shifted by +10? Multiplied by 2?
#
# <details><summary>Answer</summary>
#
# (1) The tied responses share the weight: w → (½, ½, 0, 0). Check with
# `soft_labels(torch.tensor([[8.0, 8.0, 5.0, 2.0]]), 1e-3)`.
# (2) A shift changes nothing: the softmax only sees score *differences*, which is why both losses
# are unchanged when a per-prompt constant is added to the rewards (a MATH.md identity, and why a
# reward model's offset never matters). Multiplying the scores by 2 is the same as halving α: only
# r/α counts, so α is measured in the units of the reward.
#
# </details>

# %% [markdown]
# ## 2. InfoNCA is K-way classification
#
# *Paper: §3 (InfoNCA). The K-way form is that of InfoNCE (van den Oord et al. 2018).*
#
# Read the implicit rewards r̂ as the **logits of a classifier** over the K responses: p = softmax(r̂)
# is the policy's answer to "which of the K responses came from the target π\*?". InfoNCA trains
# that classifier on the soft labels with the ordinary cross-entropy (MATH.md, InfoNCA):
#
# $$\mathcal{L}_{\text{InfoNCA}} = -\sum_{i=1}^{K} w_i \log \mathrm{softmax}(\hat r)_i .$$
#
# So `ncakit.losses.infonca` must agree with PyTorch's own `F.cross_entropy` given logits r̂ and
# probability targets w. We check it on a random batch: 5 prompts, K = 4, random log-probs.

# %%
B = 5
policy_logps = -20 + 3 * torch.randn(B, K, generator=gen)  # log π_θ(y_i|x): sums over tokens, so negative
ref_logps = policy_logps + 0.5 * torch.randn(B, K, generator=gen)  # log μ(y_i|x)
rewards = torch.randint(1, 11, (B, K), generator=gen).double()  # scores 1..10
# A LossOutput: per-prompt loss [B], implicit_rewards r̂ [B, K] and the soft labels w [B, K].
out = infonca(policy_logps, ref_logps, rewards, beta=0.1, alpha=1.0)
as_classifier = F.cross_entropy(out.implicit_rewards, out.weights, reduction="none")
print("InfoNCA per prompt         :", rounded(out.loss, 4))
print("cross-entropy(r̂, target w) :", rounded(as_classifier, 4))

# %% tags=["nbval-check-output"]
# Checked (True/False only: the values above depend on the random draw, the identity does not).
print(
    "InfoNCA == cross-entropy(logits r̂, soft targets w), to 1e-12:",
    torch.allclose(out.loss, as_classifier, rtol=0, atol=1e-12),
)

# %% [markdown]
# ## 3. DPO is InfoNCA with K = 2 and α → 0
#
# *Paper: §2 (Background: Direct Preference Optimization) and §3; the abstract states "the DPO loss
# is a special case of our proposed InfoNCA objective under pairwise preference settings".
# Label-smoothed ("conservative") DPO is Mitchell (2023).*
#
# A preference pair is reward data with K = 2 and labels that only say who won: the chosen response
# first, rewards (1, 0). As α → 0 the soft labels become one-hot, w = (1, 0), and InfoNCA becomes
# −log softmax(r̂)₁ = −log σ(r̂_w − r̂_l): the DPO loss. With a finite α the labels stay soft,
# w = (1 − ε, ε) with ε = σ(−Δr/α), and InfoNCA becomes *label-smoothed* ("conservative") DPO with
# that ε. Both are checked below against `ncakit.losses.dpo` and `ncakit.losses.label_smoothed_dpo`.

# %%
pair_policy = -20 + 3 * torch.randn(B, 2, generator=gen)  # column 0 = chosen, column 1 = rejected
pair_ref = pair_policy + torch.randn(B, 2, generator=gen)
pair_rewards = torch.tensor([[1.0, 0.0]]).expand(B, 2)  # "the first one won"

dpo_loss = dpo(pair_policy, pair_ref, beta=0.1).loss
infonca_sharp = infonca(pair_policy, pair_ref, pair_rewards, beta=0.1, alpha=1e-3).loss
infonca_soft = infonca(pair_policy, pair_ref, pair_rewards, beta=0.1, alpha=1.0).loss
eps = torch.sigmoid(torch.tensor(-1.0 / 1.0)).item()  # ε = σ(−Δr/α) with Δr = 1, α = 1
cdpo_loss = label_smoothed_dpo(pair_policy, pair_ref, beta=0.1, label_smoothing=eps).loss
print("DPO                      :", rounded(dpo_loss, 4))
print("InfoNCA(K = 2, α = 0.001):", rounded(infonca_sharp, 4))

# %% tags=["nbval-check-output"]
# Checked: the two identities, on the random pairs above.
print(
    "DPO == InfoNCA(K = 2, α = 0.001), to 1e-12:", torch.allclose(dpo_loss, infonca_sharp, rtol=0, atol=1e-12)
)
print(
    f"InfoNCA(K = 2, α = 1) equals label-smoothed DPO with ε = σ(−1) = {eps:.4f}:",
    torch.allclose(infonca_soft, cdpo_loss, rtol=0, atol=1e-12),
)

# %% [markdown]
# Seen as a function of the margin h = r̂_w − r̂_l, the soft labels matter: with one-hot labels
# (DPO) the loss keeps decreasing as the margin grows, so the optimum is h → +∞; with soft labels
# InfoNCA has a finite best margin, h\* = Δr/α (the dots), that moves off to infinity as α → 0.

# %%
h = torch.linspace(-6, 8, 281)
margin_policy = torch.stack([h / 2, -h / 2], dim=1)  # r̂_w = h/2, r̂_l = −h/2 (β = 1, log μ = 0)
zeros = torch.zeros_like(margin_policy)
fig, ax = plt.subplots()
ax.plot(h, dpo(margin_policy, zeros, beta=1.0).loss, color=loss_color("dpo"), lw=4, label="DPO")
for a, ls in [(2.0, ":"), (0.5, "-."), (0.25, "--")]:
    value = infonca(margin_policy, zeros, pair_rewards[:1].expand(len(h), 2), beta=1.0, alpha=a).loss
    ax.plot(h, value, color=loss_color("infonca"), lw=2.5, ls=ls, label=f"InfoNCA, K = 2, α = {a:g}")
    best = int(torch.argmin(value))
    ax.plot(h[best], value[best], "o", color=loss_color("infonca"), ms=9)
ax.set(xlabel="margin h = $\\hat r_w - \\hat r_l$", ylabel="loss", ylim=(0, 3))
ax.set_title("InfoNCA → DPO as α → 0 (dots: InfoNCA's best margin h* = Δr/α)")
ax.legend()
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. NCA is one binary classification per response
#
# *Paper: §4 (NCA: Fixing Decreased Response Likelihood Issue for InfoNCA); the binary task is
# that of noise-contrastive estimation (Gutmann & Hyvärinen 2010).*
#
# NCA asks a different question, **separately for each response**: is yᵢ a sample of the target
# π\* (a "positive", with weight wᵢ) or a sample of the reference μ (a "noise" sample, weight 1/K)?
# The classifier for response i is σ(r̂ᵢ) (MATH.md, NCA):
#
# $$\mathcal{L}_{\text{NCA}} = -\sum_i w_i \log\sigma(\hat r_i) \;-\; \frac{1}{K}\sum_i \log\sigma(-\hat r_i) .$$
#
# Grouping the two terms of response i gives one weighted binary cross-entropy with a *soft target*
# tᵢ = K·wᵢ / (K·wᵢ + 1) and weight wᵢ + 1/K. A binary cross-entropy is smallest when the
# classifier's probability equals the target, σ(r̂ᵢ) = tᵢ, that is r̂ᵢ = logit(tᵢ) = **log(K·wᵢ)**:
# NCA's closed-form optimum falls out of the classification view. We check the rewriting against
# PyTorch's `F.binary_cross_entropy_with_logits`, and that NCA with K = 2 and one-hot labels is the
# pairwise loss `nca_pair` (TRL's `loss_type="nca_pair"`).

# %%
out = nca(policy_logps, ref_logps, rewards, beta=0.1, alpha=1.0)
target = K * out.weights / (K * out.weights + 1)
per_response = F.binary_cross_entropy_with_logits(
    out.implicit_rewards, target, weight=out.weights + 1 / K, reduction="none"
)
nca_sharp = nca(pair_policy, pair_ref, pair_rewards, beta=0.1, alpha=1e-3).loss
print("NCA per prompt                     :", rounded(out.loss, 4))
print("sum_i (w_i + 1/K) * BCE(r̂_i, t_i)  :", rounded(per_response.sum(dim=1), 4))

# %% tags=["nbval-check-output"]
# Checked: NCA = a sum of K weighted binary cross-entropies; NCA(K = 2, one-hot) = nca_pair.
print(
    "NCA == sum of weighted BCEs, to 1e-12:",
    torch.allclose(out.loss, per_response.sum(dim=1), rtol=0, atol=1e-12),
)
print(
    "NCA(K = 2, α = 0.001) == nca_pair:",
    torch.allclose(nca_sharp, nca_pair(pair_policy, pair_ref, beta=0.1).loss, rtol=0, atol=1e-12),
)
t = K * w / (K * w + 1)
print(f"running example (α = {alpha:g}):  t = {rounded(t)}   logit(t) = log(K·w) = {rounded(torch.logit(t))}")

# %% [markdown]
# > **Try this.** Which responses of the running example will NCA push *above* the reference
# > likelihood (r̂ᵢ > 0)? What happens to the answer as α → ∞, and as α → 0?
#
# <details><summary>Answer</summary>
#
# r̂ᵢ\* = log(K·wᵢ) > 0 exactly when wᵢ > 1/K: here only y1 (w = 0.609 > 0.25); y2 (w = 0.224) ends
# slightly below the reference. As α → ∞ every wᵢ → 1/K and every optimum → 0: the policy stays at
# the reference, the scores being ignored. As α → 0 the best response's optimum → log K (bounded!)
# and the others' → −∞.
#
# </details>

# %% [markdown]
# ## 5. The gradients: who gets pushed, and where to
#
# *Paper: §4; in the abstract's words, InfoNCA and DPO adjust the relative likelihood across the
# responses to one instruction, while NCA optimises the absolute likelihood of each response.*
#
# Training moves each log-likelihood log π_θ(yᵢ|x) against the gradient coefficient ∂L/∂r̂ᵢ
# (times β): a **negative** coefficient pushes response i **up**, a positive one pushes it down.
# We never type the gradient formulas: autograd on ncakit's losses gives them (MATH.md lists them:
# InfoNCA pᵢ − wᵢ; NCA −wᵢσ(−r̂ᵢ) + σ(r̂ᵢ)/K).
#
# At the start (policy = reference, r̂ = 0) both losses agree in sign: the best response up, the rest
# down; NCA's coefficients are exactly half of InfoNCA's, (1/K − wᵢ)/2. The difference appears once
# the likelihoods have moved. Shift **every** r̂ᵢ of the prompt by the same amount c, which is what
# happens when a model lowers the likelihood of all K answers together: InfoNCA's coefficients still
# sum to zero and do not change at all (softmax ignores a common shift), so nothing in the loss
# pushes the level back. NCA's sum is σ(c) − σ(−c): negative when the likelihoods have fallen
# (c < 0), so every response is pushed back up.


# %%
def gradient_coefficients(name, r_hat, rewards=r, alpha=alpha):
    """∂L/∂r̂ for each row of ``r_hat`` [N, K], by autograd through ncakit's loss ``name``
    (β = 1 and log μ = 0, so the policy log-probs ARE the implicit rewards)."""
    r_hat = r_hat.detach().clone().requires_grad_(True)
    out = get_loss(name)(r_hat, torch.zeros_like(r_hat), rewards.expand_as(r_hat), beta=1.0, alpha=alpha)
    out.loss.sum().backward()  # rows are independent prompts, so each row gets its own gradient
    return r_hat.grad


at_reference = {name: gradient_coefficients(name, torch.zeros(1, K))[0] for name in ("infonca", "nca")}
shifts = torch.linspace(-5, 3, 161)
along_shift = {
    name: gradient_coefficients(name, shifts[:, None].expand(-1, K)) for name in ("infonca", "nca")
}

fig, (ax1, ax2) = plt.subplots(1, 2)
for j, name in enumerate(("infonca", "nca")):
    ax1.bar(
        np.arange(K) + (j - 0.5) * 0.38,
        at_reference[name],
        0.38,
        color=loss_color(name),
        label={"infonca": "InfoNCA", "nca": "NCA"}[name],
    )
ax1.axhline(0, color="k", lw=1)
ax1.set_xticks(range(K), [f"y{i + 1}" for i in range(K)])
ax1.set(ylabel="∂L/∂$\\hat r_i$  (< 0: pushed up)", title="At policy = reference")
ax1.legend()
for name, label in [("infonca", "InfoNCA"), ("nca", "NCA")]:
    ax2.plot(shifts, along_shift[name].sum(dim=1), color=loss_color(name), lw=3, label=label)
ax2.axhline(0, color="k", lw=1, zorder=1)
ax2.axvline(0, color="gray", ls=":", lw=1.5)
ax2.set(
    xlabel="common shift c of every $\\hat r_i$",
    ylabel="$\\Sigma_i$ ∂L/∂$\\hat r_i$",
    title="Net push on the whole prompt",
)
ax2.annotate(
    "all likelihoods fell:\nNCA pushes them back up",
    xy=(-3, -0.9),
    xytext=(-4.8, -0.35),
    fontsize=12,
    arrowprops={"arrowstyle": "->"},
)
ax2.legend(loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# The same shift, response by response. InfoNCA's coefficients are flat lines: whatever the common
# level, the best response is pushed up and the others down by the same amounts. Each NCA
# coefficient depends on its own r̂ᵢ only and crosses zero at its own target log(K·wᵢ) (dotted):
# below its target a response is pushed up, above it pushed down, whatever the other responses do.

# %%
fig, axes = plt.subplots(1, 2, sharey=True)
for ax, name, label in [
    (axes[0], "infonca", "InfoNCA: blind to the shift"),
    (axes[1], "nca", "NCA: own targets"),
]:
    for i in range(K):
        ax.plot(shifts, along_shift[name][:, i], color=RANK_COLORS[i], lw=2.5, label=names[i])
    ax.axhline(0, color="k", lw=1)
    ax.set(xlabel="common shift c of every $\\hat r_i$", title=label)
for i in range(K):
    axes[1].axvline(torch.log(K * w[i]), color=RANK_COLORS[i], ls=":", lw=2)
axes[1].text(-4.8, 0.16, "dotted: each target log(K·$w_i$)", fontsize=12)
axes[0].set_ylabel("∂L/∂$\\hat r_i$  (< 0: pushed up)")
axes[0].legend(fontsize=11, loc="lower left")
fig.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
# Checked: the coefficients at the reference (MATH.md anchor: NCA's are (1/K − w)/2) and after a shift.
print(f"{'w':<30} = {rounded(w)}")
for name, label in [("infonca", "InfoNCA ∂L/∂r̂ at r̂ = 0 (p − w)"), ("nca", "NCA     ∂L/∂r̂ at r̂ = 0")]:
    g0 = at_reference[name]
    print(f"{label:<32} = {rounded(g0)}   sum = {rounded(g0.sum())}")
print("NCA's are (1/K − w)/2:", torch.allclose(at_reference["nca"], (1 / K - w) / 2, rtol=0, atol=1e-12))
c = -3.0
at_c = {name: gradient_coefficients(name, torch.full((1, K), c))[0] for name in ("infonca", "nca")}
print(
    f"after a common shift c = {c:g}: InfoNCA sum = {rounded(at_c['infonca'].sum())} (unchanged), "
    f"NCA sum = {rounded(at_c['nca'].sum())} (= σ(c) − σ(−c): pushes the prompt back up)"
)

# %% [markdown]
# ## 6. The closed-form optima, found by gradient descent
#
# *Paper: §3 (InfoNCA's optimum) and §4 (NCA's).*
#
# MATH.md states the minimisers over free implicit rewards: **NCA → r̂ᵢ\* = log(K·wᵢ)**, one
# absolute value per response; **InfoNCA → r̂\* = r/α + C** for *any* constant C. We let plain
# gradient descent find them from two starting points: the reference (r̂ = 0) and a policy that
# has already lowered every likelihood by 3 nats (r̂ = −3).


# %%
def descend(name, start, steps=400, lr=2.0, alpha=alpha):
    """Plain gradient descent on ncakit's loss ``name`` over a free r̂ [K] (β = 1, log μ = 0).
    Returns the trajectory [steps + 1, K]."""
    r_hat = torch.full((1, K), float(start), requires_grad=True)
    opt = torch.optim.SGD([r_hat], lr=lr)
    path = [r_hat.detach()[0].clone()]
    for _ in range(steps):
        opt.zero_grad()
        get_loss(name)(r_hat, torch.zeros_like(r_hat), r[None], beta=1.0, alpha=alpha).loss.sum().backward()
        opt.step()
        path.append(r_hat.detach()[0].clone())
    return torch.stack(path)


starts = (0.0, -3.0)
paths = {(name, s0): descend(name, s0) for name in ("nca", "infonca") for s0 in starts}
nca_target = torch.log(K * w)  # MATH.md, NCA optimum

fig, axes = plt.subplots(1, 2, sharey=True)
for ax, name in zip(axes, ("nca", "infonca")):
    for s0, ls in zip(starts, ("-", "--")):
        for i in range(K):
            ax.plot(paths[name, s0][:, i], color=RANK_COLORS[i], ls=ls, lw=2.5)
    ax.axhline(0, color="k", lw=1)
    ax.set(
        xscale="symlog", xlim=(0, len(paths[name, 0.0]) - 1), ylim=(-5.3, 1.7), xlabel="gradient-descent step"
    )
for i in range(K):
    axes[0].axhline(nca_target[i], color=RANK_COLORS[i], ls=":", lw=2)
axes[0].set(ylabel="$\\hat r_i$", title="NCA → log(K·w) (dotted), from either start")
axes[1].set(title="InfoNCA → r/α + C, C set by the start")
handles = [plt.Line2D([], [], color=RANK_COLORS[i], lw=2.5, label=names[i]) for i in range(K)]
handles += [
    plt.Line2D([], [], color="gray", lw=2.5, ls=ls, label=f"start r̂ = {s0:g}")
    for s0, ls in zip(starts, ("-", "--"))
]
axes[0].legend(handles=handles, fontsize=11, loc="lower right", ncol=2)
fig.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
# Checked: the optima, and the constant C that InfoNCA inherits from its starting point.
print(f"closed form log(K·w)        : {rounded(nca_target)}")
for s0 in starts:
    print(f"NCA     from r̂ = {s0:>4g}      : {rounded(paths['nca', s0][-1])}")
for s0 in starts:
    offset = paths["infonca", s0][-1] - r / alpha
    print(
        f"InfoNCA from r̂ = {s0:>4g}, r̂ − r/α: {rounded(offset)}   (C = start − mean(r/α) = {s0 - (r / alpha).mean().item():g})"
    )
entropy = -(w * w.log()).sum()
final = [
    infonca(paths["infonca", s0][-1:], torch.zeros(1, K), r[None], beta=1.0, alpha=alpha).loss.item()
    for s0 in starts
]
print(f"InfoNCA at its optimum, both starts: {rounded(final, 4)} = entropy of w = {rounded(entropy, 4)}")

# %% [markdown]
# The InfoNCA runs land on the same *shape* r/α but at different *levels*: every gradient sums to
# zero, so descent never changes the mean of r̂, and the loss value at the end is the same (the
# entropy of w). On free parameters that level is harmless. In a real model the parameters are
# shared between prompts and responses, so something else sets the level, and nothing in InfoNCA
# (or DPO) resists when it drifts down: this is the **decreasing-likelihood effect** of notebook 1.
# NCA ends at the same absolute point from both starts.
#
# > **Try this.** Make the labels one-hot: run `descend("nca", 0.0, alpha=1e-3)[-1]` and
# > `descend("infonca", 0.0, alpha=1e-3)[-1]` (try `steps=4000` too). Where do the best and the
# > other responses go under each loss?
#
# <details><summary>Answer</summary>
#
# The labels become one-hot. NCA sends the best response to log K = 1.386 (bounded above the
# reference) and the others slowly towards −∞ (their target log(K·0) does not exist). InfoNCA wants
# r̂_best − r̂_others → +∞ with a fixed mean: the best goes up without bound and the others down,
# the same "margin to infinity" as DPO in section 3.
#
# </details>

# %% [markdown]
# ## 7. Anchor values at policy = reference
#
# *Paper: no counterpart; these are the project's test anchors (MATH.md). Plackett–Luce is the
# listwise loss of the DPO paper (Rafailov et al. 2023).*
#
# A test a correct implementation must pass (MATH.md, test anchors): with every log-ratio 0 the
# losses take fixed values, **whatever the rewards**: InfoNCA = −Σ wᵢ log(1/K) = ln K;
# NCA = −Σ wᵢ log ½ − (1/K)·Σ log ½ = 2 ln 2 for every K; DPO = ln 2; pairwise NCA = 2 ln 2;
# Plackett–Luce = ln K!. The loop goes through the registry, `get_loss(name)`, as a config file
# or the trainer would.

# %% tags=["nbval-check-output"]
# Checked: the MATH.md anchors, random rewards (sorted best-first so the pairwise losses accept them).
anchors = [
    ("dpo", 2, np.log(2), "ln 2"),
    ("nca_pair", 2, 2 * np.log(2), "2 ln 2"),
    ("infonca", 2, np.log(2), "ln K"),
    ("infonca", 4, np.log(4), "ln K"),
    ("infonca", 8, np.log(8), "ln K"),
    ("nca", 4, 2 * np.log(2), "2 ln 2"),
    ("nca", 8, 2 * np.log(2), "2 ln 2"),
    ("plackett_luce", 4, np.log(24), "ln K! = ln 24"),
]
print(f"{'loss':<14} K   L at π_θ = μ   closed form")
for name, k, value, formula in anchors:
    scores = torch.rand(3, k, generator=gen).sort(dim=1, descending=True).values * 10
    logps = -20 + torch.randn(3, k, generator=gen)  # policy = reference: the same log-probs twice
    got = get_loss(name)(logps, logps, scores, beta=0.1).loss
    print(f"{name:<14} {k}   {rounded(got.mean(), 4):<12}   {formula} = {value:.4f}")
chosen_first = torch.zeros(1, 2, requires_grad=True)
dpo(chosen_first, torch.zeros(1, 2), beta=0.1).loss.sum().backward()
print(f"DPO gradient at π_θ = μ, β = 0.1: ∂L/∂s_w = {rounded(chosen_first.grad[0, 0], 4)} (= −β/2)")

# %% [markdown]
# ## Recap
#
# - **Soft labels** w = softmax(r/α): on the running scores, α = 0.01 gives w = [1.0, 0.0, 0.0, 0.0],
#   α = 2 gives [0.609, 0.224, 0.136, 0.03] and α = 10⁴ gives [0.25, 0.25, 0.25, 0.25]; α is in
#   reward units.
# - **InfoNCA** equals PyTorch's cross-entropy on logits r̂ with targets w (to 1e-12); **DPO** equals
#   InfoNCA with K = 2, α = 0.001, and InfoNCA with K = 2, α = 1 equals label-smoothed DPO with
#   ε = σ(−1) = 0.2689.
# - **NCA** equals a sum of K weighted binary cross-entropies, and NCA(K = 2, one-hot) equals
#   `nca_pair`; its optimum log(K·w) = [0.891, −0.109, −0.609, −2.109] is reached by gradient
#   descent from r̂ = 0 and from r̂ = −3 alike, while InfoNCA keeps whatever level it started from
#   (C = −2.625 and −5.625).
# - **Gradients:** at the reference InfoNCA's coefficients are [−0.359, 0.026, 0.114, 0.22] (sum 0)
#   and NCA's exactly half; after every r̂ falls by 3, InfoNCA's still sum to 0, NCA's sum to −0.905
#   and push the prompt back up.
# - **Anchors** at π_θ = μ: DPO = ln 2 = 0.6931, pairwise NCA = NCA = 2 ln 2 = 1.3863, InfoNCA = ln K,
#   Plackett–Luce = ln K!, and ∂L_DPO/∂s_w = −0.05 = −β/2 at β = 0.1.
#
# **Next:** [03_the_knobs.ipynb](03_the_knobs.ipynb): the knobs α, β and K turned on notebook 1's
# bandit, the target policy they define, and when NCA and InfoNCA agree.
#
# ## References
#
# - Chen, H., He, G., Yuan, L., Cui, G., Su, H., Zhu, J. (2024). *Noise Contrastive Alignment of Language Models with Explicit Rewards.* NeurIPS 2024. [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (sections cited from [v3](https://arxiv.org/html/2402.05369v3)). Code: [github.com/thu-ml/Noise-Contrastive-Alignment](https://github.com/thu-ml/Noise-Contrastive-Alignment).
# - Rafailov, R., Sharma, A., Mitchell, E., Ermon, S., Manning, C. D., Finn, C. (2023). *Direct Preference Optimization: Your Language Model is Secretly a Reward Model.* NeurIPS 2023. [arXiv:2305.18290](https://arxiv.org/abs/2305.18290).
# - Razin, N., Malladi, S., Bhaskar, A., Chen, D., Arora, S., Hanin, B. (2024). *Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization.* [arXiv:2410.08847](https://arxiv.org/abs/2410.08847).
# - Ren, Y., Sutherland, D. J. (2024). *Learning Dynamics of LLM Finetuning.* [arXiv:2407.10490](https://arxiv.org/abs/2407.10490).
# - Gutmann, M., Hyvärinen, A. (2010). *Noise-contrastive estimation: A new estimation principle for unnormalized statistical models.* AISTATS 2010, PMLR 9:297–304. [proceedings.mlr.press/v9/gutmann10a](https://proceedings.mlr.press/v9/gutmann10a.html).
# - van den Oord, A., Li, Y., Vinyals, O. (2018). *Representation Learning with Contrastive Predictive Coding* (the InfoNCE loss). [arXiv:1807.03748](https://arxiv.org/abs/1807.03748).
# - Mitchell, E. (2023). *A note on DPO with noisy preferences & relationship to IPO* (conservative, label-smoothed DPO). [ericmitchell.ai/cdpo.pdf](https://ericmitchell.ai/cdpo.pdf).
# - von Werra, L., Belkada, Y., Tunstall, L., et al. *TRL: Transformer Reinforcement Learning* (software; its DPOTrainer has `loss_type="nca_pair"`). [github.com/huggingface/trl](https://github.com/huggingface/trl).
# - OpenAI (2023). *GPT-4 Technical Report* (the scorer of UltraFeedback). [arXiv:2303.08774](https://arxiv.org/abs/2303.08774).
