"""A tiny offline language-model kit: tokenizer, model, corpus and reward, all built locally.

Tests, tutorials and the CPU recipe of ``scale/train.py`` need a real Hugging Face causal LM and
tokenizer, real K-response data and a reward, without downloading anything. This module builds
all four in seconds:

- :func:`train_tokenizer` -- a byte-level BPE tokenizer trained with ``tokenizers`` on local
  texts, returned as a ``transformers`` fast tokenizer with BOS/EOS/PAD and a small chat template
  (so it goes through exactly the code path a real chat model takes in :mod:`ncakit.scale.data`);
- :func:`tiny_llama` -- a Llama-style ``LlamaForCausalLM`` from ``LlamaConfig`` (hidden 32-64,
  2 layers), seeded, fp32;
- :func:`synthetic_corpus` / :func:`reward` -- string tasks ("reverse: dacb" -> "bcad") with a
  programmatic, GRADED reward (1 - normalised edit distance, in [0, 1]) so that K responses
  sampled from a lightly trained tiny LM get different rewards;
- :func:`synthetic_k_dataset` -- canonical K-response rows (see :mod:`ncakit.scale.data`) built
  offline by corrupting the correct answer to varying degrees, so tests and recipes have reward
  data without sampling (sampling from a model is the scale track's job);
- :func:`sft_warmup` -- a short supervised warm-up on the correct answers, so the tiny model is a
  meaningful reference policy μ (it puts real probability on good answers) before preference
  training starts;
- :func:`build_tiny_kit` -- all of the above written to a folder (``tokenizer/``, ``model/``,
  ``train.jsonl``, ``test.jsonl``) that ``from_pretrained`` and ``load_k_dataset`` read back;
  :func:`ensure_tiny_kit` builds it once and reloads it while the settings match (the
  ``tiny-cpu`` recipe of ``scale/train.py`` uses it).

Example::

    from ncakit.scale.tinylm import build_tiny_kit
    kit = build_tiny_kit("out/tiny-kit", n_train=256, n_test=32, seed=0)
    kit.tokenizer, kit.model, kit.train_path   # ready for ncakit.scale.data.prepare_k_dataset(...)

This module imports ``transformers`` and ``tokenizers`` (scale extras); ``import ncakit`` does not
import it.
"""

from __future__ import annotations

import json
import math
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = [
    "SPECIAL_TOKENS",
    "CHAT_TEMPLATE",
    "TASKS",
    "train_tokenizer",
    "tiny_llama",
    "synthetic_corpus",
    "task_target",
    "parse_prompt",
    "reward",
    "rewards",
    "corrupt",
    "synthetic_k_dataset",
    "corpus_texts",
    "sft_warmup",
    "TinyKit",
    "build_tiny_kit",
    "ensure_tiny_kit",
]

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, *ROLE_TOKENS)

# Zephyr-like: each turn is "<|role|>\n{content}<|eos|>"; the generation prompt is "<|assistant|>\n".
# The prompt rendered with add_generation_prompt=True is a prefix of prompt + assistant turn, so the
# response continuation is "{content}<|eos|>" (ends with EOS exactly once).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 512,
    *,
    min_frequency: int = 1,
    chat_template: str | None = CHAT_TEMPLATE,
    model_max_length: int = 1024,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it as a transformers fast tokenizer.

    Special tokens: ``<|pad|>`` (id 0), ``<|bos|>`` (1), ``<|eos|>`` (2) and the role markers
    ``<|system|>``, ``<|user|>``, ``<|assistant|>``. Byte-level, so any text encodes (no unknown
    token). ``chat_template=None`` gives a tokenizer without a template (the plain-concatenation
    path of :func:`ncakit.scale.data.tokenize_k_example`). Save with ``save_pretrained`` and reload
    with ``AutoTokenizer.from_pretrained``; the template is kept.
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(
            f"vocab_size: expected >= {256 + len(SPECIAL_TOKENS)} (256 byte symbols + specials), got {vocab_size}"
        )
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=chat_template,
        model_max_length=model_max_length,
        padding_side="right",
    )


def tiny_llama(
    tokenizer,
    hidden: int = 64,
    layers: int = 2,
    *,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate: int | None = None,
    max_position_embeddings: int = 1024,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> LlamaForCausalLM:
    """A Llama-style causal LM from ``LlamaConfig`` sized for CPU tests (172k parameters at the
    defaults with a 384-token vocabulary, untied head). Initialised from ``seed`` without touching
    the global RNG."""
    if hidden % heads or heads % kv_heads:
        raise ValueError(
            f"hidden/heads/kv_heads: need hidden % heads == 0 and heads % kv_heads == 0, got {hidden}/{heads}/{kv_heads}"
        )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate or 4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model.to(dtype)


# ----------------------------------------------------------------------------------------------
# Synthetic string tasks with a graded reward
# ----------------------------------------------------------------------------------------------

TASKS = {
    "reverse": lambda s: s[::-1],
    "sort": lambda s: "".join(sorted(s)),
    "copy": lambda s: s,
    "upper": lambda s: s.upper(),
}
_ALPHABET = "abcdefgh"


def task_target(task: str, arg: str) -> str:
    """The correct answer of ``task`` on ``arg`` (e.g. ``task_target("reverse", "abc") == "cba"``)."""
    if task not in TASKS:
        raise ValueError(f"task: expected one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task](arg)


def synthetic_corpus(
    n: int,
    seed: int = 0,
    *,
    tasks: Sequence[str] = tuple(TASKS),
    min_len: int = 3,
    max_len: int = 8,
    alphabet: str = _ALPHABET,
) -> list[dict]:
    """``n`` prompt/response pairs ``{"prompt": "reverse: dacb", "response": "bcad", "task": ...}``.

    Prompts are ``"<task>: <string>"`` over a small alphabet; the response is the correct answer
    (reward 1). Deterministic in ``seed``.
    """
    for t in tasks:
        task_target(t, "")
    if not 1 <= min_len <= max_len:
        raise ValueError(f"min_len/max_len: need 1 <= min_len <= max_len, got {min_len}/{max_len}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        task = rng.choice(list(tasks))
        arg = "".join(rng.choice(alphabet) for _ in range(rng.randint(min_len, max_len)))
        rows.append({"prompt": f"{task}: {arg}", "response": task_target(task, arg), "task": task})
    return rows


def parse_prompt(prompt) -> tuple[str, str]:
    """``"reverse: dacb"`` (or a chat message list whose last user turn is that) -> ``("reverse", "dacb")``."""
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        if not users:
            raise ValueError("prompt: message list has no user turn")
        prompt = users[-1]
    if not isinstance(prompt, str) or ":" not in prompt:
        raise ValueError(f"prompt: expected '<task>: <string>', got {prompt!r}")
    task, arg = prompt.split(":", 1)
    return task.strip(), arg.strip()


def _edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def reward(prompt, response) -> float:
    """Graded reward in [0, 1]: ``1 - edit_distance(answer, target) / max(len(answer), len(target))``.

    1 for the exact answer, partial credit for near misses, 0 for unrelated text. ``response`` may
    be a string or an assistant message list; surrounding whitespace is ignored.
    """
    task, arg = parse_prompt(prompt)
    target = task_target(task, arg)
    if isinstance(response, list):
        response = "".join(m["content"] for m in response if m.get("role") == "assistant")
    answer = str(response).strip()
    denom = max(len(answer), len(target), 1)
    return 1.0 - _edit_distance(answer, target) / denom


def rewards(prompts: Sequence, responses: Sequence) -> list[float]:
    """:func:`reward` over aligned lists (e.g. the K samples of one prompt: ``[prompt] * K``)."""
    if len(prompts) != len(responses):
        raise ValueError(f"responses: expected {len(prompts)} entries (one per prompt), got {len(responses)}")
    return [reward(p, r) for p, r in zip(prompts, responses)]


def corrupt(text: str, n_edits: int, rng: random.Random, alphabet: str = _ALPHABET) -> str:
    """Apply ``n_edits`` random single-character edits (substitute / insert / delete / swap)."""
    chars = list(text)
    for _ in range(n_edits):
        op = rng.choice(("sub", "ins", "del", "swap")) if chars else "ins"
        i = rng.randrange(len(chars)) if chars else 0
        if op == "sub":
            chars[i] = rng.choice([c for c in alphabet + alphabet.upper() if c != chars[i]])
        elif op == "ins":
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(alphabet))
        elif op == "del":
            del chars[i]
        elif len(chars) > 1:
            j = rng.randrange(len(chars) - 1)
            chars[j], chars[j + 1] = chars[j + 1], chars[j]
    return "".join(chars)


def synthetic_k_dataset(
    n_prompts: int,
    k: int = 4,
    seed: int = 0,
    *,
    chat: bool = True,
    sort_best_first: bool = True,
    reward_scale: float = 1.0,
    **corpus_kwargs,
) -> list[dict]:
    """Canonical K-response rows built offline: K distinct answers per prompt, from the correct one
    corrupted by 0..len(target) random edits, scored by :func:`reward` (times ``reward_scale``,
    e.g. 10 for UltraFeedback-like 1-10 scores).

    ``chat=True`` gives conversational rows (``prompt`` a user message list, ``responses``
    assistant message lists); ``chat=False`` plain strings. ``sort_best_first`` orders each row's
    responses by reward, highest first (as the authors' UltraFeedback data is), ties in draw order.
    """
    if k < 2:
        raise ValueError(f"k: expected >= 2 responses per prompt, got {k}")
    rng = random.Random(seed + 1_000_003)
    rows = []
    for ex in synthetic_corpus(n_prompts, seed, **corpus_kwargs):
        target = ex["response"]
        answers: list[str] = []
        for _attempt in range(50 * k):
            if len(answers) == k:
                break
            cand = corrupt(target, rng.randint(0, len(target)), rng)
            if cand.strip() and cand not in answers:
                answers.append(cand)
        while len(answers) < k:  # tiny targets: pad with distinct junk strings
            answers.append("".join(rng.choice(string.ascii_lowercase) for _ in range(len(answers) + 3)))
        scores = [reward_scale * reward(ex["prompt"], a) for a in answers]
        order = sorted(range(k), key=lambda i: -scores[i]) if sort_best_first else list(range(k))
        answers = [answers[i] for i in order]
        scores = [scores[i] for i in order]
        if chat:
            row = {
                "prompt": [{"role": "user", "content": ex["prompt"]}],
                "responses": [[{"role": "assistant", "content": a}] for a in answers],
            }
        else:
            row = {"prompt": ex["prompt"], "responses": answers}
        row["rewards"] = [float(s) for s in scores]
        rows.append(row)
    return rows


def corpus_texts(rows: Iterable[dict]) -> list[str]:
    """Every prompt and response string of corpus or canonical rows (tokenizer training text)."""
    out: list[str] = []

    def add(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, list):
            for item in x:
                add(item["content"] if isinstance(item, dict) else item)

    for row in rows:
        add(row.get("prompt"))
        add(row.get("response"))
        add(row.get("responses"))
    return out


def sft_warmup(
    model,
    tokenizer,
    rows: Sequence[dict] | None = None,
    *,
    steps: int = 300,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup_steps: int = 20,
    seed: int = 0,
    n_rows: int = 2048,
    max_length: int = 64,
) -> list[float]:
    """Supervised warm-up of ``model`` (in place): AdamW on the mean per-token negative log-likelihood
    of the CORRECT answers (response tokens only; prompt masked), linear warm-up then cosine decay
    to 10% of ``lr``.

    After it the tiny model is a meaningful SFT policy μ: it puts real probability on good answers,
    so preference training starts from a reference that already ranks responses, as a real run
    starts from an SFT model (MATH.md, Notation: μ = π_ref, the frozen reference (SFT) policy).

    Args:
        rows: corpus rows ``{"prompt", "response"}`` (:func:`synthetic_corpus`); default ``n_rows``
            rows drawn with ``seed + 101``.
        steps / batch_size / lr / warmup_steps: the optimisation (batches drawn from a seeded
            permutation, epoch after epoch).

    Returns:
        The per-step training losses (nats per response token); the model is left in eval mode.
    """
    from ncakit.logprobs import response_lengths, sequence_logps
    from ncakit.scale.data import KResponseCollator, tokenize_k_example

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps/batch_size: expected positive ints, got {steps}/{batch_size}")
    rows = list(rows) if rows is not None else synthetic_corpus(n_rows, seed=seed + 101)
    chat = getattr(tokenizer, "chat_template", None) is not None
    examples = []
    for r in rows:
        prompt = [{"role": "user", "content": r["prompt"]}] if chat else r["prompt"]
        response = [{"role": "assistant", "content": r["response"]}] if chat else r["response"]
        ex = {"prompt": prompt, "responses": [response], "rewards": [1.0]}
        examples.append(
            tokenize_k_example(
                ex, tokenizer, max_length=max_length, max_prompt_length=max_length // 2, min_responses=1
            )
        )
    collate = KResponseCollator(tokenizer.pad_token_id, k=1)
    gen = torch.Generator().manual_seed(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        frac = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * frac)))

    model.train()
    order: list[int] = []
    losses = []
    for step in range(steps):
        if len(order) < batch_size:
            order += torch.randperm(len(examples), generator=gen).tolist()
        idx, order = order[:batch_size], order[batch_size:]
        batch = collate([examples[i] for i in idx])
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        n_tok = response_lengths(batch["labels"]).sum().clamp(min=1)
        loss = -sequence_logps(logits, batch["labels"]).sum() / n_tok
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.detach().item())
    opt.zero_grad(set_to_none=True)  # leave no stale gradients for whoever trains the model next
    model.eval()
    return losses


@dataclass
class TinyKit:
    """What :func:`build_tiny_kit` wrote (paths, all fixed names under ``root``) and built (objects)."""

    root: Path
    tokenizer: PreTrainedTokenizerFast
    model: LlamaForCausalLM

    @property
    def tokenizer_path(self) -> Path:
        return self.root / "tokenizer"

    @property
    def model_path(self) -> Path:
        return self.root / "model"

    @property
    def train_path(self) -> Path:
        return self.root / "train.jsonl"

    @property
    def test_path(self) -> Path:
        return self.root / "test.jsonl"


def build_tiny_kit(
    out_dir: str | Path,
    *,
    n_train: int = 512,
    n_test: int = 64,
    k: int = 4,
    vocab_size: int = 384,
    hidden: int = 64,
    layers: int = 2,
    seed: int = 0,
    chat: bool = True,
    reward_scale: float = 1.0,
    sft_steps: int = 0,
    sft_lr: float = 3e-3,
    sft_batch_size: int = 32,
) -> TinyKit:
    """Build the tokenizer, the tiny model and train/test K-response data, and save them under
    ``out_dir`` (``tokenizer/``, ``model/``, ``train.jsonl``, ``test.jsonl``, ``kit.json``).

    ``sft_steps > 0`` warms the model up on correct answers first (:func:`sft_warmup`, on its own
    corpus draw), so the saved model is a meaningful reference policy; ``kit.json`` records the
    first and last warm-up losses.

    Reload with ``AutoTokenizer.from_pretrained(kit.tokenizer_path)``,
    ``AutoModelForCausalLM.from_pretrained(kit.model_path)`` and
    ``ncakit.scale.data.load_k_dataset(str(kit.train_path))``. The tokenizer is trained on its own
    corpus draw (2000 prompt/answer pairs); the rewards are :func:`reward` times ``reward_scale``.
    """
    from ncakit.scale.data import save_k_dataset

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    tok_corpus = synthetic_corpus(2000, seed=seed + 7)
    tokenizer = train_tokenizer(corpus_texts(tok_corpus), vocab_size=vocab_size)
    model = tiny_llama(tokenizer, hidden=hidden, layers=layers, seed=seed)
    sft_losses: list[float] = []
    if sft_steps > 0:
        sft_losses = sft_warmup(
            model,
            tokenizer,
            synthetic_corpus(2048, seed=seed + 11),
            steps=sft_steps,
            lr=sft_lr,
            batch_size=sft_batch_size,
            seed=seed,
        )
    train = synthetic_k_dataset(n_train, k, seed=seed, chat=chat, reward_scale=reward_scale)
    test = synthetic_k_dataset(n_test, k, seed=seed + 1, chat=chat, reward_scale=reward_scale)
    kit = TinyKit(root=root, tokenizer=tokenizer, model=model)
    tokenizer.save_pretrained(kit.tokenizer_path)
    model.save_pretrained(kit.model_path)
    save_k_dataset(train, kit.train_path)
    save_k_dataset(test, kit.test_path)
    meta = {
        "n_train": n_train,
        "n_test": n_test,
        "k": k,
        "vocab_size": len(tokenizer),
        "vocab_size_requested": vocab_size,
        "hidden": hidden,
        "layers": layers,
        "seed": seed,
        "chat": chat,
        "reward": "1 - edit_distance / max_len (ncakit.scale.tinylm.reward)",
        "reward_scale": reward_scale,
        "params": int(sum(p.numel() for p in model.parameters())),
        "sft_steps": sft_steps,
        "sft_lr": sft_lr,
        "sft_batch_size": sft_batch_size,
        "sft_loss_first": sft_losses[0] if sft_losses else None,
        "sft_loss_last": sft_losses[-1] if sft_losses else None,
    }
    (root / "kit.json").write_text(json.dumps(meta, indent=2) + "\n")
    return kit


_KIT_SETTINGS = (
    "n_train",
    "n_test",
    "k",
    "vocab_size",
    "hidden",
    "layers",
    "seed",
    "chat",
    "reward_scale",
    "sft_steps",
    "sft_lr",
    "sft_batch_size",
)


def recorded_kit_settings(out_dir: str | Path) -> dict | None:
    """The :func:`build_tiny_kit` settings a kit's ``kit.json`` records (``vocab_size`` as requested,
    None for a setting it lacks), or None when ``out_dir`` holds no ``kit.json``."""
    meta_file = Path(out_dir) / "kit.json"
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    recorded = {name: meta.get(name) for name in _KIT_SETTINGS}
    recorded["vocab_size"] = meta.get("vocab_size_requested", meta.get("vocab_size"))
    return recorded


def ensure_tiny_kit(out_dir: str | Path, **settings) -> TinyKit:
    """:func:`build_tiny_kit` once: reload the kit from ``out_dir`` when its ``kit.json`` records the
    same settings (the :func:`build_tiny_kit` keyword arguments; defaults filled in), else (re)build.

    The tiny-cpu recipe calls it at the start of every run, so the tokenizer training and the SFT
    warm-up are paid once per settings. In a multi-process run, call it on the main process
    first (``accelerator.main_process_first()``).
    """
    import inspect

    from transformers import AutoTokenizer

    unknown = sorted(set(settings) - set(_KIT_SETTINGS))
    if unknown:
        raise TypeError(
            f"settings: unknown tiny-kit setting(s) {unknown}; expected some of {list(_KIT_SETTINGS)}"
        )
    defaults = {
        name: p.default
        for name, p in inspect.signature(build_tiny_kit).parameters.items()
        if name in _KIT_SETTINGS
    }
    wanted = {**defaults, **settings}
    root = Path(out_dir)
    recorded = recorded_kit_settings(root)
    if recorded is not None:
        if recorded == wanted and all((root / d).exists() for d in ("tokenizer", "model", "train.jsonl")):
            tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
            model = LlamaForCausalLM.from_pretrained(root / "model")
            return TinyKit(root=root, tokenizer=tokenizer, model=model.eval())
    return build_tiny_kit(root, **wanted)
