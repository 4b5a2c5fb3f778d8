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
# # 5. Graduating to scale
#
# **Goal.** Notebook 4 wrote its training loop by hand, in a dozen lines around one `ncakit.losses`
# call. The paper's runs need the same loop with what a 7B model needs around it: several GPUs,
# 4-bit weights with LoRA adapters, mixed precision, gradient accumulation, a cached reference,
# checkpoints that survive a pre-emption, logs. That loop is `scale/train.py`. In this notebook we
# **run it from the notebook** on 2 CPU cores with the `tiny-cpu` recipe (NCA, K = 4), **read its
# logs** (`metrics.jsonl`, `run.json`) and **plot its dynamics** with `ncakit.scale.runlog`, the paper's
# Figure 2 again. Then we read the **Mistral-7B recipes**: what every key means, and which of them
# are the authors' settings; and the **launch matrix**: the memory arithmetic that decides whether
# a run needs 1 GPU with QLoRA or N GPUs with FSDP2, and the two lines that change between them.
#
# **Objectives.** After this notebook you can
# - launch `scale/train.py` with a recipe and an accelerate config, and override any key with
#   `--key value`;
# - read a run's `run.json` and `metrics.jsonl` (TRL metric names) and plot its Figure 2 with
#   `ncakit.scale.runlog`;
# - check a Mistral-7B recipe key by key against the authors' released setup;
# - estimate the memory of full fine-tuning and of QLoRA, and pick a launch configuration that keeps
#   the global batch.
#
# **Prerequisites.** [Notebook 4](04_tiny_language_model.ipynb) (the training loop and the data
# pipeline that `scale/train.py` wraps; notebooks 1–3 for the losses). A terminal and YAML files;
# what a GPU, mixed precision and gradient accumulation are (no GPU is needed to run this notebook).
#
# **Paper.** Chen et al., [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (v3,
# [HTML](https://arxiv.org/html/2402.05369v3)): §5 (Experiments; its abstract names Mistral-7B and
# Mistral-8×7B) and **Figure 2** (the likelihood trends during fine-tuning; numbered so in arXiv v1
# and the authors' README). The recipe values are those of the authors' released code
# ([thu-ml/Noise-Contrastive-Alignment](https://github.com/thu-ml/Noise-Contrastive-Alignment), as
# summarised in MATH.md).
#
# **Time to run.** About 29 seconds on the project's 2-core CI machine (measured by
# `tutorials/build.py`), most of it the training run; a slower laptop can take a few times longer.
#
# The one sentence to keep from notebook 4 is still true here: the training step is
# `get_loss(cfg.loss)(batch_logps(model, batch), ref_logps, rewards, beta=cfg.beta, mask=mask, ...)`,
# the same call, from the bandit to 7B.

# %%
# %matplotlib inline
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

import ncakit
from ncakit.registry import REFERENCE_COLOR, loss_color  # one colour per loss, project-wide
from ncakit.scale.cli import parse_config
from ncakit.scale.config import TrainConfig
from ncakit.scale.runlog import plot_run_dynamics, read_run
from ncakit.utils import notebook_style

ncakit.seed_everything(0)  # nothing here draws random numbers; each training run seeds itself (seed: 42)

notebook_style()  # readable fonts, a light grid, wide figures

# The repository root (the folder holding scale/), wherever Jupyter or nbval started us.
ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "scale" / "train.py").is_file())
RECIPES, LAUNCHERS = ROOT / "scale" / "recipes", ROOT / "scale" / "accelerate"
OUT = ROOT / "out" / "tutorial-05"  # run outputs go to out/ (git-ignored), never into tutorials/
shutil.rmtree(OUT, ignore_errors=True)  # a fresh run every time: same work, same numbers

# %% [markdown]
# ## 1. Where and what: a launcher config and a recipe
#
# *Paper: no counterpart (software). The split is the alignment-handbook's (Tunstall et al.).*
#
# A run is described by two files, kept apart as in Hugging Face's alignment-handbook:
#
# - an **accelerate config** (`scale/accelerate/*.yaml`) says **where** it runs: CPU or GPU, how
#   many processes, mixed precision, FSDP2 or DeepSpeed ZeRO-3;
# - a **recipe** (`scale/recipes/*.yaml`) says **what** it trains: model, data, loss, β, optimiser,
#   evaluation. Its keys are the fields of one dataclass, `ncakit.scale.config.TrainConfig`.
#
# Here are the two files of the CPU run.

# %%
for path in (LAUNCHERS / "cpu.yaml", RECIPES / "tiny-cpu.yaml"):
    print(f"---------- {path.relative_to(ROOT)}")
    print(path.read_text())

# %% [markdown]
# Any key can be overridden on the command line (`--key value`): defaults < recipe < command line.
# `parse_config` is what `scale/train.py` runs first; it checks every key and value before any
# model is loaded, so a typo costs a second, not a GPU hour:

# %% tags=["nbval-check-output"]
# Checked: the recipe read with one override, and what a typo and a bad value say.
cfg = parse_config(["--config", str(RECIPES / "tiny-cpu.yaml"), "--beta", "0.05"])
print(f"loss = {cfg.loss}, beta = {cfg.beta} (overridden), loss_kwargs = {cfg.loss_kwargs}, K = {cfg.tiny_k}")
for argv in (["--lerning_rate", "1e-3"], ["--reference", "cached"]):
    try:
        parse_config(["--config", str(RECIPES / "tiny-cpu.yaml"), *argv])
    except (ValueError, TypeError) as err:
        print(f"{' '.join(argv):<22} -> {type(err).__name__}: {err}")

# %% [markdown]
# ## 2. Run `scale/train.py` from the notebook
#
# *Paper: the NCA training of §5 with K = 4 rewards, in miniature (a tiny model instead of
# Mistral-7B).*
#
# The same command you would type in a terminal (or `make scale-demo`). We run it as a
# subprocess, exactly as on a GPU machine, and write its outputs under `out/tutorial-05/`: it
# builds the tiny kit (tokenizer, SFT-warmed model μ, 2048 training and 64 held-out prompts with
# K = 4 scored answers each), caches log μ of every answer, and trains for one epoch, 256 optimizer
# steps of 8 prompts.

# %%
ENV = os.environ | {
    "TOKENIZERS_PARALLELISM": "false",  # the tokenizer library would otherwise warn about forking
    "HF_HUB_OFFLINE": "1",  # nothing is downloaded: the tiny kit is built locally
    "HF_DATASETS_OFFLINE": "1",
    "PYTHONHASHSEED": "0",
}


def launch(*args, name):
    """``accelerate launch --config_file scale/accelerate/cpu.yaml scale/train.py ARGS``, run from the
    repository root; the log goes to ``out/tutorial-05/<name>.log``. Returns the run folder."""
    run_dir = OUT / name
    command = ["accelerate", "launch", "--config_file", "scale/accelerate/cpu.yaml", "scale/train.py"]
    command += [*args, "--output_dir", str(run_dir.relative_to(ROOT)), "--progress", "false"]
    print("$", " ".join(command))
    # `python -m accelerate.commands.launch` is `accelerate launch` from THIS notebook's environment,
    # whatever is first on the PATH of the Jupyter server.
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT / f"{name}.log", "w") as log:
        done = subprocess.run(
            [sys.executable, "-m", "accelerate.commands.launch", *command[2:]],
            cwd=ROOT,
            env=ENV,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    if done.returncode != 0:
        tail = (OUT / f"{name}.log").read_text().splitlines()[-30:]
        raise RuntimeError(f"scale/train.py failed (exit {done.returncode}):\n" + "\n".join(tail))
    summary = json.loads((run_dir / "summary.json").read_text())
    print(f"   -> {summary['global_step']} optimizer steps in {summary['wall_seconds']:.0f} s\n")
    return run_dir


nca_dir = launch("--config", "scale/recipes/tiny-cpu.yaml", name="nca")

# %% [markdown]
# ## 3. What a run leaves behind
#
# *Paper: no counterpart; the metric names are TRL's.*
#
# ```
# out/tutorial-05/nca/
#   run.json          the resolved config, data statistics (rows dropped per reason), K, devices, versions
#   metrics.jsonl     one JSON record per log: train windows, and eval records with eval_ names
#   summary.json      wall time, first/last loss, the last eval record
#   tinylm-kit/       the tiny tokenizer, SFT model and K = 4 data (built once, reused)
#   ref_cache/        log μ(y|x) of every answer, computed once before training
#   checkpoint-N/     every save_steps: save_pretrained + optimizer state (--resume_from latest)
#   final/            save_pretrained: the trained model (or LoRA adapter) and tokenizer
# ```
#
# `ncakit.scale.runlog.read_run` parses a run folder. The metric names are TRL's (`rewards/chosen`,
# `rewards/margins`, ...), so a TRL user reads these logs without a glossary; K > 2 runs add
# `rewards/rank_1` … `rewards/rank_K`, the curves of Figure 2.

# %%
run = read_run(nca_dir)
info = json.loads((nca_dir / "run.json").read_text())
data = info["data"]["train"]
print(
    f"{data['rows_in']} training prompts read, {data['rows_kept']} kept, dropped: {data['dropped'] or 'none'}"
)
print(f"responses per prompt: {data['k_counts']};  trainable parameters: {info['trainable_params']:,}")
print(
    f"reference log-probs: computed in {info['reference']['train']['seconds']:.1f} s, cached for the next run"
)
print("\nthe first two records of metrics.jsonl (an eval record at step 0, then a training window):")
for line in (nca_dir / "metrics.jsonl").read_text().splitlines()[:2]:
    record = json.loads(line)
    print(
        " ", {key: round(v, 4) if isinstance(v, float) else v for key, v in list(record.items())[:9]}, "..."
    )

print(
    f"\n{'step':>5} {'eval_loss':>10} {'rank 1':>8} {'rank 2':>8} {'rank 3':>8} {'rank 4':>8} {'accuracy':>9}"
)
for rec in run.eval:
    ranks = " ".join(f"{rec[f'eval_rewards/rank_{i}']:>+8.3f}" for i in range(1, 5))
    print(f"{rec['step']:>5} {rec['eval_loss']:>10.4f} {ranks} {rec['eval_rewards/accuracies']:>9.2f}")

# %% tags=["nbval-check-output"]
# Checked: the bookkeeping of the run, and its step-0 anchor (policy = the cached reference).
print(f"{run.label}: optimizer steps {info['max_steps']} = 2048 prompts / 8 per step")
print(
    f"global batch = {info['global_batch_prompts']} prompts = 8 per device x 1 accumulation step x 1 process"
)
print(f"eval records at steps {[r['step'] for r in run.eval]}")
first, last = run.eval[0], run.eval[-1]
print(
    f"step 0: eval_loss {first['eval_loss']:.3f} = 2 ln 2 = {2 * math.log(2):.3f}; "
    f"largest |r̂| {max(abs(first[f'eval_rewards/rank_{i}']) for i in range(1, 5)):.3f}"
)
ranks = [last[f"eval_rewards/rank_{i}"] for i in range(1, 5)]
print("the four held-out ranks end in reward order:", bool(np.all(np.diff(ranks) < 0)))
print("the held-out margin ends positive:", last["eval_rewards/margins"] > 0)

# %% [markdown]
# ## 4. The dynamics: Figure 2 from the logs
#
# *Paper: Figure 2 (numbered so in arXiv v1 and the authors' README), and §4 for why NCA holds the
# chosen likelihood.*
#
# `plot_run_dynamics` (also `python scale/plot_dynamics.py RUN_DIR ...`) draws one or several runs:
# the implicit reward of every reward rank (or chosen / rejected for pairs) over optimizer steps,
# bold for the held-out prompts and thin for the training windows, and the margin. The same
# function draws a 7B run's logs.

# %%
fig = plot_run_dynamics([run], title="tiny-cpu recipe: NCA, K = 4, on 2 CPU cores")
legend = fig.axes[0].get_legend()  # moved below the axes, in a projector-sized font
fig.axes[0].legend(
    handles=legend.legend_handles, fontsize=12, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3
)
plt.show()

# %% [markdown]
# On the 64 held-out prompts NCA keeps the best answers near the reference, though not above it:
# r̂ = −0.160 at the end (a log-likelihood 1.6 nats below μ's at β = 0.1; it dipped to −0.247 at
# step 64), and it spreads the four ranks in reward order; the margin grows steadily. The recipe's **pairwise
# twin** is the same command with three keys overridden: `--loss dpo`, `--loss_kwargs {}` (DPO has
# no α) and `--pairwise_from_k best_vs_random` (the best answer vs a random worse one, as in
# notebook 4). Run side by side (`scale/README.md`; try it below, it takes about 10 s more), the
# two give the picture of notebook 4 from the real script: DPO drags the best answers' held-out
# likelihood far below the reference (r̂ ≈ −1.2, measured in "Try this" (1) below).
#
# ![NCA (K = 4) vs its DPO twin on the tiny-cpu recipe](../scale/figures/tiny-cpu-nca-vs-dpo.png)
#
# ## 5. The 7B recipes, key by key
#
# *Paper: §5 (Experiments). The values are the authors' released code's (MATH.md), not read from
# the paper's text; the base model is Zephyr's SFT Mistral-7B (Tunstall et al. 2023), the data
# UltraFeedback (Cui et al. 2023).*
#
# The four `mistral-7b-*-qlora` recipes are the authors' released setup (MATH.md, "Facts about the
# authors' released setup"). The NCA one, in full:

# %%
print((RECIPES / "mistral-7b-nca-k4-qlora.yaml").read_text())

# %% [markdown]
# What changes from the CPU recipe, with the meaning of each key (the help text of its
# `TrainConfig` field, which `python scale/train.py --help` prints too):

# %%
recipes = {path.stem: parse_config(["--config", str(path)]) for path in sorted(RECIPES.glob("*.yaml"))}
tiny, nca7b = recipes["tiny-cpu"], recipes["mistral-7b-nca-k4-qlora"]
helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(TrainConfig)}
skip = {"output_dir", "ref_cache_dir", "eval_steps", "save_steps", "logging_steps", "eval_on_start"}
print(f"{'key':<28} {'tiny-cpu':<18} {'mistral-7b-nca-k4-qlora':<36} meaning")
for key in helps:
    a, b = getattr(tiny, key), getattr(nca7b, key)
    if a != b and key not in skip and not key.startswith("tiny_"):
        shown = str(b) if len(str(b)) < 36 else str(b)[:32] + "...]"
        print(f"{key:<28} {str(a):<18} {shown:<36} {helps[key][:70]}")

# %% [markdown]
# The four QLoRA recipes share everything but the loss and the data: K = 4 reward data
# (`ChenDRAG/ultrafeedback_reward`, GPT-4 scores 1–10) for NCA and InfoNCA, the binarized pairs for
# DPO and pairwise NCA. `loss_kwargs: {alpha: 1e-4, first_bonus: 0.01}` reproduces the authors'
# code: scores divided by α = 10⁻⁴ make the labels one-hot on the best answer, and the +0.01 on the
# first answer breaks ties.

# %%
qlora = {name: c for name, c in recipes.items() if name.endswith("-qlora")}
for name, c in qlora.items():
    print(f"{name:<30} loss {c.loss:<9} data {c.dataset_name:<40} loss_kwargs {c.loss_kwargs}")

# %% tags=["nbval-check-output"]
# Checked: every QLoRA recipe carries the authors' setup, key by key (MATH.md, "Facts about the
# authors' released setup"). A recipe edited away from it prints False here.
authors = {
    "model_name_or_path": "HuggingFaceH4/mistral-7b-sft-beta",
    "load_in_4bit": True,
    "use_peft": True,
    "lora_r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "torch_dtype": "bfloat16",
    "gradient_checkpointing": True,
    "beta": 0.01,
    "learning_rate": 5e-6,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "num_train_epochs": 1,
    "max_length": 1024,
    "max_prompt_length": 512,
    "seed": 42,
}
for key, value in authors.items():
    same = all(getattr(c, key) == value for c in qlora.values())
    print(f"{key:<24} = {str(value)[:40]:<42} all 4 recipes: {same}")
print(
    "global batch on 1 GPU = per_device_train_batch_size x gradient_accumulation_steps =",
    {c.per_device_train_batch_size * c.gradient_accumulation_steps for c in qlora.values()},
)

# %% [markdown]
# ## 6. The launch matrix: memory arithmetic
#
# *Paper: no counterpart. LoRA is Hu et al. (2021), QLoRA Dettmers et al. (2023), sharding ZeRO
# (Rajbhandari et al. 2020) and FSDP (Zhao et al. 2023).*
#
# Will it fit? Count bytes. Mistral-7B has 32 layers, hidden size 4096, MLP size 14336, a
# 32000-token vocabulary and grouped-query attention (8 key/value heads of 128). A training
# "sequence" is one prompt + one answer (≤ 1024 tokens) and a prompt brings K = 4 of them.
#
# - **Full fine-tuning** keeps 16 bytes per parameter: fp32 weights (4) + fp32 gradients (4) + the
#   two Adam moments (8). FSDP2 / ZeRO-3 shard all of it over the N GPUs.
# - **QLoRA** stores the non-embedding weights in 4 bits (0.5 byte per parameter, plus small
#   quantisation constants), keeps the embeddings and LM head in fp32, and trains only the LoRA
#   adapters: r·(d_in + d_out) parameters per adapted matrix, at 16 bytes each.
# - **Activations** with gradient checkpointing: each layer's input, tokens × hidden × 2 bytes
#   (bf16) × layers, plus one layer's internals recomputed in the backward pass.
# - **The LM head** done naively makes fp32 logits tokens × vocabulary; ncakit's `LogprobHead`
#   projects only the answer tokens, a 64 MiB chunk at a time, so this term disappears.

# %%
GB = 1e9
layers, hidden, mlp, vocab, kv_dim = 32, 4096, 14336, 32000, 8 * 128
attn = 2 * hidden * hidden + 2 * hidden * kv_dim  # q, o: 4096 x 4096; k, v: 4096 x 1024
per_layer = attn + 3 * hidden * mlp + 2 * hidden  # + gate, up, down + two RMSNorms
embeddings = 2 * vocab * hidden  # input embeddings + LM head (untied)
n_params = layers * per_layer + embeddings + hidden
lora_per_layer = 16 * sum(
    d_in + d_out
    for d_in, d_out in [
        (hidden, hidden),  # q_proj
        (hidden, kv_dim),  # k_proj
        (hidden, kv_dim),  # v_proj
        (hidden, hidden),  # o_proj
        (hidden, mlp),  # gate_proj
        (hidden, mlp),  # up_proj
        (mlp, hidden),  # down_proj
    ]
)


def tokens(prompts_per_device, k=4, length=1024):
    """Tokens in one micro-batch: every prompt brings K sequences of up to ``length`` tokens."""
    return prompts_per_device * k * length


terms = {
    "parameters (B)": n_params / 1e9,
    "full fine-tuning states, 16 B/param (GB)": 16 * n_params / GB,
    "  ... sharded over 8 GPUs (GB)": 16 * n_params / 8 / GB,
    "  ... sharded over 16 GPUs (GB)": 16 * n_params / 16 / GB,
    "QLoRA: NF4 non-embedding weights (GB)": 0.5 * layers * per_layer / GB,
    # double quantisation: one 8-bit scale per 64 weights, one fp32 scale per 256 of those
    "QLoRA: quantisation constants (GB)": layers * per_layer * (1 / 64 + 4 / (64 * 256)) / GB,
    "QLoRA: fp32 embeddings + head (GB)": 4 * embeddings / GB,
    "LoRA r = 16 parameters (M)": layers * lora_per_layer / 1e6,
    "LoRA states at 16 B/param (GB)": 16 * layers * lora_per_layer / GB,
    "checkpointed activations, 2 prompts x 4 x 1024 (GB)": tokens(2) * hidden * 2 * layers / GB,
    "checkpointed activations, 4 prompts x 4 x 1024 (GB)": tokens(4) * hidden * 2 * layers / GB,
    "naive fp32 logits, 2 prompts x 4 x 1024 (GB)": tokens(2) * vocab * 4 / GB,
}

# %% tags=["nbval-check-output"]
# Checked: closed-form arithmetic (the numbers of scale/README.md's launch matrix).
for name, value in terms.items():
    print(f"{name:<54} {value:8.2f}")

# %% [markdown]
# Put together per GPU (the "one layer recomputed" terms are `scale/README.md`'s estimates: about
# 2.5 GB for 8192 tokens, 4 GB for 16384), against the memory of common GPUs. These are estimates
# from arithmetic: the project has not yet measured them on a GPU.

# %%
ONE_LAYER = {2: 2.5, 4: 4.0}  # GB, one layer's internals recomputed, by prompts per micro-batch (README)
GATHERED = 1.5  # GB, the unsharded bf16 layers FSDP2 holds while computing them (README)
qlora_states = sum(
    terms[key]
    for key in (
        "QLoRA: NF4 non-embedding weights (GB)",
        "QLoRA: quantisation constants (GB)",
        "QLoRA: fp32 embeddings + head (GB)",
        "LoRA states at 16 B/param (GB)",
    )
)
acts2 = terms["checkpointed activations, 2 prompts x 4 x 1024 (GB)"] + ONE_LAYER[2]
acts4 = terms["checkpointed activations, 4 prompts x 4 x 1024 (GB)"] + ONE_LAYER[4]
setups = {  # per GPU, GB: (model states, activations)
    "1 GPU, QLoRA\n(2 prompts x GA 16)": (qlora_states, acts2),
    "8 GPUs, FSDP2 full\n(4 prompts x GA 4)": (terms["  ... sharded over 8 GPUs (GB)"] + GATHERED, acts4),
    "16 GPUs, FSDP2 full\n(4 prompts x GA 2)": (terms["  ... sharded over 16 GPUs (GB)"] + GATHERED, acts4),
    "1 GPU, full fine-tuning\n(no sharding)": (terms["full fine-tuning states, 16 B/param (GB)"], acts2),
}
fig, ax = plt.subplots(figsize=(12, 4.8))
names = list(setups)
states = np.array([s for s, _ in setups.values()])
acts = np.array([a for _, a in setups.values()])
ax.bar(names, states, color=loss_color("nca"), label="model states (weights, grads, Adam)")
ax.bar(names, acts, bottom=states, color=loss_color("nca_pair"), label="activations")
for x, total in enumerate(states + acts):
    ax.text(x, total + 2, f"≈ {total:.0f} GB", ha="center", fontsize=13)
for capacity in (24, 40, 80):
    ax.axhline(capacity, color=REFERENCE_COLOR, ls=":", lw=2)
    ax.text(3.5, capacity + 1.5, f"{capacity} GB GPU", ha="left", color=REFERENCE_COLOR, fontsize=12)
ax.set(
    ylabel="GB per GPU",
    ylim=(0, 135),
    xlim=(-0.5, 4.3),  # room right of the last bar for the GPU labels
    title="Mistral-7B with NCA, K = 4, 1024 tokens: memory per GPU (estimates)",
)
ax.legend(loc="upper left")
fig.tight_layout()
plt.show()

# %% [markdown]
# These totals are the sums of the terms above; `scale/README.md`'s launch matrix quotes ≈ 11,
# ≈ 25 and ≈ 18 GB for the first three, about 1 GB more. Either way: QLoRA fits a 24 GB GPU, full
# fine-tuning needs its 116 GB of states sharded over 8 GPUs or more, and no single GPU holds it.

# %% [markdown]
# ## 7. From 1 GPU with QLoRA to N GPUs with FSDP2
#
# *Paper: no counterpart (the authors' README: 8 GPUs, global batch 32).*
#
# Moving between rows of the launch matrix changes the **launcher config**, and keeps the
# **global batch** (prompts per optimizer step) by trading gradient accumulation for processes:
#
# global batch = `per_device_train_batch_size` × `gradient_accumulation_steps` × processes.
#
# ```bash
# # 1 GPU, QLoRA (the authors' setup): 2 prompts x GA 16 = 32
# accelerate launch --config_file scale/accelerate/single_gpu.yaml scale/train.py \
#     --config scale/recipes/mistral-7b-nca-k4-qlora.yaml
# # 8 GPUs, the same QLoRA run data-parallel (DDP): 2 prompts x GA 2 x 8 = 32
# accelerate launch --config_file scale/accelerate/ddp.yaml scale/train.py \
#     --config scale/recipes/mistral-7b-nca-k4-qlora.yaml --gradient_accumulation_steps 2
# # 8 GPUs, full fine-tuning sharded with FSDP2: 4 prompts x GA 4 x 8 = 128 (Zephyr-style)
# accelerate launch --config_file scale/accelerate/fsdp2.yaml scale/train.py \
#     --config scale/recipes/mistral-7b-nca-full-fsdp2.yaml
# # 2 nodes x 8 GPUs: the same, with GA 2, on every node (R = 0, 1)
# accelerate launch --config_file scale/accelerate/fsdp2.yaml --num_machines 2 --machine_rank R \
#     --main_process_ip IP --num_processes 16 scale/train.py \
#     --config scale/recipes/mistral-7b-nca-full-fsdp2.yaml --gradient_accumulation_steps 2
# ```
#
# What the FSDP2 launcher sets, and the recipe's side of the switch (full weights in fp32 master
# copies, 10× smaller learning rate for full fine-tuning):

# %%
launcher = {}
for line in (LAUNCHERS / "fsdp2.yaml").read_text().splitlines():
    if line.strip() and not line.lstrip().startswith("#"):
        key, _, value = line.partition(":")
        launcher[key.strip()] = value.strip()
for key in (
    "distributed_type",
    "num_processes",
    "mixed_precision",
    "fsdp_version",
    "fsdp_auto_wrap_policy",
    "fsdp_reshard_after_forward",
):
    print(f"fsdp2.yaml  {key:<28} {launcher[key]}")
full = recipes["mistral-7b-nca-full-fsdp2"]
for key in ("use_peft", "load_in_4bit", "torch_dtype", "learning_rate", "per_device_train_batch_size"):
    print(f"recipe      {key:<28} {str(getattr(nca7b, key)):<10} -> {getattr(full, key)}")


# %% tags=["nbval-check-output"]
# Checked: the global batch of each launch (the recipes' numbers, with the command-line GA above).
def global_batch(recipe, processes, accumulation=None):
    ga = accumulation if accumulation is not None else recipe.gradient_accumulation_steps
    return recipe.per_device_train_batch_size * ga * processes


print("1 GPU, QLoRA            :", global_batch(nca7b, 1))
print("8 GPUs, QLoRA, DDP, GA 2:", global_batch(nca7b, 8, accumulation=2))
print("8 GPUs, FSDP2 full      :", global_batch(full, 8))
print("16 GPUs, FSDP2 full GA 2:", global_batch(full, 16, accumulation=2))

# %% [markdown]
# Two things change in kind when the model is sharded, and `scale/train.py` handles both:
#
# - **The reference.** The reference log-probs (`reference: precompute`, cached on disk) are
#   computed once, after `accelerator.prepare`, by the sharded model itself: FSDP2 or the ZeRO-3
#   engine gathers each layer as in training, and the forward has the policy's own numerics, so at
#   step 0 every implicit reward is exactly 0, in bf16 too.
# - **The LM head.** A sharded head's weight is only complete inside the module's own forward, so
#   ncakit swaps the head for a `LogprobHead` that returns per-token log-probs from *inside* the
#   model's forward: FSDP2 gathers the weight as for any forward, and the `[tokens, vocabulary]`
#   logits never exist.
#
# **Honest status** (`scale/README.md`, "What was tested, and where"): the CPU path you ran above
# is tested end to end (resume after SIGTERM, gradient-accumulation and 2-process invariance), and
# so are DDP, FSDP2 and ZeRO-3 with 2 CPU processes over gloo. The
# GPU paths (bf16 on CUDA, QLoRA with bitsandbytes, FSDP2 and ZeRO-3 on GPUs, multi-node) were written from
# the accelerate / peft / transformers / TRL code and documentation and have **not** been run yet;
# neither have the memory estimates above been measured. `pytest -m gpu tests/test_train.py` is
# the first thing to run on a GPU machine.
#
# > **Try this.** (1) Run the pairwise twins yourself, reusing the kit so they start from the same
# > μ and data: `launch("--config", "scale/recipes/tiny-cpu.yaml", "--loss", "dpo", "--loss_kwargs",
# > "{}", "--pairwise_from_k", "best_vs_random", "--tiny_kit_dir", "out/tutorial-05/nca/tinylm-kit",
# > name="dpo")`, then the same with `"nca_pair"`, and draw all three with
# > `plot_run_dynamics([nca_dir, OUT / "dpo", OUT / "nca_pair"])`. Where do the chosen rewards end?
# > (2) You have 4 GPUs of 80 GB. Can you fine-tune all of Mistral-7B with FSDP2, and with which
# > gradient accumulation do you keep the FSDP2 recipe's global batch of 128?
# > (3) Re-run the NCA recipe with `--loss_kwargs "{alpha: 1.0e-4}"` (the 7B recipes' α, and the
# > same kit). What happens to the labels and to the four ranks?
#
# <details><summary>Answer</summary>
#
# (1) We measured (held-out, step 256): DPO's chosen r̂ −1.21 and rejected −1.31 (margin 0.10,
# 52% of pairs ranked right: barely better than chance); pairwise NCA's chosen −0.11 and rejected
# −0.26 (margin 0.15, 64% right); NCA with K = 4 chosen −0.16. Same μ, same prompts, same optimiser:
# only the loss differs, and only DPO loses the likelihood of the best answers.
#
# (2) Yes. States: 116 GB / 4 = 29 GB per GPU; add ≈ 1.5 GB of gathered bf16 layers and ≈ 8 GB of
# activations for 4 prompts per micro-batch: ≈ 39 GB, comfortable on 80 GB (and too tight for
# 40 GB). Global batch 128 = 4 prompts × GA × 4 GPUs, so `--gradient_accumulation_steps 8`:
# `global_batch(full, 4, accumulation=8)` gives 128.
#
# (3) The rewards are in [0, 1], so r/10⁻⁴ makes the labels one-hot on the best answer (the label
# entropy, `eval_labels/entropy`, falls from 0.59 to 0.07 nats; what is left comes from ties for
# the best). NCA then has a target only for the best answer, log K = 1.39, and pushes every other
# answer down without saying by how much: we measured held-out ranks −0.17 / −0.41 / −0.40 / −0.61,
# the middle two no longer in order, against −0.16 / −0.27 / −0.37 / −0.48 with α = 0.1. Hard
# labels throw away the reward *gaps*; that is what soft labels (a larger α) keep.
#
# </details>

# %% [markdown]
# ## Recap
#
# - `scale/train.py` is one accelerate loop around the same `ncakit.losses` call as every notebook:
#   the tiny-cpu recipe ran 256 optimizer steps (2048 prompts / 8 per step), `--beta 0.05`
#   overrode a key, and misspelt or ill-typed keys failed before any model loaded.
# - Its logs (`run.json`, `metrics.jsonl` with TRL names and `rewards/rank_k`) give Figure 2: the
#   held-out eval loss starts at 1.386 = 2 ln 2 and ends at 1.3685; the four held-out ranks end in
#   reward order (r̂ −0.160 / −0.272 / −0.367 / −0.479, accuracy 0.61). NCA keeps the best answers
#   near the reference, 1.6 nats below it at β = 0.1, not above it.
# - The four Mistral-7B QLoRA recipes carry the authors' setup key by key (β = 0.01, lr 5e-6,
#   LoRA r = 16, max length 1024, ...: all True in section 5's check).
# - Memory is arithmetic: 7.24 B parameters, 115.87 GB of full fine-tuning states (14.48 GB per GPU
#   sharded over 8), against 3.49 GB of NF4 weights + 1.05 GB of fp32 embeddings + 0.67 GB of LoRA
#   states for QLoRA; the global batch is 32 on 1 GPU (2 × GA 16) and on 8 GPUs (GA 2), 128 for the
#   FSDP2 full fine-tuning recipe.
#
# **Next:** [06_annotated_losses.ipynb](06_annotated_losses.ipynb): the losses' source, line by line.
#
# ## References
#
# - Chen, H., He, G., Yuan, L., Cui, G., Su, H., Zhu, J. (2024). *Noise Contrastive Alignment of Language Models with Explicit Rewards.* NeurIPS 2024. [arXiv:2402.05369](https://arxiv.org/abs/2402.05369) (sections cited from [v3](https://arxiv.org/html/2402.05369v3)). Code: [github.com/thu-ml/Noise-Contrastive-Alignment](https://github.com/thu-ml/Noise-Contrastive-Alignment).
# - Rafailov, R., Sharma, A., Mitchell, E., Ermon, S., Manning, C. D., Finn, C. (2023). *Direct Preference Optimization: Your Language Model is Secretly a Reward Model.* NeurIPS 2023. [arXiv:2305.18290](https://arxiv.org/abs/2305.18290).
# - Razin, N., Malladi, S., Bhaskar, A., Chen, D., Arora, S., Hanin, B. (2024). *Unintentional Unalignment: Likelihood Displacement in Direct Preference Optimization.* [arXiv:2410.08847](https://arxiv.org/abs/2410.08847).
# - Ren, Y., Sutherland, D. J. (2024). *Learning Dynamics of LLM Finetuning.* [arXiv:2407.10490](https://arxiv.org/abs/2407.10490).
# - Gutmann, M., Hyvärinen, A. (2010). *Noise-contrastive estimation: A new estimation principle for unnormalized statistical models.* AISTATS 2010, PMLR 9:297–304. [proceedings.mlr.press/v9/gutmann10a](https://proceedings.mlr.press/v9/gutmann10a.html).
# - van den Oord, A., Li, Y., Vinyals, O. (2018). *Representation Learning with Contrastive Predictive Coding* (the InfoNCE loss). [arXiv:1807.03748](https://arxiv.org/abs/1807.03748).
# - Cui, G., Yuan, L., Ding, N., et al. (2023). *UltraFeedback: Boosting Language Models with High-quality Feedback* (the UltraFeedback dataset). [arXiv:2310.01377](https://arxiv.org/abs/2310.01377).
# - Tunstall, L., Beeching, E., Lambert, N., et al. (2023). *Zephyr: Direct Distillation of LM Alignment* (binarized UltraFeedback, the Mistral-7B SFT model). [arXiv:2310.16944](https://arxiv.org/abs/2310.16944).
# - Jiang, A. Q., Sablayrolles, A., Mensch, A., et al. (2023). *Mistral 7B.* [arXiv:2310.06825](https://arxiv.org/abs/2310.06825).
# - Hu, E. J., Shen, Y., Wallis, P., et al. (2021). *LoRA: Low-Rank Adaptation of Large Language Models.* [arXiv:2106.09685](https://arxiv.org/abs/2106.09685).
# - Dettmers, T., Pagnoni, A., Holtzman, A., Zettlemoyer, L. (2023). *QLoRA: Efficient Finetuning of Quantized LLMs.* [arXiv:2305.14314](https://arxiv.org/abs/2305.14314).
# - Rajbhandari, S., Rasley, J., Ruwase, O., He, Y. (2020). *ZeRO: Memory Optimizations Toward Training Trillion Parameter Models* (DeepSpeed ZeRO). [arXiv:1910.02054](https://arxiv.org/abs/1910.02054).
# - Zhao, Y., Gu, A., Varma, R., et al. (2023). *PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel.* [arXiv:2304.11277](https://arxiv.org/abs/2304.11277).
# - von Werra, L., Belkada, Y., Tunstall, L., et al. *TRL: Transformer Reinforcement Learning* (software; its DPOTrainer has `loss_type="nca_pair"`). [github.com/huggingface/trl](https://github.com/huggingface/trl).
# - Tunstall, L., Beeching, E., Lambert, N., et al. *The Alignment Handbook* (software; recipes kept apart from launcher configs; the authors' code builds on it). [github.com/huggingface/alignment-handbook](https://github.com/huggingface/alignment-handbook).
# - Software used by `scale/train.py`: Hugging Face's [accelerate](https://github.com/huggingface/accelerate), [peft](https://github.com/huggingface/peft), [transformers](https://github.com/huggingface/transformers); [bitsandbytes](https://github.com/bitsandbytes-foundation/bitsandbytes) (4-bit weights); [DeepSpeed](https://github.com/deepspeedai/DeepSpeed).
# - OpenAI (2023). *GPT-4 Technical Report* (the scorer of UltraFeedback). [arXiv:2303.08774](https://arxiv.org/abs/2303.08774).
