"""Collation and batching: B rows (one prompt with its K responses each) -> B·K right-padded
sequences, prompt-major, with ``[B, K]`` rewards and mask; a dataloader that keeps each prompt's
K responses together (optionally grouped by length)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from ncakit.logprobs import IGNORE_INDEX

logger = logging.getLogger("ncakit.scale.data")


# ----------------------------------------------------------------------------------------------
# Collation and batching
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class KResponseCollator:
    """B tokenised rows -> one padded batch of B·K sequences (prompt-major), for ``DataLoader``.

    Args:
        pad_token_id: the id written at padding positions (``tokenizer.pad_token_id``; use the EOS
            id for tokenizers without a pad token -- padding is masked everywhere).
        k: responses per prompt in every batch; rows with fewer are padded and masked, rows with
            more raise. ``None``: the largest K in each batch.
        pad_to_multiple_of: round T up (e.g. 8 for tensor cores).
        label_pad_token_id: the ignore index of the labels (-100).

    Returns a dict of tensors, N = B·K sequences, row ``b * K + k`` = response k of prompt b:

    ========================  =============  ==================================================
    ``input_ids``             [N, T] int64   prompt + response tokens, right-padded
    ``attention_mask``        [N, T] int64   1 on real tokens (or the row's stored attention)
    ``labels``                [N, T] int64   = input_ids on response tokens, -100 on prompt/pad
    ``rewards``               [B, K] fp32    0 where ``mask`` is False
    ``mask``                  [B, K] bool    False for the padding responses of short rows
    ``response_lengths``      [B, K] int64   scored tokens per response (0 where masked)
    ``prompt_lengths``        [B]    int64   prompt tokens (same for the K rows of a prompt)
    ``ref_logps``             [B, K] fp32    only when every row has a ``ref_logps`` entry
    ========================  =============  ==================================================

    Rows with ``prompt_attention_mask`` / ``response_attention_mask`` (``rendering: authors``,
    :mod:`ncakit.scale.data.authors`) get that attention on their real tokens (0 at EOS tokens
    inside the text, as the authors' collator sets it); labels are unchanged (every response token
    scored, those EOS included). A padding response is a 1-token dummy sequence ``[pad]`` with attention 1 (an all-masked
    row would give NaNs in some attention kernels) and label -100, so its log-prob is exactly 0.
    ``sequence_logps(logits, batch["labels"]).view(B, K)`` is then the loss input. Prompt
    sharing (computing the prompt's tokens once per K responses) can be built from
    ``prompt_lengths``: the first ``prompt_lengths[b]`` tokens of rows ``b*K .. b*K+K-1`` are
    identical.
    """

    pad_token_id: int
    k: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def __post_init__(self):
        if isinstance(self.pad_token_id, bool) or not isinstance(self.pad_token_id, int):
            raise ValueError(
                f"pad_token_id: expected an int token id (tokenizer.pad_token_id or eos_token_id), got {self.pad_token_id!r}"
            )
        if self.k is not None and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k: expected a positive int or None, got {self.k!r}")

    def __call__(self, rows: Sequence[Mapping]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("rows: expected at least one example")
        for i, r in enumerate(rows):
            for key in ("prompt_ids", "response_ids", "rewards"):
                if key not in r:
                    raise ValueError(f"{key}: missing from row {i} (tokenise with tokenize_k_dataset first)")
            if len(r["response_ids"]) != len(r["rewards"]):
                raise ValueError(
                    f"rewards: row {i} has {len(r['rewards'])} rewards for {len(r['response_ids'])} responses"
                )
        B = len(rows)
        K = self.k if self.k is not None else max(len(r["response_ids"]) for r in rows)
        too_many = [i for i, r in enumerate(rows) if len(r["response_ids"]) > K]
        if too_many:
            raise ValueError(
                f"response_ids: row {too_many[0]} has {len(rows[too_many[0]]['response_ids'])} responses, "
                f"more than the collator's k={K}"
            )
        seq_lens = [
            [
                len(r["prompt_ids"]) + len(r["response_ids"][k]) if k < len(r["response_ids"]) else 1
                for k in range(K)
            ]
            for r in rows
        ]
        T = max(max(s) for s in seq_lens)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            T = (T + m - 1) // m * m
        N = B * K
        input_ids = torch.full((N, T), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((N, T), dtype=torch.long)
        labels = torch.full((N, T), self.label_pad_token_id, dtype=torch.long)
        rewards = torch.zeros((B, K), dtype=torch.float32)
        mask = torch.zeros((B, K), dtype=torch.bool)
        response_lengths = torch.zeros((B, K), dtype=torch.long)
        prompt_lengths = torch.zeros(B, dtype=torch.long)
        has_ref = all(r.get("ref_logps") is not None for r in rows)
        ref = torch.zeros((B, K), dtype=torch.float32) if has_ref else None
        for b, r in enumerate(rows):
            p = torch.as_tensor(r["prompt_ids"], dtype=torch.long)
            lp = len(p)
            prompt_lengths[b] = lp
            if has_ref and len(r["ref_logps"]) != len(r["response_ids"]):
                raise ValueError(
                    f"ref_logps: row {b} has {len(r['ref_logps'])} values for {len(r['response_ids'])} responses"
                )
            p_att = r.get("prompt_attention_mask")
            if p_att is not None:
                p_att = _row_attention(p_att, lp, b, None)
            for k in range(K):
                n = b * K + k
                if k >= len(r["response_ids"]):
                    attention_mask[n, 0] = 1  # dummy 1-token sequence: [pad], label -100
                    continue
                resp = torch.as_tensor(r["response_ids"][k], dtype=torch.long)
                lr = len(resp)
                input_ids[n, :lp] = p
                input_ids[n, lp : lp + lr] = resp
                if p_att is None:
                    attention_mask[n, : lp + lr] = 1
                else:  # rendering: authors -- EOS tokens inside the text are not attended
                    attention_mask[n, :lp] = p_att
                    attention_mask[n, lp : lp + lr] = _row_attention(
                        r["response_attention_mask"][k], lr, b, k
                    )
                labels[n, lp : lp + lr] = resp
                rewards[b, k] = float(r["rewards"][k])
                mask[b, k] = True
                response_lengths[b, k] = lr
                if has_ref:
                    ref[b, k] = float(r["ref_logps"][k])
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "rewards": rewards,
            "mask": mask,
            "response_lengths": response_lengths,
            "prompt_lengths": prompt_lengths,
        }
        if has_ref:
            batch["ref_logps"] = ref
        return batch


def _row_attention(values, n: int, b: int, k: int | None) -> torch.Tensor:
    """A row's stored attention (``rendering: authors``) as a tensor, its length checked."""
    att = torch.as_tensor(values, dtype=torch.long)
    if att.shape != (n,):
        what = "prompt_attention_mask" if k is None else f"response_attention_mask[{k}]"
        raise ValueError(f"{what}: row {b} has {tuple(att.shape)} values for {n} tokens")
    return att


def example_lengths(dataset) -> np.ndarray:
    """Per-row padded-cost proxy ``[num_rows]``: the longest prompt + response (``max_seq_len``)."""
    if isinstance(dataset, datasets.Dataset) and "max_seq_len" in dataset.column_names:
        return np.asarray(dataset.data.column("max_seq_len").to_numpy(), dtype=np.int64)
    return np.asarray(
        [len(r["prompt_ids"]) + max(len(x) for x in r["response_ids"]) for r in dataset], dtype=np.int64
    )


class LengthGroupedSampler(Sampler[int]):
    """Indices in batches of similar length (less padding), still random from epoch to epoch.

    The HF Trainer's recipe: shuffle, cut into mega-batches of ``batch_size * mega_batch_mult``
    rows, sort each by length (longest first), cut into batches, shuffle the batch order and put
    the batch holding the longest row first (an out-of-memory error shows up at step 0). Yields
    row indices; use it with ``DataLoader(..., batch_size=batch_size, sampler=...)`` so the
    batches come out as formed. Every row is one prompt with all its K responses.
    """

    def __init__(self, lengths, batch_size: int, *, mega_batch_mult: int = 50, seed: int = 0):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if batch_size < 1:
            raise ValueError(f"batch_size: expected >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.mega = max(1, int(mega_batch_mult)) * self.batch_size
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).numpy()
        batches = []
        for start in range(0, len(perm), self.mega):
            mb = perm[start : start + self.mega]
            mb = mb[np.argsort(-self.lengths[mb], kind="stable")]
            batches.extend(mb[i : i + self.batch_size] for i in range(0, len(mb), self.batch_size))
        if not batches:
            return iter(())
        order = torch.randperm(len(batches), generator=g).tolist()
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        order.remove(longest)
        order.insert(0, longest)
        # Full batches first so a short batch, if any, stays at the end (DataLoader cuts by count).
        full = [i for i in order if len(batches[i]) == self.batch_size]
        short = [i for i in order if len(batches[i]) != self.batch_size]
        return iter([int(x) for i in full + short for x in batches[i]])


def make_dataloader(
    dataset,
    collator: Callable,
    batch_size: int,
    *,
    shuffle: bool = True,
    group_by_length: bool = False,
    seed: int = 0,
    drop_last: bool = False,
    num_workers: int = 0,
    mega_batch_mult: int = 50,
) -> DataLoader:
    """A ``DataLoader`` over prompts (each row = one prompt + its K responses, so the K responses
    always share a batch; no special sampler is needed for that).

    ``shuffle`` uses a seeded generator; ``group_by_length`` uses :class:`LengthGroupedSampler`
    (random too, less padding). Pass the result to ``accelerator.prepare``.
    """
    if group_by_length:
        sampler = LengthGroupedSampler(
            example_lengths(dataset), batch_size, mega_batch_mult=mega_batch_mult, seed=seed
        )
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collator,
            drop_last=drop_last,
            num_workers=num_workers,
        )
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator,
        collate_fn=collator,
        drop_last=drop_last,
        num_workers=num_workers,
    )
