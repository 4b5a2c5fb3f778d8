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
# # 7. Exercises: write the losses yourself
#
# **Goal.** Nine short coding exercises, each graded by a checker from `ncakit`: you write a function,
# the checker calls it on random tensors and on the edge cases that break real implementations (K = 2,
# a batch of one prompt, tied rewards, padded responses under a `mask`, α = 10⁻⁴ and 10⁴, β = 100),
# compares it with the library (`ncakit.losses`), with autograd on it, or with a closed form from
# [MATH.md](../ncakit/MATH.md), and says **what** is wrong when it is: "you averaged over K",
# "gradient has the wrong sign", "you used log-softmax over the batch dimension", "does not respect the
# mask", "you forgot the log K", "shape [B] expected, got [B, K]". You will write the soft labels,
# InfoNCA and NCA from their equations (notebook 2 explains them), their gradients by hand, NCA's
# optimum by minimisation, a converter from pairwise data to K-response rows, a bandit setting that
# shows the decreasing likelihood (notebook 1), and a likelihood-displacement detector for a training
# history. About 10 seconds to run as it stands.
#
# **How to work.** Each exercise has a statement, a stub `def my_...(...)` that returns `None` (the
# checker then prints "not implemented yet" and a first hint), a cell that runs the checker, and two
# hints that fold out; `hint("nca", 2)` prints them too. Replace the stub's body, rerun the two cells,
# repeat until the checker prints ✓. Reference solutions are in
# [solutions/exercises_solutions.py](solutions/exercises_solutions.py): **try first**, then compare.
# The last cell runs every checker on them (that is what `make test` checks).
#
# **Notation** (MATH.md): a prompt x has K responses yᵢ with rewards rᵢ; the log-ratio is
# sᵢ = log π_θ(yᵢ|x) − log μ(yᵢ|x) (μ the frozen reference), the implicit reward r̂ᵢ = β·sᵢ, and tensors
# are `[B, K]`: B prompts, K responses each. A `mask` `[B, K]` (bool) marks the real responses of
# prompts that have fewer than K; padded slots hold garbage and must not count.

# %%
import math  # noqa: F401  (for your solutions)

import torch
import torch.nn.functional as F  # noqa: F401  (for your solutions)

import ncakit
from ncakit.exercises import (
    check_infonca,
    check_infonca_grad,
    check_nca,
    check_nca_grad,
    check_nca_optimum,
    check_soft_labels,
    hint,  # noqa: F401  (hint("nca", 1), hint("nca", 2): the hints below, printed)
)
from ncakit.losses import nca  # noqa: F401  (exercise 6 minimises the library's NCA)
from ncakit.toy.bandit import BanditConfig  # noqa: F401  (exercise 8)
from ncakit.toy.exercises import check_all, check_bandit_setting, check_displaced, check_pairs_to_k
from ncakit.toy.policies import PolicyConfig  # noqa: F401  (exercise 8)
from ncakit.toy.trainer import Setting  # noqa: F401  (exercise 8)

gen = ncakit.seed_everything(0)  # seed once (the checkers draw from their own generators)
torch.set_num_threads(1)  # every tensor here is tiny: extra threads would only add overhead

# %% [markdown]
# ## 1. Soft labels
#
# A reward is a score, not a probability. Both NCA and InfoNCA first turn the K scores of a prompt into
# **soft labels** (MATH.md, notation):
#
# $$w_i = \mathrm{softmax}(r/\alpha)_i = \frac{e^{r_i/\alpha}}{\sum_{j\ \mathrm{valid}} e^{r_j/\alpha}},\qquad w_i = 0 \text{ for padded } i .$$
#
# Write `my_soft_labels(rewards, alpha, mask=None)`: `rewards` `[B, K]`, `alpha` > 0, `mask` `[B, K]`
# bool or `None` → `w` `[B, K]`, each row summing to 1. It must stay finite at α = 10⁻⁴.


# %%
def my_soft_labels(rewards, alpha, mask=None):
    # rewards [B, K], alpha > 0, mask [B, K] bool or None  ->  w [B, K]
    # your code here
    return None


# %%
passed = check_soft_labels(my_soft_labels)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Divide the rewards by α, then take a softmax over each prompt's K responses (the LAST dim).
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# logits = rewards / alpha; with a mask, put -inf at the padded slots first (logits.masked\_fill(~mask, -math.inf)); then torch.softmax(logits, dim=-1). torch.softmax subtracts the row max, so α = 1e-4 cannot overflow.
#
# </details>

# %% [markdown]
# ## 2. InfoNCA from its equation
#
# InfoNCA is a K-way classification of the responses with the soft labels as targets (MATH.md, InfoNCA):
#
# $$\mathcal{L}_\mathrm{InfoNCA} = -\sum_{i=1}^{K} w_i \,\log \mathrm{softmax}(\hat r)_i,\qquad \hat r_i = \beta\,\big(\log\pi_\theta(y_i|x) - \log\mu(y_i|x)\big),\qquad w = \mathrm{softmax}(r/\alpha).$$
#
# A sum over K, no 1/K. Write `my_infonca(policy_logps, ref_logps, rewards, beta, alpha, mask=None)`:
# three `[B, K]` tensors (and the optional mask) → the per-prompt loss `[B]` (no mean over the batch).
# Padded responses leave the softmax and the sum. You may call your `my_soft_labels`.


# %%
def my_infonca(policy_logps, ref_logps, rewards, beta, alpha, mask=None):
    # [B, K] tensors, beta > 0, alpha > 0, mask [B, K] or None  ->  loss [B]
    # your code here
    return None


# %%
passed = check_infonca(my_infonca)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# InfoNCA is a K-way classification: the 'logits' are r̂ = β·(log π − log μ), the targets are the soft labels w = softmax(r/α), and the loss is the cross-entropy −Σ\_i w\_i·log softmax(r̂)\_i.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# r\_hat = beta \* (policy\_logps - ref\_logps); w = soft labels (your exercise 1); with a mask, r\_hat.masked\_fill(~mask, -inf) before F.log\_softmax(r\_hat, dim=-1), then zero the padded log-probs (torch.where) so 0·(−inf) is not NaN; loss = -(w \* log\_p).sum(-1): one number per prompt, no 1/K.
#
# </details>

# %% [markdown]
# ## 3. NCA
#
# NCA asks one binary question per response, "data sample (weight wᵢ) or noise (weight 1/K)?"
# (MATH.md, NCA):
#
# $$\mathcal{L}_\mathrm{NCA} = -\sum_{i=1}^{K} w_i\,\log\sigma(\hat r_i) \;-\; \frac{1}{K}\sum_{i=1}^{K}\log\sigma(-\hat r_i).$$
#
# Same signature as exercise 2, returns `[B]`. With a mask, K is the prompt's number of **valid**
# responses. It must stay finite for |r̂| up to 10⁴.


# %%
def my_nca(policy_logps, ref_logps, rewards, beta, alpha, mask=None):
    # [B, K] tensors, beta > 0, alpha > 0, mask [B, K] or None  ->  loss [B]
    # your code here
    return None


# %%
passed = check_nca(my_nca)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# NCA asks K binary questions: 'is y\_i a data sample (weight w\_i) or noise (weight 1/K)?'. L = −Σ w\_i·log σ(r̂\_i) − (1/K)·Σ log σ(−r̂\_i).
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# r\_hat = beta \* (policy\_logps - ref\_logps); use F.logsigmoid (never log(sigmoid)); with a mask, K = mask.sum(-1) (valid responses only), and zero both terms at the padded slots with torch.where; loss = -(w \* F.logsigmoid(r\_hat)).sum(-1) - F.logsigmoid(-r\_hat).sum(-1) / K.
#
# </details>

# %% [markdown]
# ## 4. InfoNCA's gradient, by hand
#
# Derive $\partial\mathcal{L}_\mathrm{InfoNCA}/\partial\hat r_i$ of one prompt's loss on paper, then
# write it: `my_infonca_grad(r_hat, w)` with `r_hat`, `w` `[B, K]` (rows of `w` sum to 1) → `[B, K]`.
# The checker compares it with autograd on `ncakit.losses.infonca`. Before you run it: what do the K
# entries of a row sum to, and what does that say about a prompt whose log-ratios all fall together?


# %%
def my_infonca_grad(r_hat, w):
    # r_hat [B, K], w [B, K]  ->  dL/dr_hat [B, K] of each prompt's InfoNCA loss
    # your code here
    return None


# %%
passed = check_infonca_grad(my_infonca_grad)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Differentiate −Σ\_j w\_j·(r̂\_j − logsumexp(r̂)) w.r.t. r̂\_i; remember Σ\_j w\_j = 1.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# dL/dr̂\_i = softmax(r̂)\_i − w\_i: torch.softmax(r\_hat, dim=-1) - w. The entries of a row sum to zero.
#
# </details>

# %% [markdown]
# <details><summary>Answer to "before you run it"</summary>
#
# The row sums to zero (Σ pᵢ = Σ wᵢ = 1), so adding the same constant to every log-ratio of a prompt
# changes nothing: InfoNCA cannot see, and so cannot stop, the chosen likelihood falling with the rest.
#
# </details>

# %% [markdown]
# ## 5. NCA's gradient, by hand
#
# The same for NCA: $\partial\mathcal{L}_\mathrm{NCA}/\partial\hat r_i$, with $\frac{d}{dx}\log\sigma(x) = \sigma(-x)$.
# `my_nca_grad(r_hat, w)` → `[B, K]`, checked against autograd on `ncakit.losses.nca`. Which entries
# does the gradient of response i depend on?


# %%
def my_nca_grad(r_hat, w):
    # r_hat [B, K], w [B, K]  ->  dL/dr_hat [B, K] of each prompt's NCA loss
    # your code here
    return None


# %%
passed = check_nca_grad(my_nca_grad)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Use d/dx log σ(x) = σ(−x) = 1 − σ(x) on each of the two terms of the NCA loss; each response's gradient depends on its own r̂\_i only.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# dL/dr̂\_i = −w\_i·σ(−r̂\_i) + σ(r̂\_i)/K: -w \* torch.sigmoid(-r\_hat) + torch.sigmoid(r\_hat) / K, with K = r\_hat.shape[-1].
#
# </details>

# %% [markdown]
# <details><summary>Answer to "which entries"</summary>
#
# Only r̂ᵢ itself: −wᵢ·σ(−r̂ᵢ) + σ(r̂ᵢ)/K. Each response is pulled toward its own absolute target
# log(K·wᵢ); at the reference (r̂ = 0) it is (1/K − wᵢ)/2, a MATH.md anchor.
#
# </details>

# %% [markdown]
# ## 6. NCA's optimum, by minimisation
#
# Find the log-ratios that minimise NCA **numerically**: treat $s$ `[B, K]` as free parameters, call
# `ncakit.losses.nca(s, zeros, rewards, beta=beta, alpha=alpha)` (the policy log-probs are s, the
# reference 0) and descend on `.loss.sum()`. Write `my_nca_optimum(rewards, alpha, beta)` → `s` `[B, K]`.
# The checker compares your minimiser with the closed form (to 10⁻³) and, if it is off, tells "not
# converged" from "converged to the wrong place". Predict first: where should s land?


# %%
def my_nca_optimum(rewards, alpha, beta):
    # rewards [B, K], alpha > 0, beta > 0  ->  the minimising log-ratios s [B, K]
    # your code here
    return None


# %%
passed = check_nca_optimum(my_nca_optimum)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Treat the log-ratios s as free parameters: a leaf tensor (requires\_grad=True) passed to ncakit.losses.nca(s, zeros, rewards, beta=beta, alpha=alpha) as the policy log-probs, with a zero reference; then descend on .loss.sum() until the gradient is ~0.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# NCA sees s only through r̂ = β·s: descend on r̂ with beta=1.0 and return r̂/β. r\_hat = torch.zeros\_like(rewards, requires\_grad=True); repeat: loss = nca(r\_hat, zeros, rewards, beta=1.0, alpha=alpha).loss.sum(); (g,) = torch.autograd.grad(loss, r\_hat); with torch.no\_grad(): r\_hat -= 4.0 \* g (a few hundred steps). torch.optim.LBFGS works too (its first use imports torch.\_dynamo: seconds).
#
# </details>

# %% [markdown]
# <details><summary>Answer to "predict first"</summary>
#
# Each response has its own optimum (MATH.md, NCA): $\hat r_i^* = \log(K w_i)$, so
# $s_i^* = \log(K w_i)/\beta$. A response with $w_i > 1/K$ ends **above** the reference likelihood, and
# no per-prompt constant is free, unlike InfoNCA's $\hat r^* = r/\alpha + C$.
#
# </details>

# %% [markdown]
# ## 7. From pairs to K-response rows
#
# Preference datasets come as pairs: `{"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}`.
# NCA and InfoNCA want one row per prompt with its K responses: `{"prompt", "responses", "rewards"}` (the
# canonical format of `ncakit.scale.data`). Write `my_pairs_to_k(rows)` (plain Python, a list of dicts
# in, a list of dicts out) with these rules:
#
# 1. one output row per prompt, prompts in order of first appearance;
# 2. each distinct response once, its reward the **mean** of the scores it received;
# 3. responses sorted best-first by reward; ties keep first-appearance order (a stable sort);
# 4. a prompt left with fewer than 2 distinct responses is dropped.


# %%
def my_pairs_to_k(rows):
    # rows: list of {"prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    # -> list of {"prompt", "responses", "rewards"}
    # your code here
    return None


# %%
passed = check_pairs_to_k(my_pairs_to_k)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Group the rows by prompt with a dict (keys keep insertion order); inside a prompt, collect each distinct response once with the list of scores it received.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# groups = {}; for row: g = groups.setdefault(row['prompt'], {}); g.setdefault(row['chosen'], []).append(row['score\_chosen']); the same for rejected. Then per prompt: rewards = means; order = sorted(range(K), key=lambda i: -rewards[i]) (Python's sort is stable); skip prompts with K < 2.
#
# </details>

# %% [markdown]
# ## 8. A bandit that shows the decreasing likelihood
#
# Build a toy experiment (notebook 1) in which **InfoNCA lowers the chosen likelihood and NCA does not**:
# `my_bandit_setting()` returns a `ncakit.toy.trainer.Setting(name, BanditConfig(...), PolicyConfig(...),
# beta=..., alpha=..., lr=...)`. The checker trains InfoNCA and NCA on it for 400 Adam steps (2 seeds,
# about a second) and passes if the mean chosen log-ratio $\log\pi_\theta(y_w|x) - \log\mu(y_w|x)$ ends
# below −0.5 nats under InfoNCA and above −0.5 under NCA. MATH.md, "What a toy bandit needs to show the
# effect", says which bandits show it and which one is the control.


# %%
def my_bandit_setting():
    # -> Setting("mine", BanditConfig(...), PolicyConfig(...), beta=..., alpha=..., lr=...)
    # your code here
    return None


# %%
passed = check_bandit_setting(my_bandit_setting)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# The chosen likelihood falls only when comparisons OVERLAP: a response chosen in one tuple is rejected in another. One tuple per prompt is the control, where nothing falls.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# Setting('mine', BanditConfig(n\_prompts=8, n\_responses=32, k=4, tuples\_per\_prompt=8), PolicyConfig('tabular'), beta=0.1, alpha=0.3, lr=0.05): several tuples per prompt, sharp-ish labels.
#
# </details>

# %% [markdown]
# ## 9. A likelihood-displacement detector
#
# A training history logs the chosen and rejected log-ratios at T steps (`History.metrics["chosen"]` is
# `[T, L, S]`: steps × losses × seeds). **Likelihood displacement** is the chosen log-ratio falling while
# the margin rises: the model separates the pair by pushing both down. Write `my_displaced(chosen,
# rejected)`: numpy arrays `[T, ...]` → bool `[...]`,
#
# $$\mathrm{displaced} = \big(c_{T} < c_{1}\big)\ \wedge\ \big(m_{T} > m_{1}\big),\qquad m = c - r \quad (\text{last logged step vs first, strict}).$$


# %%
def my_displaced(chosen, rejected):
    # chosen, rejected: arrays [T, ...]  ->  bool array [...]
    # your code here
    return None


# %%
passed = check_displaced(my_displaced)

# %% [markdown]
# <details><summary>Hint 1</summary>
#
# Compare the LAST logged step with the FIRST: the chosen log-ratio must have fallen while the margin (chosen − rejected) rose. Both strictly.
#
# </details>
#
# <details><summary>Hint 2</summary>
#
# margin = chosen - rejected; return (chosen[-1] < chosen[0]) & (margin[-1] > margin[0]) (index the step axis 0 only, so any trailing [L, S] dims are kept).
#
# </details>

# %% [markdown]
# ## Check: the reference solutions pass every checker
#
# The cell below loads [solutions/exercises_solutions.py](solutions/exercises_solutions.py) and runs the
# nine checkers on it, exactly as `tests/test_exercises.py` does; nbval compares its printout on every
# `make test`. The bounds printed are the largest differences from the library, autograd or closed form
# (float64); the bandit line prints the two chosen log-ratios the exercise asks about. To grade your own
# functions in one go, run `check_all(globals())` instead.

# %% tags=["nbval-check-output"]
import importlib.util
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "tutorials" / "solutions").is_dir())
spec = importlib.util.spec_from_file_location(
    "exercises_solutions", ROOT / "tutorials" / "solutions" / "exercises_solutions.py"
)
solutions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(solutions)
results = check_all(solutions)

# %% [markdown]
# ## Summary
#
# - The soft labels, InfoNCA and NCA are ten lines each once the traps are known: normalise over the
#   K responses (never the batch), keep a sum over K for InfoNCA and the 1/K on NCA's noise term, let
#   the mask remove padded responses from every sum, softmax and from K, and use `softmax` /
#   `log_softmax` / `logsigmoid` so α = 10⁻⁴ and |r̂| = 10⁴ stay finite.
# - InfoNCA's gradient p − w sums to zero over a prompt; NCA's −wᵢσ(−r̂ᵢ) + σ(r̂ᵢ)/K acts on each
#   response alone and vanishes at s* = log(K·w)/β, which plain gradient descent on `ncakit.losses.nca`
#   finds.
# - Pairs become K-way rows by grouping on the prompt; the decreasing likelihood needs overlapping
#   comparisons; displacement is "chosen down, margin up".
#
# **Back to:** [01_decreasing_likelihood.ipynb](01_decreasing_likelihood.ipynb) to see the effects these
# exercises rebuild, or [the index](README.md).
