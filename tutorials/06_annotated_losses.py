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
# # 6. The losses, line by line
#
# **Goal.** Read the three losses of the paper, DPO, InfoNCA and NCA, as the code that the toy
# trainer, the tutorials and `scale/train.py` actually run: each equation beside the real source of
# `ncakit.losses`, line by line (labml.ai style), then the gradient with respect to the policy
# log-probs derived by hand and checked against autograd on the library loss. Nothing here is a
# copy: every code column is read from the installed library with `inspect.getsource`, and
# `ncakit.annotate.annotated` raises an error if a note's anchor no longer matches the code, so this
# notebook cannot drift from the library it explains. About 5 seconds on a laptop CPU.
#
# **You will learn to**
# - map every line of `dpo`, `infonca` and `nca` to a term of its equation (MATH.md's notation and
#   signs), and see what the lines that are *not* in the equation do (input checks, masks, dtypes);
# - derive ∂L/∂log π_θ for each loss: DPO's push of ∓β·σ(−h) on the pair, InfoNCA's
#   β·(softmax(r̂) − w) that sums to zero, NCA's per-response coefficient that vanishes at
#   r̂ᵢ = log(K·wᵢ);
# - check a derivation the way the test suite does: against autograd, on random tensors, in float64.
#
# **Paper.** Chen, He, Yuan, Cui, Su, Zhu, *Noise Contrastive Alignment of Language Models with
# Explicit Rewards*, NeurIPS 2024, [arXiv:2402.05369](https://arxiv.org/abs/2402.05369).
#
# **Prerequisites.** Notebooks 1 (the decreasing-likelihood effect) and 2 (from preferences to
# rewards: soft labels, InfoNCA as K-way classification, NCA as K binary ones).
#
# **Notation** ([MATH.md](../ncakit/MATH.md), cited by section name). A prompt x has K responses
# y₁…y_K with rewards r₁…r_K. The log-ratio of response i is
# sᵢ = log π_θ(yᵢ|x) − log μ(yᵢ|x) (μ: the frozen reference), the implicit reward is r̂ᵢ = β·sᵢ,
# and the soft labels are w = softmax(r/α). σ is the logistic sigmoid. Every loss is per prompt and
# averaged over the batch by the caller.

# %%
import inspect

import torch

import ncakit
from ncakit.annotate import annotated, dpo_logp_grad, infonca_logp_grad, nca_logp_grad
from ncakit.losses import dpo, infonca, log_ratios, nca, pairwise_setup, soft_labels
from ncakit.utils import rounded  # plain floats for printing (checked cells compare text)

gen = ncakit.seed_everything(0)  # seed once; `gen` feeds every random tensor below
torch.set_default_dtype(torch.float64)  # float64: autograd and the hand derivation agree to ~1e-16
torch.set_num_threads(1)  # every tensor here is tiny: extra threads would only add overhead

B, K = 6, 4  # 6 prompts, 4 responses each (the paper's K)
beta, alpha = 0.5, 1.0  # a large β keeps σ(r̂) away from 0 and 1, so every term of the gradient matters
TOL = 1e-12  # float64: the two gradients are the same numbers computed in two orders


def autograd_of(loss_fn, policy_logps, *args, **kwargs):
    """d(sum over prompts of the library loss)/d log π_θ: row b is dL_b / d log π_θ(y_b·)."""
    policy = policy_logps.clone().requires_grad_(True)
    loss_fn(policy, *args, **kwargs).loss.sum().backward()
    return policy.grad


def max_gap(a, b):
    return (a - b).abs().max().item()


# %% [markdown]
# ## How to read the tables
#
# `annotated(fn, notes)` reads `fn`'s source with `inspect.getsource` and cuts it into blocks, one
# per `(anchor, note)` pair: the anchor is a piece of the line where the block starts, the note is
# what that block computes. The note sits on the left, the code on the right, with the file's line
# numbers in the header. The blocks put back together are exactly the function's source (the
# tests check it), so every line of the library is on screen, the dull ones included.
#
# Two helpers appear in every loss below: the log-ratios s and the soft labels w.

# %%
annotated(
    log_ratios,
    [
        (
            "def log_ratios(",
            "**The log-ratios** $s_i = \\log\\pi_\\theta(y_i|x) - \\log\\mu(y_i|x)$, shape `[B, K]`.",
        ),
        (
            "dtype = compute_dtype",
            "Half-precision inputs are promoted to float32 (float64 stays float64) *before* the "
            "subtraction: two sums of hundreds of token log-probs differ by a few nats, and bf16 "
            "would round that difference away.",
        ),
        (
            "if mask is not None",
            "Padding responses (`mask` False) get $s = 0$ with `torch.where`, not a multiply, so a "
            "NaN in a padded slot cannot leak into the values or the gradients.",
        ),
    ],
)

# %%
annotated(
    soft_labels,
    [
        ("def soft_labels(", "**The soft labels** $w = \\mathrm{softmax}(r/\\alpha)$ (MATH.md, notation)."),
        ("alpha = check_positive", "$\\alpha > 0$ is checked: it divides the rewards."),
        (
            "r = rewards.detach()",
            "Rewards are **labels**: detached, so no gradient ever flows into them. Everything "
            "below differentiates with respect to $\\log\\pi_\\theta$ only, with $w$ a constant.",
        ),
        ("if first_bonus", "The authors' optional tie-break: +0.01 on the first (best-sorted) response."),
        ("logits = r / alpha", "$r_i/\\alpha$, the logits of the labels."),
        ("if mask is not None", "Padding responses get logit $-\\infty$, hence weight exactly 0."),
        ("return torch.softmax", "$w_i = e^{r_i/\\alpha} / \\sum_j e^{r_j/\\alpha}$: each row sums to 1."),
    ],
)

# %% [markdown]
# ## 1. DPO
#
# Preference data is K = 2 with the chosen response y_w in column 0 and the rejected y_l in
# column 1. With the margin h = r̂_w − r̂_l (MATH.md, the DPO family; Rafailov et al. 2023)
#
# $$\mathcal{L}_{\text{DPO}} = -\log\sigma(h), \qquad h = \beta\,(s_w - s_l).$$
#
# Every pairwise loss starts with the same few lines, `pairwise_setup`:

# %%
annotated(
    pairwise_setup,
    [
        ("def pairwise_setup(", "Shared by DPO, pairwise NCA, IPO, ...: checks, then $\\beta$ and $s$."),
        (
            "if validate:",
            "Shape `[B, 2]`, finite values, and (if rewards are given) the chosen column really "
            "scores higher. One flag turns it off inside a hot training loop.",
        ),
        ("beta = check_positive", "$\\beta > 0$: the KL strength, the scale of the implicit rewards."),
        ("s = log_ratios", "$s = (s_w, s_l)$, the two log-ratios, `[B, 2]`."),
    ],
)

# %%
dpo_view = annotated(
    dpo,
    [
        (
            "def dpo(",
            "The signature every loss shares: `[B, K]` log-probs of the policy and of the reference.",
        ),
        ("beta, s = pairwise_setup", "Checks, $\\beta$, and $s = (s_w, s_l)$ (above)."),
        ("h = beta", "The margin $h = \\hat r_w - \\hat r_l = \\beta\\,(s_w - s_l)$, one per prompt `[B]`."),
        (
            "return loss_output",
            "$\\mathcal{L} = -\\log\\sigma(h)$, written with `F.logsigmoid`, never as the log of a "
            "sigmoid: $\\sigma(h)$ rounds to 0 for a large negative $h$ (about $-100$ in float32) and "
            "its log is $-\\infty$. `loss_output` adds the detached "
            "diagnostics $\\hat r = \\beta s$ and the labels, one-hot on the chosen.",
        ),
    ],
)
dpo_view

# %% [markdown]
# ### The DPO gradient
#
# Use σ′(h) = σ(h)·σ(−h), so d/dh [−log σ(h)] = −σ(h)σ(−h)/σ(h) = −σ(−h). The margin depends on
# the two log-probs through ∂h/∂log π_θ(y_w) = +β and ∂h/∂log π_θ(y_l) = −β (μ is frozen), so
#
# $$\frac{\partial \mathcal{L}_{\text{DPO}}}{\partial \log\pi_\theta(y_w|x)} = -\beta\,\sigma(-h),
# \qquad \frac{\partial \mathcal{L}_{\text{DPO}}}{\partial \log\pi_\theta(y_l|x)} = +\beta\,\sigma(-h).$$
#
# Gradient *descent* raises the chosen log-prob and lowers the rejected one by the same amount: the
# two coefficients sum to zero, so DPO only ever moves the *difference*, and nothing in it stops
# both likelihoods falling together (notebook 1). The push fades as the margin grows
# (σ(−h) → 0) but never vanishes: the optimum is h → +∞. At policy = reference, h = 0 and the
# chosen coefficient is −β/2 (a MATH.md anchor). Here is the derivation as code, the function the
# check below (and `tests/test_annotate.py`) calls:

# %%
annotated(
    dpo_logp_grad,
    [
        ("s = policy_logps", "$s = \\log\\pi_\\theta - \\log\\mu$; no graph: this is the hand derivation."),
        ("h = beta", "$h = \\beta\\,(s_w - s_l)$"),
        ("push = beta", "$\\beta\\,\\sigma(-h)$, the size of the push."),
        ("return", "$(-\\beta\\sigma(-h),\\ +\\beta\\sigma(-h))$ on (chosen, rejected)."),
    ],
)

# %% tags=["nbval-check-output"]
# Checked: the derived DPO gradient against autograd on ncakit.losses.dpo, random pairs, float64.
pair_policy = -20 + 3 * torch.randn(B, 2, generator=gen)  # column 0 = chosen, column 1 = rejected
pair_ref = pair_policy + torch.randn(B, 2, generator=gen)
by_hand = dpo_logp_grad(pair_policy, pair_ref, beta=beta)
by_autograd = autograd_of(dpo, pair_policy, pair_ref, beta=beta)
print("chosen   (autograd):", rounded(by_autograd[:, 0], 4))
print("chosen   (by hand) :", rounded(by_hand[:, 0], 4))
print("rejected (by hand) :", rounded(by_hand[:, 1], 4))
print(f"max |Δ| < {TOL:g}: {max_gap(by_hand, by_autograd) < TOL}")
print("chosen + rejected = 0 for every pair:", rounded(by_hand.sum(dim=1), 12))
at_ref = dpo_logp_grad(torch.zeros(1, 2), torch.zeros(1, 2), beta=beta)
print(f"at policy = reference: chosen coefficient {rounded(at_ref[0, 0], 4)} = −β/2 = {-beta / 2}")

# %% [markdown]
# ## 2. InfoNCA
#
# With K responses and soft labels w, InfoNCA is a K-way cross-entropy on the logits r̂ (MATH.md,
# InfoNCA; van den Oord et al. 2018):
#
# $$\mathcal{L}_{\text{InfoNCA}} = -\sum_{i=1}^{K} w_i \log \mathrm{softmax}(\hat r)_i,
# \qquad \hat r_i = \beta s_i,\quad w = \mathrm{softmax}(r/\alpha)$$
#
# (a sum over the K responses, no 1/K). K = 2 with w = (1, 0) is exactly DPO.

# %%
infonca_view = annotated(
    infonca,
    [
        (
            "def infonca(",
            "The K-way signature: rewards `[B, K]` are required, plus the temperature $\\alpha$.",
        ),
        (
            "if validate:",
            "Input checks: shapes `[B, K]`, rewards present, every prompt with at least 2 valid "
            "responses, finite values. A wrong call fails here with the argument's name.",
        ),
        ("beta = check_positive", "$\\beta > 0$."),
        ("s = log_ratios", "$s_i = \\log\\pi_\\theta(y_i|x) - \\log\\mu(y_i|x)$, 0 at padding."),
        ("w = soft_labels", "$w = \\mathrm{softmax}(r/\\alpha)$, detached: the targets."),
        ("logits = beta * s", "The logits of the classifier: $\\hat r_i = \\beta s_i$."),
        ("if mask is not None", "Padding responses get logit $-\\infty$: they take no probability."),
        (
            "log_p = F.log_softmax",
            "$\\log\\mathrm{softmax}(\\hat r)_i = \\hat r_i - \\log\\sum_j e^{\\hat r_j}$, computed stably "
            "(it subtracts the max first), finite for $|\\hat r|$ up to $10^4$.",
        ),
        (
            "if mask is not None",
            "At padding, $\\log p = -\\infty$ and $w = 0$: $0\\cdot(-\\infty)$ would be NaN, so those "
            "slots are set to 0 first.",
        ),
        (
            "loss = -(w * log_p)",
            "$\\mathcal{L} = -\\sum_i w_i \\log\\mathrm{softmax}(\\hat r)_i$, per prompt `[B]`.",
        ),
        ("return loss_output", "The loss, with the detached $\\hat r$ and $w$ for logging."),
    ],
)
infonca_view

# %% [markdown]
# ### The InfoNCA gradient
#
# Write p = softmax(r̂). Then −Σⱼ wⱼ log pⱼ = −Σⱼ wⱼ r̂ⱼ + (Σⱼ wⱼ)·log Σₗ exp(r̂ₗ), and Σⱼ wⱼ = 1, so
# ∂L/∂r̂ᵢ = −wᵢ + exp(r̂ᵢ)/Σₗ exp(r̂ₗ) = pᵢ − wᵢ. With ∂r̂ᵢ/∂log π_θ(yᵢ|x) = β:
#
# $$\frac{\partial \mathcal{L}_{\text{InfoNCA}}}{\partial \log\pi_\theta(y_i|x)} = \beta\,\big(\mathrm{softmax}(\hat r)_i - w_i\big).$$
#
# Both p and w sum to 1, so **the K coefficients sum to zero**: adding the same constant to every
# log-ratio of a prompt changes nothing, and InfoNCA cannot tell whether all K likelihoods rise or
# fall together. It stops when softmax(r̂) = w, i.e. r̂ = r/α + C(x) for any C (MATH.md). K = 2,
# w = (1, 0) gives p₁ − 1 = −σ(−h): DPO's gradient again.

# %%
annotated(
    infonca_logp_grad,
    [
        ("r_hat = beta", "$\\hat r = \\beta\\,(\\log\\pi_\\theta - \\log\\mu)$, no graph."),
        ("return beta", "$\\beta\\,(\\mathrm{softmax}(\\hat r) - w)$ with the library's own labels $w$."),
    ],
)

# %% tags=["nbval-check-output"]
# Checked: the derived InfoNCA gradient against autograd on ncakit.losses.infonca, K = 4, float64.
policy_logps = -20 + 3 * torch.randn(B, K, generator=gen)
ref_logps = policy_logps + torch.randn(B, K, generator=gen)
rewards = torch.randint(1, 11, (B, K), generator=gen).double()  # scores 1..10
by_hand = infonca_logp_grad(policy_logps, ref_logps, rewards, beta=beta, alpha=alpha)
by_autograd = autograd_of(infonca, policy_logps, ref_logps, rewards, beta=beta, alpha=alpha)
print("prompt 1 (autograd):", rounded(by_autograd[0], 4))
print("prompt 1 (by hand) :", rounded(by_hand[0], 4))
print(f"max |Δ| < {TOL:g}: {max_gap(by_hand, by_autograd) < TOL}")
print("each prompt's coefficients sum to:", rounded(by_hand.sum(dim=1), 12))
shifted = autograd_of(infonca, policy_logps - 3.0, ref_logps, rewards, beta=beta, alpha=alpha)
print(
    f"every log-prob of every prompt lowered by 3 nats: gradient unchanged: {max_gap(shifted, by_autograd) < TOL}"
)

# %% [markdown]
# ## 3. NCA
#
# NCA asks K separate binary questions, one per response: "did yᵢ come from the target π\*, or
# from the reference μ?", with σ(r̂ᵢ) as the model's answer, weight wᵢ on the "target" side and an
# equal 1/K share on the "reference" side (MATH.md, NCA; Gutmann & Hyvärinen 2010):
#
# $$\mathcal{L}_{\text{NCA}} = -\sum_{i=1}^{K} w_i \log\sigma(\hat r_i) \;-\; \frac{1}{K}\sum_{i=1}^{K}\log\sigma(-\hat r_i).$$

# %%
nca_view = annotated(
    nca,
    [
        ("def nca(", "Same signature as `infonca`: one can replace the other in any trainer."),
        ("if validate:", "The same input checks as InfoNCA."),
        ("beta = check_positive", "$\\beta > 0$."),
        ("s = log_ratios", "$s_i$, 0 at padding."),
        ("w = soft_labels", "$w = \\mathrm{softmax}(r/\\alpha)$, detached."),
        (
            "r_hat = beta * s",
            "$\\hat r_i = \\beta s_i$: each response's own logit, no softmax across responses.",
        ),
        (
            "if mask is None:",
            "No padding: $K$ is the row length, and the reference term "
            "$\\sum_i \\log\\sigma(-\\hat r_i)$ is summed over all K.",
        ),
        (
            "else:",
            "With padding, $K$ is the number of *valid* responses of each prompt, and the padded "
            "slots are left out of the reference term.",
        ),
        (
            "# w is 0 at masked slots",
            "Why the target term needs no mask: $w_i = 0$ there and $\\hat r_i = 0$ is finite.",
        ),
        (
            "loss = -(w * F.logsigmoid",
            "$\\mathcal{L} = -\\sum_i w_i\\log\\sigma(\\hat r_i) - \\frac{1}{K}\\sum_i\\log\\sigma(-\\hat r_i)$, "
            "with `F.logsigmoid` for both terms.",
        ),
        ("return loss_output", "The loss, with the detached $\\hat r$ and $w$."),
    ],
)
nca_view

# %% [markdown]
# ### The NCA gradient
#
# From d/dx log σ(x) = σ(−x) and d/dx log σ(−x) = −σ(x), term i of the loss differentiates to
# ∂L/∂r̂ᵢ = −wᵢ·σ(−r̂ᵢ) + σ(r̂ᵢ)/K, so
#
# $$\frac{\partial \mathcal{L}_{\text{NCA}}}{\partial \log\pi_\theta(y_i|x)} = \beta\Big(-w_i\,\sigma(-\hat r_i) + \frac{\sigma(\hat r_i)}{K}\Big).$$
#
# Unlike InfoNCA's, response i's coefficient depends on **r̂ᵢ alone**: no softmax couples it to
# the others, and the coefficients do not sum to zero, so lowering every likelihood together is
# *not* free. It vanishes where wᵢ·σ(−r̂ᵢ) = σ(r̂ᵢ)/K, i.e. e^{r̂ᵢ} = K·wᵢ: the absolute target
# r̂ᵢ\* = log(K·wᵢ) (MATH.md), above the reference whenever wᵢ > 1/K. At the reference (r̂ = 0)
# the coefficient is β·(1/K − wᵢ)/2 (a MATH.md anchor, there in units of r̂).

# %%
annotated(
    nca_logp_grad,
    [
        ("r_hat = beta", "$\\hat r_i = \\beta s_i$, no graph."),
        ("w = soft_labels", "The library's own labels $w$."),
        ("k = r_hat.shape", "$K$: no padding in the hand derivation."),
        (
            "return beta",
            "$\\beta\\,(-w_i\\,\\sigma(-\\hat r_i) + \\sigma(\\hat r_i)/K)$, response by response.",
        ),
    ],
)

# %% tags=["nbval-check-output"]
# Checked: the derived NCA gradient against autograd on ncakit.losses.nca, on the same K = 4 batch.
by_hand = nca_logp_grad(policy_logps, ref_logps, rewards, beta=beta, alpha=alpha)
by_autograd = autograd_of(nca, policy_logps, ref_logps, rewards, beta=beta, alpha=alpha)
print("prompt 1 (autograd):", rounded(by_autograd[0], 4))
print("prompt 1 (by hand) :", rounded(by_hand[0], 4))
print(f"max |Δ| < {TOL:g}: {max_gap(by_hand, by_autograd) < TOL}")
print("each prompt's coefficients sum to:", rounded(by_hand.sum(dim=1), 4), "(not zero)")

w = soft_labels(rewards, alpha)
at_target = autograd_of(nca, ref_logps + torch.log(K * w) / beta, ref_logps, rewards, beta=beta, alpha=alpha)
print(
    f"at r̂ = log(K·w) every coefficient vanishes: max |grad| < {TOL:g}: {at_target.abs().max().item() < TOL}"
)
at_ref = autograd_of(nca, ref_logps, ref_logps, rewards, beta=beta, alpha=alpha)
print(f"at policy = reference, grad = β·(1/K − w)/2: {max_gap(at_ref, beta * (1 / K - w) / 2) < TOL}")

# %% tags=["nbval-check-output"]
# Checked: every code column above is the library's source, whole: the blocks put back together
# are exactly what inspect.getsource reads from the installed ncakit.
for fn, view in [(dpo, dpo_view), (infonca, infonca_view), (nca, nca_view)]:
    print(
        f"{view.name}: {len(view.blocks)} blocks, == inspect.getsource: {view.source == inspect.getsource(fn)}"
    )

# %% [markdown]
# > **Try this.** (1) In the InfoNCA check, replace `policy_logps - 3.0` by the same shift in the
# > NCA call (`autograd_of(nca, policy_logps - 3.0, ...)`): does NCA's gradient change, and in
# > which direction does it push? (2) Change an anchor in one of the `annotated(...)` cells, say
# > `"h = beta"` to `"h = gamma"`, and run the cell.
#
# <details><summary>Answer</summary>
#
# (1) It changes: each coefficient β(−wᵢσ(−r̂ᵢ) + σ(r̂ᵢ)/K) increases with r̂ᵢ, so after the fall
# every coefficient is lower (more negative) and gradient descent pushes every log-prob harder
# *up*: NCA sees, and resists, a common fall of the likelihoods that InfoNCA's zero-sum gradient
# cannot see. (2) `StaleAnchorError`, naming the
# anchor and the function: if `ncakit.losses` changes, this notebook fails loudly instead of
# explaining code that no longer exists.
#
# </details>
#
# ## Recap
#
# | loss | per-prompt loss | ∂L/∂log π_θ(yᵢ) | coefficients sum to | stops at |
# |---|---|---|---|---|
# | DPO | −log σ(h), h = r̂_w − r̂_l | ∓β·σ(−h) on (y_w, y_l) | 0 | h → +∞ (never) |
# | InfoNCA | −Σ wᵢ log softmax(r̂)ᵢ | β·(softmax(r̂)ᵢ − wᵢ) | 0 | r̂ = r/α + C(x) |
# | NCA | −Σ wᵢ log σ(r̂ᵢ) − (1/K) Σ log σ(−r̂ᵢ) | β·(−wᵢσ(−r̂ᵢ) + σ(r̂ᵢ)/K) | not 0 | r̂ᵢ = log(K·wᵢ) |
#
# - Each loss is a handful of lines: two helpers (`log_ratios`, `soft_labels`), the logits r̂ = β·s,
#   one stable log-probability (`logsigmoid` or `log_softmax`) and a weighted sum. The rest is input
#   checks and padding.
# - The zero-sum gradients of DPO and InfoNCA see only differences between responses; NCA's
#   per-response coefficient anchors each response to its own level relative to the reference.
# - A derivation is checked against autograd on the library loss, in float64, on random tensors:
#   `tests/test_annotate.py` runs the same three checks.
#
# **Next:** [07_exercises.ipynb](07_exercises.ipynb) (write the losses yourself).
#
# ## References
#
# - Rafailov, Sharma, Mitchell, Ermon, Manning, Finn (2023). *Direct Preference Optimization: Your
#   Language Model is Secretly a Reward Model.* NeurIPS 2023. [arXiv:2305.18290](https://arxiv.org/abs/2305.18290)
# - Chen, He, Yuan, Cui, Su, Zhu (2024). *Noise Contrastive Alignment of Language Models with
#   Explicit Rewards.* NeurIPS 2024. [arXiv:2402.05369](https://arxiv.org/abs/2402.05369)
# - van den Oord, Li, Vinyals (2018). *Representation Learning with Contrastive Predictive Coding*
#   (InfoNCE). [arXiv:1807.03748](https://arxiv.org/abs/1807.03748)
# - Gutmann, Hyvärinen (2010). *Noise-contrastive estimation: A new estimation principle for
#   unnormalized statistical models.* AISTATS 2010.
