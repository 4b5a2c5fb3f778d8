"""``rendering: authors``: every sequence built exactly as the NCA authors' code builds it.

Source: thu-ml/Noise-Contrastive-Alignment (``data_utils.py``: ``apply_chat_template`` for the
text, ``NCADataCollatorWithPadding.tokenize_batch_element`` for the tokens; ``run_reward.py``
and ``run_preference.py`` wire them up). The K-response path (``run_reward.py:104-117``, task
``"reward"``, collator ``reward_trainer.py:283-290``) is transcribed here for K responses. The
pairwise path (``run_preference.py:104-118``, task ``"dpo"``) renders text by the same rules
(``data_utils.py:275-294``) but tokenises in TRL's ``DPOTrainer`` at the ``trl-lib`` submodule's
commit 2f726ce, whose source is not in the authors' repository; the authors' collator is a
four-response copy of TRL's ``DPODataCollatorWithPadding.tokenize_batch_element`` of that era, so
pairs (K = 2, chosen first) get rules 3-8 too -- an assumption, not checked against that commit.

Text (``data_utils.py:245-320``):

1. The prompt is the FIRST user message of the conversation, after a system turn: the
   conversation's own first message when it is a system message, else an empty one
   ``{"role": "system", "content": ""}`` (``data_utils.py:299-304``; pairwise ``:278-283``).
   Later prompt turns are not in the prompt (a multi-turn prompt's later turns end up in the
   response text, rule 2; the authors' data is single-turn).
2. Response k is the conversation without its first message, ``A_k[1:]`` (``:306-309``;
   pairwise ``:285-286``), rendered WITHOUT the generation prompt (``:310-313``), and the
   leading ``"<|assistant|>\\n"`` stripped (``:246-250``, ``:317-320``; hard-coded: a template
   with another assistant header keeps it). The prompt is rendered WITH the generation prompt
   (``:314-316``). With a Zephyr template (``data_utils.py:22``) the prompt is
   ``"<|system|>\\n</s>\\n<|user|>\\n{q}</s>\\n<|assistant|>\\n"`` and response k is
   ``"{a_k}</s>\\n"``: the template's EOS and its trailing newline are part of the response.
   When the conversation opens with a system message, ``A_k[1:]`` starts with the user turn, so
   the response text repeats it (the authors' "TODO: handle case where chosen/rejected also have
   system messages", ``:284``/``:305``): transcribed as is.

   ncakit's canonical row becomes the authors' conversation ``A_k = prompt + response_k``
   (plain strings as a user / an assistant message), so the rules apply unchanged.

Tokens (``data_utils.py:80-168``):

3. Prompt and each response tokenised SEPARATELY with ``add_special_tokens=False`` (``:81-85``):
   no BOS unless the template writes one.
4. Every EOS id inside the prompt and inside each response gets attention 0 (``:87-94``,
   ``:96-101``, ``:105-109``, ...): the model does not attend to them, but the response's are
   still scored (rule 7).
5. One more EOS appended to every response, attention 1 (``:102-103``, ``:110-111``, ...): a
   Zephyr response ends ``"{a_k}", </s> (attention 0), "\\n", </s> (attention 1)``.
6. Truncation (``:129-144``): if prompt + longest response (its appended EOS counted) is over
   ``max_length``, keep the LAST ``max_prompt_length`` prompt tokens (``truncation_mode=
   "keep_end"``, ``:59``, ``:134-135``); if still over, cut EVERY response to its first
   ``max_length - max_prompt_length`` tokens (``:140-144``), attention cut alongside.
7. Labels = the sequence's ids with the prompt's positions at -100 (``:146-169``;
   ``optimize_prompt=False``): every response token is scored, the attention-0 EOS included
   (the loss mask is ``labels != -100``, ``reward_trainer.py:492``).
8. Right padding: ids with the pad id, attention 0, labels -100 (``data_utils.py:202-233``,
   ``reward_trainer.py:384-425``); :class:`ncakit.scale.data.KResponseCollator` pads the same
   and takes the attention of rules 4-6 from the row's ``prompt_attention_mask`` /
   ``response_attention_mask`` columns.

Kept from ncakit's pipeline (not in the authors' code, which assumes clean data): responses
with empty text are removed and counted before rendering, as for ``rendering: trl``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from ncakit.scale.data.drops import ExampleError, Reason
from ncakit.scale.data.schemas import drop_empty_responses, from_canonical

__all__ = ["ASSISTANT_PREFIX", "authors_texts", "tokenize_authors_example", "truncation_cut"]

# data_utils.py:246: apply_chat_template(..., assistant_prefix="<|assistant|>\n")
ASSISTANT_PREFIX = "<|assistant|>\n"


def _conversations(example: Mapping) -> list[list[dict]]:
    """The authors' rows ``A_k`` = prompt messages + response-k messages (plain text as user /
    assistant messages)."""
    prompt = example["prompt"]
    prompt_msgs = (
        [dict(m) for m in prompt]
        if isinstance(prompt, list | tuple)
        else [{"role": "user", "content": prompt}]
    )
    out = []
    for r in example["responses"]:
        resp = [dict(m) for m in r] if isinstance(r, list | tuple) else [{"role": "assistant", "content": r}]
        out.append(prompt_msgs + resp)
    return out


def authors_texts(example: Mapping, tokenizer) -> tuple[str, list[str]]:
    """The prompt text and the K response texts of the authors' ``apply_chat_template``
    (task ``"reward"``, ``data_utils.py:295-320``; rules 1-2 of the module docstring)."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "rendering: 'authors' renders every row with the tokenizer's chat template "
            "(data_utils.py:310-316), but the tokenizer has no chat_template"
        )
    convs = _conversations(example)
    a0 = convs[0]
    users = [m for m in a0 if m.get("role") == "user"]
    if not users:
        raise ExampleError(Reason.EMPTY_PROMPT, "prompt", "has no user message (rendering: authors)")
    prompt_msgs = [users[0]]  # data_utils.py:299
    if a0[0]["role"] != "system":  # data_utils.py:301-304
        prompt_msgs.insert(0, {"role": "system", "content": ""})
    else:
        prompt_msgs.insert(0, a0[0])
    prompt_text = tokenizer.apply_chat_template(prompt_msgs, tokenize=False, add_generation_prompt=True)
    pattern = f"^{re.escape(ASSISTANT_PREFIX)}"  # data_utils.py:248-250
    responses = [
        re.sub(pattern, "", tokenizer.apply_chat_template(c[1:], tokenize=False))  # :306-313, :317-320
        for c in convs
    ]
    return prompt_text, responses


def _tokens(tokenizer, text: str, eos: int | None) -> tuple[list[int], list[int]]:
    """Ids and attention of one text: ``add_special_tokens=False`` (data_utils.py:81-85), EOS ids
    at attention 0 (:87-101)."""
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids, [0 if t == eos else 1 for t in ids]


def truncation_cut(
    n_prompt: int, longest: int, *, max_length: int, max_prompt_length: int, response_budget: str = "authors"
) -> tuple[int, int | None]:
    """The authors' truncation rule (``data_utils.py:129-144``; MATH.md) as a plan: ``(prompt tokens
    kept, response budget)``. When the prompt plus the longest response exceed ``max_length``, the
    prompt keeps its LAST ``max_prompt_length`` tokens (if longer); if they still exceed it, every
    response is cut to the budget: ``max_length - max_prompt_length`` (``"authors"``) or what the kept
    prompt leaves (``"fill"``); ``None`` when nothing is cut. Both tokenisers apply it (the plain one
    to ids, the authors' rendering to ids and attention alike)."""
    kept = n_prompt
    if n_prompt + longest > max_length and n_prompt > max_prompt_length:
        kept = max_prompt_length
    if kept + longest <= max_length:
        return kept, None
    return kept, (max_length - max_prompt_length if response_budget == "authors" else max_length - kept)


def tokenize_authors_example(
    example: Mapping,
    tokenizer,
    *,
    max_length: int = 1024,
    max_prompt_length: int = 512,
    min_responses: int = 2,
) -> dict:
    """One canonical example tokenised as the authors' collator does (module docstring, rules 1-7).

    Returns the columns of :func:`ncakit.scale.data.tokenize_k_example` (``prompt_ids``,
    ``response_ids``, ``rewards``, ``max_seq_len``, ``prompt_truncated``, ``responses_truncated``,
    ``responses_removed``, ``template_mismatch`` = ``""``) plus ``prompt_attention_mask`` and
    ``response_attention_mask`` (0 at every EOS inside the text, 1 elsewhere and at the appended
    EOS). Labels (prompt -100, every response token scored) are built by the collator.
    """
    ex = from_canonical(example, min_responses=min_responses)
    ex, removed = drop_empty_responses(ex, min_responses=min_responses)
    prompt_text, response_texts = authors_texts(ex, tokenizer)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError("rendering: 'authors' appends tokenizer.eos_token_id, but the tokenizer has none")
    p_ids, p_att = _tokens(tokenizer, prompt_text, eos)
    if not p_ids:
        raise ExampleError(Reason.EMPTY_PROMPT, "prompt", "has no tokens")
    r_ids, r_att = [], []
    for text in response_texts:
        ids, att = _tokens(tokenizer, text, eos)
        r_ids.append([*ids, eos])  # data_utils.py:102-103: one more EOS, attended
        r_att.append([*att, 1])
    longest = max(len(r) for r in r_ids)  # :129 (the appended EOS counted)
    n_prompt = len(p_ids)
    kept, budget = truncation_cut(
        n_prompt, longest, max_length=max_length, max_prompt_length=max_prompt_length
    )
    p_ids, p_att = p_ids[n_prompt - kept :], p_att[n_prompt - kept :]  # :131-135, keep_end
    n_cut = 0
    if budget is not None:  # :140-144
        n_cut = sum(len(r) > budget for r in r_ids)
        r_ids = [r[:budget] for r in r_ids]
        r_att = [a[:budget] for a in r_att]
    return {
        "prompt_ids": p_ids,
        "response_ids": r_ids,
        "rewards": ex["rewards"],
        "max_seq_len": len(p_ids) + max(len(r) for r in r_ids),
        "prompt_truncated": len(p_ids) < n_prompt,
        "responses_truncated": n_cut,
        "responses_removed": removed,
        "template_mismatch": "",
        "prompt_attention_mask": p_att,
        "response_attention_mask": r_att,
    }
