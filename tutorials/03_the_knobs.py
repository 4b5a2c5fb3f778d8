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
# # 3. The knobs
#
# **Goal.** NCA and InfoNCA have three knobs: the **reward temperature α** (how sharp the soft labels
# w = softmax(r/α) are), the **KL strength β** (the implicit reward is r̂ = β·log(π/μ)) and the
# **tuple size K** (how many scored responses per prompt). This notebook turns each of them on the
# toy bandit of notebook 1 and watches three things: the chosen log-ratio (does the likelihood
# fall?), the **expected true reward against the KL to the reference** (how good is the policy, and
# how far did it move?), and the **target policy π\* ∝ μ·exp(r/(αβ))** the losses aim at. Then it
# answers a sharper question: **when do NCA and InfoNCA agree, and when do they differ?**, and
# checks that NCA lands exactly on its per-response optimum log(K·w)/β where a policy can reach it.
# Predict before each run; the checked cells print counts of seeds, never raw curves. Sliders at
# the end re-run a small bandit with your own knob settings.
#
# **Objectives.** After this notebook you can
# - write the target policy π\* ∝ μ·exp(r/(αβ)) and explain why only the product αβ moves it along
#   the reward–KL frontier;
# - predict which way InfoNCA's and NCA's chosen log-ratio go when α, β or K change;
# - say when NCA and InfoNCA reach the same policy and name the three things that make them differ
#   (sharp overlapping targets, the optimiser, shared parameters);
# - decide whether NCA's per-response optimum log(K·w̄)/β is reachable for given data and β.
#
# **Prerequisites.** [Notebook 1](01_decreasing_likelihood.ipynb) (the bandit, its three settings
# and the losses) and [notebook 2](02_from_preferences_to_rewards.ipynb) (soft labels, the optima
# r/α + C and log(K·w)). Python; the KL divergence KL(π‖μ) = Σ π·log(π/μ) and an expectation.
#
# **Paper.** Chen et al., [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (v3,
# [HTML](https://arxiv.org/html/2402.05369v3)): §3 (InfoNCA: Extending DPO from Preference to Explicit
# Rewards) for α and the target policy, §2 (Background: Direct Preference Optimization) for β, §4
# (NCA: Fixing Decreased Response Likelihood Issue for InfoNCA) for NCA's optimum.
#
# **Time to run.** About 22 seconds on the project's 2-core CI machine (measured by
# `tutorials/build.py`); a slower laptop can take a few times longer.

# %%
# %matplotlib inline
import dataclasses
import functools

import matplotlib.pyplot as plt
import numpy as np
import torch

import ncakit
from ncakit import registry
from ncakit.losses import soft_labels
from ncakit.toy import bandit, classroom, figures, presets, trainer
from ncakit.utils import notebook_style

gen = ncakit.seed_everything(0)  # seed once; `gen` feeds the random rewards of section 5
torch.set_num_threads(1)  # the bandit's tensors are tiny: one thread is the fastest
notebook_style(font_size=14, figsize=None)  # readable fonts and a light grid

SEEDS = range(6)  # 6 independent bandits per experiment (data, μ and reward differ)
STEPS = 1500  # full-batch Adam steps (toy/demo.py uses 2000; the knobs' effects are clear by 1500)
classic = presets.get_preset("classic")
control, overlap, shared = classic.settings  # notebook 1's three settings (β = 0.1, α = 0.3)
train_config = trainer.BanditTrainConfig(losses=("infonca", "nca"), steps=STEPS, log_every=STEPS // 100)

# %% [markdown]
# ## 1. The target policy π\*
#
# *Paper: the target policy μ·exp(r/α) of §3 (the β = 1 case of the formula below); the reward–KL
# frontier is this notebook's own.*
#
# InfoNCA's optimum is r̂\* = r/α + C(x) (MATH.md, InfoNCA): the implicit rewards reproduce the true
# rewards divided by α, up to a constant per prompt. With r̂ = β·log(π/μ) that is
#
# $$\log \pi^*(y|x) = \log\mu(y|x) + \frac{r(x,y)}{\alpha\beta} + \text{const}
# \quad\Longrightarrow\quad \pi^*(y|x) \propto \mu(y|x)\,\exp\!\Big(\frac{r(x,y)}{\alpha\beta}\Big).$$
#
# **A note on the paper's formula.** Chen et al. write the target as π\* ∝ μ·exp(r/α): that is the
# β = 1 case. ncakit keeps α (the label temperature) and β (the implicit-reward scale) separate, so
# the target has temperature **τ = α·β**: only the product moves π\*. It is also the policy that
# maximises E_π[r] − τ·KL(π‖μ), so π\* lies on the **reward–KL frontier**: the curve traced by
# π_τ ∝ μ·exp(r/τ) as τ goes from ∞ (π = μ) to 0 (all mass on the best response), the most expected
# reward any policy can get at a given KL. Small τ: greedy and far from μ; large τ: cautious.

# %%
b = bandit.make_bandit(overlap.bandit, seeds=SEEDS)  # the overlap bandit of notebook 1
front = b.frontier()  # {"tau", "kl", "expected_reward"}, each [S, n]
taus = (3.0, 0.3, 0.03)
shades = plt.cm.viridis(np.linspace(0.15, 0.85, len(taus)))

fig, axes = plt.subplot_mosaic([["a", "f"], ["b", "f"], ["c", "f"]], figsize=(16, 6.4), width_ratios=[1.3, 1])
order = torch.argsort(b.reward[0, 0])  # seed 0, prompt 0: responses sorted by true reward
x = np.arange(len(order))
mu = b.ref_logps[0, 0, order].exp()
for key, tau, color in zip("abc", taus, shades):
    pi_star = b.target_logps(alpha=tau, beta=1.0)[0, 0, order].exp()  # only α·β matters
    axes[key].bar(x, pi_star, width=0.8, color=color)
    axes[key].step(x, mu, where="mid", color=registry.REFERENCE_COLOR, lw=2)
    axes[key].text(0.02, 0.9, f"π*, αβ = {tau:g}", transform=axes[key].transAxes, va="top", fontsize=14)
    axes[key].set(xticks=[], ylim=(0, 1.05 * max(pi_star.max(), mu.max())))
axes["a"].set_title("π* ∝ μ·exp(r/αβ) for one prompt (grey outline: μ)")
axes["b"].set_ylabel("probability")
axes["c"].set_xlabel("responses, sorted by true reward →")
ax = axes["f"]
ax.plot(
    front["kl"].mean(0), front["expected_reward"].mean(0), color=registry.REFERENCE_COLOR, lw=3, alpha=0.7
)
for tau, color in zip(taus, shades):
    stats = b.policy_stats(b.target_logps(alpha=tau, beta=1.0))  # mean over prompts, [S]
    kl, er = stats["kl"].mean(), stats["expected_reward"].mean()
    ax.scatter(kl, er, s=260, color=color, edgecolor="k", zorder=3)
    ax.annotate(f"αβ = {tau:g}", (kl, er), xytext=(10, -22), textcoords="offset points")
mu_reward = b.policy_stats(b.ref_logps)["expected_reward"].mean()
ax.scatter(0, mu_reward, s=120, color=registry.REFERENCE_COLOR, zorder=3)
ax.annotate("μ", (0, mu_reward), xytext=(10, 0), textcoords="offset points")
ax.set(
    xlabel="KL(π || μ)  (nats)",
    ylabel="expected true reward",
    title="The reward–KL frontier (mean over 6 bandits)",
)
fig.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
# Checked: what defines π*, on the same bandits in float64 (so that equalities hold to 1e-9).
b64 = bandit.make_bandit(overlap.bandit, seeds=SEEDS, dtype=torch.float64)
alpha, beta = 3.0, 0.1  # τ = αβ = 0.3
implicit = beta * (b64.target_logps(alpha, beta) - b64.ref_logps)  # β·log(π*/μ), [S, X, N]
offset = implicit - b64.reward / alpha  # should be a constant C(x) per prompt
print("β·log(π*/μ) = r/α + C(x):", bool((offset - offset.mean(-1, keepdim=True)).abs().max() < 1e-9))
same = torch.allclose(b64.target_logps(3.0, 0.1), b64.target_logps(0.3, 1.0), rtol=0, atol=1e-9)
print("only α·β matters: π*(α = 3, β = 0.1) == π*(α = 0.3, β = 1):", same)


def objective(logps):  # E_π[r] − αβ·KL(π‖μ), mean over prompts, [..., S]
    stats = b64.policy_stats(logps)
    return stats["expected_reward"] - alpha * beta * stats["kl"]


best = objective(b64.target_logps(alpha, beta))  # [S]
others = torch.stack([b64.target_logps(t, 1.0) for t in front["tau"].tolist()])  # the frontier's π_τ
noise = 0.3 * torch.randn(200, *b64.shape, generator=gen, dtype=torch.float64)
noisy = torch.distributions.Categorical(logits=b64.target_logps(alpha, beta) + noise).logits  # normalised
print(
    "π* scores at least as high as all 60 frontier policies π_τ:",
    bool((objective(others) <= best + 1e-12).all()),
)
print("π* scores higher than 200 random perturbations of itself:", bool((objective(noisy) < best).all()))

# %% [markdown]
# ## 2. The reward temperature α
#
# *Paper: §3, where α is the temperature of the soft labels softmax(r/α).*
#
# All the sweeps of this notebook run as **one** batched program: the tabular policy on notebook 1's
# overlapping data (8 prompts × 8 tuples of K = 4), InfoNCA and NCA, one knob changed at a time
# around α = 0.3, β = 0.1, K = 4.
#
# > **Predict first.** Small α makes the labels sharp (nearly one-hot on each tuple's best
# > response); large α makes them uniform (1/K each). Which way does InfoNCA's chosen log-ratio go
# > as α grows? NCA's? And which α gives the most expected reward?

# %%
knobs = {
    "alpha": [dataclasses.replace(overlap, alpha=a) for a in (0.1, 0.3, 1.0, 3.0, 10.0)],
    "beta": [dataclasses.replace(overlap, beta=v) for v in (0.03, 0.1, 0.3, 1.0)],
    "k": [dataclasses.replace(overlap, bandit=dataclasses.replace(overlap.bandit, k=k)) for k in (2, 4, 8)],
}
for name, settings in knobs.items():  # unique names; the centre (α = 0.3, β = 0.1, K = 4) is shared
    knobs[name] = [
        dataclasses.replace(s, name=f"α={s.alpha:g} β={s.beta:g} K={s.bandit.k}", title=f"{name} sweep")
        for s in settings
    ]
unique = {s.name: s for settings in knobs.values() for s in settings}
sweep = trainer.train_bandits(list(unique.values()), SEEDS, train_config)  # about 10 s
by_knob = {name: {s.name: sweep[s.name] for s in settings} for name, settings in knobs.items()}

figures.plot_sweep(by_knob["alpha"], "alpha")
plt.show()
classroom.plot_frontier(by_knob["alpha"], "alpha")
plt.show()

# %% [markdown]
# - **InfoNCA** aims at r̂ gaps of r/α between responses, i.e. log-ratio gaps of r/(αβ). At small α
#   those gaps are tens of nats: winner-takes-all on the best seen response of each prompt, and the
#   chosen responses of most tuples (which are not that best one) fall far below μ, exactly
#   notebook 1's effect. As α grows the labels flatten and the fall disappears.
# - **NCA** barely moves with α here: its targets log(K·w̄)/β ask for more mass than exists at β = 0.1
#   (section 6), so every response is pulled up as far as the normalisation allows and the chosen
#   log-ratio stays near +1.2 nats.
# - On the frontier plot the stars π\* slide down the frontier as α grows (a cautious target).
#   InfoNCA heads for π\* but only over the responses it has seen: it stops short of the frontier.
#   NCA moves less (smaller KL) and earns less reward in this *tabular* setting, for every α: the
#   honest price of its caution here (notebook 1 showed that it wins once parameters are shared).
#
# ## 3. The KL strength β
#
# *Paper: §2, where β is the strength of DPO's KL constraint (and the scale of r̂ = β·log π/μ).*
#
# > **Predict first.** The losses act on r̂ = β·log(π/μ). If β is 10 times smaller, how large must
# > the log-ratios become to reach the same implicit rewards? What happens to the fall?

# %%
figures.plot_sweep(by_knob["beta"], "beta")
plt.show()
classroom.plot_frontier(by_knob["beta"], "beta")
plt.show()

# %% [markdown]
# The smaller β, the larger the log-ratios needed for the same r̂ (s = r̂/β), so InfoNCA's fall grows
# as β shrinks: InfoNCA (like DPO) lowers the chosen likelihood *more* in the paper's small-β regime
# (β = 0.01 in the authors' recipes). At β = 1 the target gaps r/α are gentle and InfoNCA's chosen
# log-ratio stays near 0. NCA stays above 0 throughout. Note how α and β enter π\* only through αβ:
# the β = 0.03 and α = 0.1 points chase the same star (αβ ≈ 0.01), but the *losses* are not
# symmetric in α and β: β also scales NCA's targets and the strength of every gradient.

# %% tags=["nbval-check-output"]
# Checked: counts of seeds (out of 6). "Falls" = final chosen log-ratio below -1 nat.
for name, runs in by_knob.items():
    for h in runs.values():
        value = {"alpha": h.setting.alpha, "beta": h.setting.beta, "k": h.setting.bandit.k}[name]
        c = h.final("chosen")  # [L, S]: InfoNCA, NCA
        falls = int((c[h.loss_index("infonca")] < -1).sum())
        above = int((c[h.loss_index("nca")] > 0).sum())
        sym = {"alpha": "α", "beta": "β", "k": "K"}[name]
        print(f"{sym} = {value:<5g}  InfoNCA chosen falls: {falls}/6   NCA chosen above μ: {above}/6")

# %% [markdown]
# ## 4. The tuple size K
#
# *Paper: §3 (K responses per prompt); the UltraFeedback data of §5 have K = 4.*
#
# > **Predict first.** More responses per tuple means more comparisons per prompt (more overlap), and
# > NCA's largest possible target grows: a one-hot label gives r̂\* = log K. What happens to InfoNCA's
# > fall, and to NCA's chosen log-ratio, from K = 2 to K = 8?

# %%
figures.plot_sweep(by_knob["k"], "k")
plt.show()

# %% tags=["nbval-check-output"]
# Checked (closed form): NCA's largest per-response target, a one-hot label w = 1, as a log-ratio.
for k in (2, 4, 8):
    print(f"K = {k}: log(K)/β = {np.log(k) / 0.1:6.2f} nats at β = 0.1,  {np.log(k):.3f} at β = 1")

# %% [markdown]
# InfoNCA falls for every K: K = 2 is the pairwise case (InfoNCA with K = 2 is label-smoothed DPO,
# notebook 2), so a small K does not rescue it. NCA's chosen log-ratio *rises* with K: its targets
# log(K·w̄)/β grow with K, and a larger tuple also shows each prompt's good responses more often.
# More scored responses per prompt mean a larger expected-reward gain for both losses.
#
# ## 5. When do NCA and InfoNCA agree?
#
# *Paper: §4, the contrast between InfoNCA's relative and NCA's absolute likelihood (stated in the
# abstract); the conditions tested here are this notebook's own.*
#
# One line of algebra explains most of it. NCA's optimum for response i of a tuple is
#
# $$\log(K w_i) = \frac{r_i}{\alpha} - \log\frac{1}{K}\sum_j e^{r_j/\alpha},$$
#
# which is InfoNCA's optimum r/α + C with one particular constant C. **On a single tuple with free
# parameters, NCA picks one of InfoNCA's solutions.** They can only differ through what fixes C:
# NCA fixes it by its loss, InfoNCA leaves it to everything else (the optimiser, shared parameters,
# the limit that probabilities sum to 1). So they agree when C does not matter or is forced, and
# differ when something drags C. We test six conditions (6 seeds each), plus one of them again
# with plain SGD instead of Adam.

# %% tags=["nbval-check-output"]
# Checked: NCA's optimum log(K·w) minus r/α is the same for every response of a tuple (random rewards).
r = 10 * torch.rand(5, 4, generator=gen, dtype=torch.float64)  # 5 tuples of K = 4 scores
for a in (0.3, 1.0, 3.0):
    gap = torch.log(4 * soft_labels(r, a)) - r / a  # [5, 4]
    print(
        f"α = {a:g}: log(K·w) − r/α constant within each tuple: {bool(torch.allclose(gap, gap[:, :1].expand_as(gap)))}"
    )

# %%
k4 = presets.get_preset("k4-rewards").settings  # β = 1, α = 1: tabular M = 1, tabular M = 8, lowrank
conditions = {
    "tabular, M = 1\nβ = 0.1, α = 0.3": control,
    "tabular, M = 8\nα = 30 (flat labels)": dataclasses.replace(overlap, alpha=30.0),
    "tabular, M = 8\nβ = 1, α = 1": k4[1],
    "tabular, M = 8\nβ = 0.1, α = 0.3": overlap,
    "tabular, M = 1\nβ = 1, α = 1 (Adam)": k4[0],
    "lowrank, M = 8\nβ = 1, α = 1": k4[2],
}
settings = [  # one-line titles (plot and printout); the bar chart below splits them on two lines
    dataclasses.replace(s, name=f"c{i}", title=label.replace("\n", ", "))
    for i, (label, s) in enumerate(conditions.items())
]
agree_runs = trainer.train_bandits(settings, SEEDS, train_config)  # about 4 s
# The same M = 1 setting with plain SGD: its gradient sums to zero over the tuple, like InfoNCA's.
sgd_setting = dataclasses.replace(k4[0], name="sgd", title="tabular, M = 1, β = 1, α = 1 (SGD)", lr=1.0)
sgd_run = trainer.train_bandits(sgd_setting, SEEDS, dataclasses.replace(train_config, optimizer="sgd"))["sgd"]
agree_runs["sgd"] = sgd_run

fig, ax = plt.subplots(figsize=(16, 5.6))
for j, loss in enumerate(("infonca", "nca")):
    for i, h in enumerate(agree_runs.values()):
        c = h.final("chosen")[h.loss_index(loss)]
        xpos = i + (j - 0.5) * 0.36
        ax.bar(
            xpos,
            c.mean(),
            0.34,
            color=registry.loss_color(loss),
            label=registry.loss_label(loss) if i == 0 else None,
        )
        ax.scatter(np.full(len(c), xpos), c, color="k", s=14, zorder=3)
ax.axhline(0, color="k", lw=1)
ax.set_yscale("symlog", linthresh=1.0)
ax.set_yticks([-10, -3, -1, 0, 1, 3], ["−10", "−3", "−1", "0", "1", "3"])
labels = [h.setting.title.replace(", ", "\n", 2).replace("\n", ", ", 1) for h in agree_runs.values()]
ax.set_xticks(range(len(agree_runs)), labels, fontsize=12)
ax.set_ylabel("final chosen log π/μ (nats)\n(symlog scale)")
ax.set_title("InfoNCA vs NCA: the chosen log-ratio under seven conditions (bars: mean; dots: seeds)")
ax.legend(loc="lower left")
fig.tight_layout()
plt.show()

# %% tags=["nbval-check-output"]
# Checked: seeds (out of 6) where InfoNCA's and NCA's final chosen log-ratios agree within 0.25 nat.
for key, h in agree_runs.items():
    if key == "sgd":
        continue  # (with SGD the two levels differ by 0.2-0.3 nat: compared with Adam below instead)
    c = h.final("chosen")
    agree = int((np.abs(c[h.loss_index("infonca")] - c[h.loss_index("nca")]) < 0.25).sum())
    print(f"{h.setting.title:<38} agree in {agree}/6 seeds")
adam = agree_runs["c4"]
drift = adam.final("chosen")[0] - sgd_run.final("chosen")[0]
same_nca = np.abs(adam.final("chosen")[1] - sgd_run.final("chosen")[1])
print(
    f"M = 1, β = 1: InfoNCA ends > 0.5 nat lower with Adam than with SGD in {int((drift < -0.5).sum())}/6 seeds"
)
print(
    f"M = 1, β = 1: NCA ends within 0.1 nat of itself with either optimiser in {int((same_nca < 0.1).sum())}/6 seeds"
)

# %% [markdown]
# **They agree** when the free constant C does not matter or is forced:
# - **One tuple per prompt, small αβ** (first group): both put all the mass on the tuple's winner;
#   the limit Σπ = 1 fixes everything.
# - **Flat labels**, α = 30: w ≈ 1/K, both targets are ≈ 0, both stay close to μ.
# - **β = 1, α = 1, overlapping tuples**: NCA's targets are reachable and InfoNCA's gaps r/α are
#   gentle; both end at the same point (NCA's optimum is one of InfoNCA's).
#
# **They differ** when something drags C:
# - **Sharp targets, overlapping tuples** (β = 0.1, α = 0.3): InfoNCA's gaps r/(αβ) are huge and
#   the mass piles onto one response per prompt (notebook 1).
# - **The optimiser** (β = 1, one tuple, tabular!): InfoNCA's gradient sums to zero over the tuple,
#   so the loss is flat along a common shift. Plain SGD never moves along it: the level stays where
#   it started. Adam rescales each coordinate separately, so its steps do not sum to zero, and the
#   level drifts, downwards here. NCA ends at the same place with both optimisers, because its loss
#   fixes the level.
# - **Shared parameters** (lowrank): displacement drags the level down (notebook 1).
#
# ## 6. NCA's optimum log(K·w̄)/β, reached where it is reachable
#
# *Paper: §4 (NCA).*
#
# NCA pulls each response to r̂\* = log(K·w̄) (w̄: the response's mean soft label over its tuples),
# i.e. to the log-ratio log(K·w̄)/β. A tabular policy can reach all of these at once only if they
# leave room: Σ μ·exp(s\*) ≤ 1 over the seen responses. At β = 0.1 the targets are 10 times larger
# than at β = 1, ask for more than all the mass, and are out of reach (that is why NCA's chosen
# log-ratio barely depended on α above). At β = 1 they fit, and NCA lands on them (dashed lines),
# in the tabular settings exactly and in the shared one almost; InfoNCA keeps the gaps but not the
# level.

# %%
beta_one = {}  # the three β = 1, α = 1 conditions, with short column titles
for key, short in (("c2", "tabular, M = 8"), ("c4", "tabular, M = 1 (Adam)"), ("c5", "lowrank, M = 8")):
    h = agree_runs[key]
    beta_one[key] = dataclasses.replace(h, setting=dataclasses.replace(h.setting, title=short))
figures.plot_ranks(beta_one)
plt.show()

# %% tags=["nbval-check-output"]
# Checked: where NCA's optimum fits (a closed form of the data), and seeds where NCA's final
# log-ratio at every reward rank is within 0.1 nat of it.
for key in ("c0", "c3", "c2", "c4", "c5"):
    h = agree_runs[key]
    reachable = h.reference["nca_target_feasible"].mean()  # fraction of prompts where Σ μ·e^{s*} <= 1
    gap = np.abs(h.final("rank_logratio")[h.loss_index("nca")] - h.reference["nca_target_rank"]).max(-1)
    reached = int((gap < 0.1).sum())
    print(
        f"{h.setting.title:<36} optimum reachable in {reachable:.2f} of prompts; reached in {reached}/6 seeds"
    )

# %% [markdown]
# ## 7. Your turn: live controls
#
# *Paper: no counterpart.*
#
# The sliders re-run a **small** bandit (3 seeds, 400 steps, about a second) and redraw the chosen
# log-ratio and the reward–KL plane with its star π\*: move α and β and watch the star slide along
# the frontier; change the family, K and M (tuples per prompt) and watch who follows it. There is
# one figure, under the sliders: it starts at the default setting (what a notebook without a
# running kernel shows) and redraws when a slider is released. Runs are cached, so returning to a
# setting is instant.


# %%
@functools.lru_cache(maxsize=256)
def small_run(alpha, beta, k, family, tuples_per_prompt):
    return presets.quick_run(alpha, beta, k, family, tuples_per_prompt)  # 3 seeds x 400 steps


def draw(alpha, beta, k, family, tuples_per_prompt):
    classroom.plot_live(small_run(alpha, beta, k, family, tuples_per_prompt), panels=("chosen", "reward_kl"))
    plt.show()


DEFAULTS = {"alpha": 1.0, "beta": 1.0, "k": 4, "family": "tabular", "tuples_per_prompt": 8}
classroom.live_controls(draw, **DEFAULTS)

# %% [markdown]
# ## Try this
#
# 1. With the defaults (β = 1, α = 1, tabular), InfoNCA and NCA agree. Find the single slider move
#    that makes InfoNCA's chosen log-ratio fall far below NCA's.
# 2. Set α = 0.03 and β = 0.01 (αβ = 3·10⁻⁴). Where is the star? Can any loss get there?
# 3. Switch the family to `lowrank` with β = 1, α = 1. Which loss stays closer to the frontier?
# 4. In section 1 the frontier was traced by varying τ = αβ. Why can no policy lie *above* it?
#
# <details><summary>Answers</summary>
#
# 1. Lower β to 0.1: the target gaps r/(αβ) become 10 times wider, InfoNCA piles the mass onto one
#    response per prompt and the other chosen responses fall (about −2 nats after 400 steps); NCA's
#    targets become unreachable but its chosen log-ratio stays positive (about +1.2).
# 2. At the far right end of the frontier: τ = αβ → 0 is the policy that puts all its mass on each
#    prompt's best response, including responses the data never scored. Only a policy that can rank
#    unseen responses (shared parameters that generalise) could get there; a tabular policy cannot.
# 3. NCA: InfoNCA's level drifts down through the shared embeddings and mass leaks to responses
#    never seen, so its reward falls back while its KL keeps growing (the curve bends backwards).
# 4. π_τ maximises E_π[r] − τ·KL(π‖μ). If some π had more reward at the same KL, it would have a
#    larger objective than π_τ, a contradiction; so the frontier is the best reward at each KL.
#
# </details>
#
# ## Recap
#
# - The target policy is **π\* ∝ μ·exp(r/(αβ))** (the paper's μ·exp(r/α) is β = 1): β·log(π\*/μ) =
#   r/α + C, π\*(α = 3, β = 0.1) equals π\*(α = 0.3, β = 1), and π\* scores at least as high as all
#   60 frontier policies π_τ (section 1's checks).
# - **Sharp targets make InfoNCA lower the chosen likelihood:** its chosen log-ratio ends below
#   −1 nat in 6/6 seeds for α ≤ 1 (β = 0.1) and for β ≤ 0.3 (α = 0.3), in 0/6 for α ≥ 3 or β = 1;
#   NCA's ends above the reference in 6/6 seeds at every α, β and K tried.
# - **K** raises NCA's ceiling log(K)/β (6.93, 13.86, 20.79 nats for K = 2, 4, 8 at β = 0.1), while
#   InfoNCA still falls in 6/6 seeds for every K.
# - **Agree or differ:** InfoNCA and NCA end within 0.25 nat in 6/6 seeds for one sharp tuple per
#   prompt, flat labels and β = 1 overlapping tuples, and in 0/6 for sharp overlapping targets,
#   Adam on one tuple at β = 1 (InfoNCA ends more than 0.5 nat lower than with SGD in 6/6 seeds,
#   NCA within 0.1 nat of itself) and a shared policy.
# - **NCA's optimum** log(K·w̄)/β is reachable in 0.00 of the prompts at β = 0.1 and in all of
#   them at β = 1, where NCA reaches it in 6/6 seeds in each of the three settings.
#
# **Next:** [04_tiny_language_model.ipynb](04_tiny_language_model.ipynb): the same losses on a real
# (tiny) language model and its own sampled answers, and the paper's Figure 2.
#
# ## References
#
# - Chen, H., He, G., Yuan, L., Cui, G., Su, H., Zhu, J. (2024). *Noise Contrastive Alignment of Language Models with Explicit Rewards.* NeurIPS 2024. [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (sections cited from [v3](https://arxiv.org/html/2402.05369v3)). Code: [github.com/thu-ml/Noise-Contrastive-Alignment](https://github.com/thu-ml/Noise-Contrastive-Alignment).
# - Rafailov, R., Sharma, A., Mitchell, E., Ermon, S., Manning, C. D., Finn, C. (2023). *Direct Preference Optimization: Your Language Model is Secretly a Reward Model.* NeurIPS 2023. [arXiv:2305.18290](https://arxiv.org/abs/2305.18290).
# - Razin, N., Malladi, S., Bhaskar, A., Chen, D., Arora, S., Hanin, B. (2024). *Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization.* [arXiv:2410.08847](https://arxiv.org/abs/2410.08847).
# - Ren, Y., Sutherland, D. J. (2024). *Learning Dynamics of LLM Finetuning.* [arXiv:2407.10490](https://arxiv.org/abs/2407.10490).
# - Gutmann, M., Hyvärinen, A. (2010). *Noise-contrastive estimation: A new estimation principle for unnormalized statistical models.* AISTATS 2010, PMLR 9:297–304. [proceedings.mlr.press/v9/gutmann10a](https://proceedings.mlr.press/v9/gutmann10a.html).
# - van den Oord, A., Li, Y., Vinyals, O. (2018). *Representation Learning with Contrastive Predictive Coding* (the InfoNCE loss). [arXiv:1807.03748](https://arxiv.org/abs/1807.03748).
