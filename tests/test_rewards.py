"""ncakit.scale.rewards: reward specs (module:function, callable), a sequence-classification reward
model scored in length-sorted batches (scores equal to one-at-a-time scores whatever the batch size
and order), and list-taking judges (one call per batch of prompts, TRL rank/pairwise adapters, a
thread pool for per-item API judges that keeps the order and names a failed item)."""

from __future__ import annotations

import math
import random
import sys
import threading
import time
import types

import pytest

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import torch  # noqa: E402

from ncakit.scale import generate, rewards, tinylm  # noqa: E402

PROMPTS = [
    [{"role": "user", "content": "copy: abc"}],
    [{"role": "user", "content": "reverse: abcdefghabcdefgh"}],
    [{"role": "user", "content": "upper: dd"}],
    "reverse: xyz",
    [{"role": "user", "content": "copy: a"}],
]


def test_reward_specs():
    fn = rewards.load_reward("ncakit.scale.tinylm:reward")
    prompts = ["reverse: abc", "reverse: abc", [{"role": "user", "content": "copy: xy"}]]
    responses = ["cba", "cbx", "xy"]
    assert fn(prompts, responses) == [tinylm.reward(p, r) for p, r in zip(prompts, responses)]
    assert fn(prompts, responses)[0] == 1.0 and 0 < fn(prompts, responses)[1] < 1
    assert rewards.load_reward(lambda p, r: len(r))(["a", "b"], ["xyz", ""]) == [3.0, 0.0]
    with pytest.raises(ValueError, match="^reward: cannot import module 'no_such_module'"):
        rewards.load_reward("no_such_module:f")
    with pytest.raises(ValueError, match="^reward: 'ncakit.scale.tinylm' has no callable 'nope'"):
        rewards.load_reward("ncakit.scale.tinylm:nope")
    with pytest.raises(ValueError, match="non-finite score nan"):
        rewards.load_reward(lambda p, r: math.nan)(["a"], ["b"])
    with pytest.raises(ValueError, match="^responses: expected 2 entries"):
        fn(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="^reward_workers: expected an int >= 1"):
        rewards.load_reward("ncakit.scale.tinylm:reward", workers=0)


# ----------------------------------------------------------------------------------------------
# A reward model, batched on the accelerator
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    texts = [" ".join(str(v) for v in r.values()) for r in tinylm.synthetic_corpus(64, seed=1)] + RESPONSES
    tok = tinylm.train_tokenizer(texts, vocab_size=300)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_labels=1, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    rm = LlamaForSequenceClassification(cfg).eval()
    root = tmp_path_factory.mktemp("rm")
    rm.save_pretrained(root)
    tok.save_pretrained(root)
    return root, rm, tok


def _alone(rm, tok, prompt, response) -> float:
    """The oracle: one sequence, no padding, straight through the model."""
    msgs = rewards.chat_messages(prompt) + [{"role": "assistant", "content": response}]
    ids = torch.tensor(
        [tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]]
    )
    with torch.no_grad():
        return rm(input_ids=ids).logits[0, 0].item()


RESPONSES = [
    "abc",
    "a much longer answer than the others, with more tokens",
    "DD",
    "",
    "zyx",
    "a",
    "hello there",
]


def test_reward_model_batches_equal_one_at_a_time_whatever_the_size_and_order(reward_model):
    from accelerate import PartialState

    root, rm, tok = reward_model
    pairs = [(PROMPTS[i % len(PROMPTS)], r) for i, r in enumerate(RESPONSES)]
    oracle = [_alone(rm, tok, p, r) for p, r in pairs]
    assert len({round(s, 6) for s in oracle}) > 1, "the scores differ, so a mix-up would show"
    for batch_size in (1, 3, 8):
        fn = rewards.load_reward(str(root), batch_size=batch_size)
        model = fn.fn.model
        assert next(model.parameters()).device == PartialState().device, "the accelerator by default"
        assert next(model.parameters()).dtype == (
            torch.bfloat16 if torch.cuda.is_available() else torch.float32
        )
        for seed in (0, 1):
            order = list(range(len(pairs)))
            random.Random(seed).shuffle(order)
            got = fn([pairs[i][0] for i in order], [pairs[i][1] for i in order])
            for g, i in zip(got, order):
                assert g == pytest.approx(oracle[i], abs=1e-5), (batch_size, seed, i)


def test_reward_model_sorts_by_length_to_pad_less(reward_model):
    root, _, tok = reward_model
    fn = rewards.load_reward(str(root), batch_size=2, device="cpu")
    shapes = []
    hook = fn.fn.model.register_forward_pre_hook(
        lambda m, a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True
    )
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(len(RESPONSES))]
    try:
        fn(prompts, RESPONSES)
    finally:
        hook.remove()
    lengths = []
    for p, r in zip(prompts, RESPONSES):
        msgs = rewards.chat_messages(p) + [{"role": "assistant", "content": r}]
        lengths.append(
            len(tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"])
        )
    ranked = sorted(lengths, reverse=True)
    # the padded area of batches over the length-sorted list: the least any batching of 2 can pad
    assert shapes == [(len(ranked[i : i + 2]), ranked[i]) for i in range(0, len(ranked), 2)]


# ----------------------------------------------------------------------------------------------
# Judges that take lists
# ----------------------------------------------------------------------------------------------


def _canned_sampler(model, tokenizer, prompts, k, **_):
    return [[f"{str(p)[-6:]} answer {j}" for j in range(k)] for p in prompts]


def test_generate_calls_a_judge_once_per_batch_with_all_k_responses(tmp_path, monkeypatch):
    monkeypatch.setattr(generate, "sample_k_responses", _canned_sampler)
    calls = []

    @rewards.list_judge
    def judge(prompts, completions):
        calls.append((list(prompts), [list(c) for c in completions]))
        return [[float(len(c)) for c in group] for group in completions]

    rows, stats = generate.generate_k_dataset(
        None, None, PROMPTS, judge, tmp_path / "j.jsonl", k=3, batch_size=2
    )
    assert len(calls) == 1 + math.ceil(len(PROMPTS) / 2), "the one-example check, then one call per batch"
    assert [len(c[0]) for c in calls[1:]] == [2, 2, 1]
    for prompts, completions in calls[1:]:
        assert completions == _canned_sampler(None, None, prompts, 3), "all K responses of each prompt"
    assert [r["prompt"] for r in rows] == PROMPTS
    for row in rows:
        texts = [r[0]["content"] if isinstance(r, list) else r for r in row["responses"]]
        assert row["rewards"] == [float(len(t)) for t in texts]
    assert stats["reward"] == "judge"


def test_concurrent_judge_keeps_the_order_under_threads():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def api(prompt, response):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(random.uniform(0.0, 0.01))  # calls finish in a random order
        with lock:
            in_flight[0] -= 1
        return float(len(str(prompt)) * 100 + len(response))

    completions = [[f"r{'x' * j}" for j in range(4)] for _ in PROMPTS]
    judge = rewards.concurrent_judge(api, max_workers=8)
    got = judge.judge(PROMPTS, completions)
    assert got == [[api(p, r) for r in group] for p, group in zip(PROMPTS, completions)]
    assert peak[0] > 1, "the calls overlapped"
    assert isinstance(rewards.load_reward(api, workers=4), rewards.Judge)


def test_concurrent_judge_names_the_failed_item():
    def api(prompt, response):
        if response == "bad":
            raise KeyError("quota")
        return 1.0

    judge = rewards.concurrent_judge(api, max_workers=4, name="api")
    with pytest.raises(
        RuntimeError, match=r"^judge 'api': item \(prompt 1, response 2\) failed: KeyError: 'quota'$"
    ):
        judge.judge(["a", "b"], [["x", "y", "z"], ["x", "y", "bad"]])
    with pytest.raises(ValueError, match="^max_workers: expected an int >= 1"):
        rewards.concurrent_judge(api, max_workers=0)


class BaseRankJudge:  # TRL's base classes, by name: the adapters never import trl
    pass


class BasePairwiseJudge:
    pass


class LengthRank(BaseRankJudge):
    """Ranks longer completions first; returns completion indices best first (TRL's convention)."""

    seen: list = []

    def judge(self, prompts, completions, shuffle_order=True):
        LengthRank.seen.append((list(prompts), shuffle_order))
        return [sorted(range(len(c)), key=lambda j: -len(c[j])) for c in completions]


class FirstWins(BasePairwiseJudge):
    def judge(self, prompts, completions, shuffle_order=True):
        return [0 if len(a) >= len(b) else 1 for a, b in completions]


def test_trl_rank_judge_ranks_become_minus_rank():
    judge = rewards.from_trl_judge(LengthRank(), shuffle_order=False)
    completions = [["aa", "a", "aaaa"], ["b", "bbb", "bb"]]
    got = judge.judge(PROMPTS[:2], completions)
    # orders best first: [2, 0, 1] and [1, 2, 0]; completion j at position r gets -r
    assert got == [[-1.0, -2.0, 0.0], [-2.0, 0.0, -1.0]]
    assert LengthRank.seen[-1] == (["copy: abc", "reverse: abcdefghabcdefgh"], False), (
        "text prompts, flag passed"
    )
    bad = rewards.from_trl_judge(
        type("Dup", (BaseRankJudge,), {"judge": lambda s, p, c, shuffle_order: [[0, 0]]})()
    )
    with pytest.raises(ValueError, match=r"expected a permutation of 0\.\.1 for prompt 0 .* got \[0, 0\]"):
        bad.judge(["p"], [["x", "y"]])


def test_trl_pairwise_judge_for_k_2(monkeypatch):
    judge = rewards.load_reward(FirstWins())
    assert judge.k == 2
    assert judge.judge(["p", "q"], [["long", "s"], ["s", "long"]]) == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(
        ValueError, match="^k: the judge 'trl:FirstWins' scores exactly 2 responses per prompt, got --k 4"
    ):
        rewards.check_reward(judge, "p", 4)
    failed = rewards.from_trl_judge(
        type("F", (BasePairwiseJudge,), {"judge": lambda s, p, c, shuffle_order: [-1]})()
    )
    with pytest.raises(
        ValueError,
        match=r"^judge 'trl:F': expected the winner 0 or 1 for prompt 0, got -1 \(the judge failed",
    ):
        failed.judge(["p"], [["a", "b"]])


def test_judges_load_by_module_name(monkeypatch):
    mod = types.ModuleType("fake_judges")
    mod.rank = LengthRank()
    mod.RankClass = LengthRank
    mod.listfn = rewards.list_judge(lambda prompts, completions: [[0.0] * len(c) for c in completions])

    class Protocol:
        def judge(self, prompts, completions):
            return [[1.0] * len(c) for c in completions]

    mod.proto = Protocol()
    mod.perpair = lambda p, r: 0.5
    monkeypatch.setitem(sys.modules, "fake_judges", mod)
    for name in ("rank", "RankClass", "listfn", "proto"):
        j = rewards.load_reward(f"fake_judges:{name}")
        assert isinstance(j, rewards.Judge), name
        rewards.check_reward(j, "p", 3)
        assert len(j.judge(["p"], [["a", "b", "c"]])[0]) == 3
    assert isinstance(rewards.load_reward("fake_judges:perpair"), rewards.RewardFn)
    assert isinstance(rewards.load_reward("fake_judges:perpair", workers=3), rewards.Judge)


def test_judge_answers_are_checked_in_one_line():
    cases = [
        (lambda p, c: [[1.0, 2.0]], r"^judge 'j': returned 1 score lists for 2 prompts$"),
        (lambda p, c: [[1.0], [1.0, 2.0]], r"^judge 'j': returned 1 scores for the 2 responses of prompt 0$"),
        (
            lambda p, c: [[1.0, math.inf], [1.0, 2.0]],
            r"^reward 'j': non-finite score inf for response 1 \(prompt 0\)$",
        ),
        (
            lambda p, c: [3.0, [1.0, 2.0]],
            r"^judge 'j': expected a list of 2 scores for prompt 0, got float 3.0$",
        ),
    ]
    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            rewards.Judge("j", fn).judge(["a", "b"], [["x", "y"], ["x", "y"]])
    with pytest.raises(ValueError, match="^completions: expected 2 lists"):
        rewards.Judge("j", cases[0][0]).judge(["a", "b"], [["x", "y"]])
    with pytest.raises(
        ValueError, match=r"^reward: expected judge\(prompts, completions\) -> K finite floats"
    ):
        rewards.check_reward(rewards.Judge("j", cases[1][0]), "p", 2)
