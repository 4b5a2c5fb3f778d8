"""Drop accounting for the data pipeline: why a row was dropped (:class:`Reason`), the error an
adapter raises (:class:`ExampleError`), what a step did (:class:`DataStats`), and the row mapping
that drops and counts (:func:`map_counting_drops`). Nothing is dropped silently: every step that
drops returns its counts, logs them and warns."""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

import datasets
import numpy as np
import pyarrow.compute as pc

logger = logging.getLogger("ncakit.scale.data")


# ----------------------------------------------------------------------------------------------
# Errors, drop reasons and statistics
# ----------------------------------------------------------------------------------------------


class Reason:
    """Why an example was dropped (the keys of :attr:`DataStats.dropped`)."""

    MISSING_FIELD = "missing_field"  # a column / field is absent or null where text is needed
    BAD_TYPE = "bad_type"  # a field has the wrong type (e.g. a number where text is expected)
    BAD_VALUE = "bad_value"  # well-typed but unusable (no prompt can be split off, wrong role...)
    K_MISMATCH = "k_mismatch"  # len(responses) != len(rewards)
    NON_FINITE_REWARD = "non_finite_reward"  # NaN, inf or null reward
    TOO_FEW_RESPONSES = "too_few_responses"  # fewer than min_responses (2) responses
    TIED_REWARDS = "tied_rewards"  # to_pairwise: every response has the same reward (no pair to form)
    EMPTY_PROMPT = "empty_prompt"  # prompt text empty (or no tokens)
    ALL_RESPONSES_EMPTY = "all_responses_empty"  # every response is empty text / has no tokens

    # counted in DataStats.responses_dropped (the example itself may survive)
    EMPTY_RESPONSE = "empty_response"


class ExampleError(ValueError):
    """One example cannot be used. ``reason`` is a :class:`Reason` value, ``column`` the field at fault.

    A ``ValueError`` whose message starts with the column name, so pure adapter calls fail with a
    clear message, while the dataset-level functions catch it and count ``reason``.
    """

    def __init__(self, reason: str, column: str, message: str):
        super().__init__(f"{column}: {message}")
        self.reason = reason
        self.column = column


class DroppedExamplesWarning(UserWarning):
    """Emitted (once per pipeline call) when examples or responses were dropped; the message has
    the counts per reason. Filter it with ``warnings.simplefilter("ignore", DroppedExamplesWarning)``."""


@dataclasses.dataclass
class DataStats:
    """What a data step did. ``rows_in - rows_kept == sum(dropped.values())``.

    Attributes:
        source: the dataset name / path (or ``"<memory>"``).
        stage: ``"load"``, ``"tokenize"`` or ``"load+tokenize"``.
        rows_in / rows_kept: examples before / after the step.
        dropped: examples dropped, per :class:`Reason`.
        examples: the first error message seen for each reason (to find the bad rows).
        responses_dropped: responses removed from kept examples, per reason.
        prompts_truncated: kept examples whose prompt lost its first tokens.
        responses_truncated: kept responses cut to the response budget.
        k_counts: number of kept examples per K (responses per prompt).
    """

    source: str = "<memory>"
    stage: str = "load"
    rows_in: int = 0
    rows_kept: int = 0
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    examples: dict[str, str] = dataclasses.field(default_factory=dict)
    responses_dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    prompts_truncated: int = 0
    responses_truncated: int = 0
    k_counts: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return sum(self.dropped.values())

    def then(self, later: DataStats) -> DataStats:
        """Chain two steps (this one first): rows in from this, rows kept from ``later``."""
        dropped = Counter(self.dropped)
        dropped.update(later.dropped)
        resp = Counter(self.responses_dropped)
        resp.update(later.responses_dropped)
        return DataStats(
            source=self.source,
            stage=f"{self.stage}+{later.stage}",
            rows_in=self.rows_in,
            rows_kept=later.rows_kept,
            dropped=dict(dropped),
            examples={**later.examples, **self.examples},
            responses_dropped=dict(resp),
            prompts_truncated=self.prompts_truncated + later.prompts_truncated,
            responses_truncated=self.responses_truncated + later.responses_truncated,
            k_counts=dict(later.k_counts),
        )

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rows_dropped"] = self.rows_dropped
        d["k_counts"] = {str(k): v for k, v in sorted(self.k_counts.items())}
        return d

    def summary(self) -> str:
        lines = [
            f"[{self.stage}] {self.source}: {self.rows_in} rows in, {self.rows_kept} kept, "
            f"{self.rows_dropped} dropped"
        ]
        for reason, n in sorted(self.dropped.items(), key=lambda kv: -kv[1]):
            example = self.examples.get(reason, "")
            lines.append(f"  dropped {n:>6} x {reason}" + (f"  (e.g. {example})" if example else ""))
        for reason, n in sorted(self.responses_dropped.items()):
            lines.append(f"  removed {n:>6} responses x {reason}")
        if self.prompts_truncated or self.responses_truncated:
            lines.append(
                f"  truncated: {self.prompts_truncated} prompts (kept their last tokens), "
                f"{self.responses_truncated} responses"
            )
        if self.k_counts:
            ks = ", ".join(f"K={k}: {n}" for k, n in sorted(self.k_counts.items()))
            lines.append(f"  responses per prompt: {ks}")
        return "\n".join(lines)

    def report(self, *, warn: bool = True, stacklevel: int = 3) -> None:
        """Log the summary (INFO) and, if anything was dropped, warn with it."""
        text = self.summary()
        logger.info(text)
        if warn and (self.rows_dropped or self.responses_dropped):
            warnings.warn(text, DroppedExamplesWarning, stacklevel=stacklevel)


class Prepared(NamedTuple):
    """``(dataset, stats)`` as returned by the loading and tokenising functions."""

    dataset: datasets.Dataset
    stats: DataStats


def rows_or_dataset(data):
    """A ``datasets.Dataset`` as is, or a list of dict rows (kept in Python: rows of mixed kinds,
    e.g. text and chat prompts, cannot become one Arrow table before they are normalised)."""
    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, datasets.DatasetDict):
        raise TypeError(f"data: got a DatasetDict with splits {list(data)}; pick one split")
    if isinstance(data, list | tuple):
        if not data:
            raise ValueError("data: expected at least one example, got an empty list")
        return list(data)
    raise TypeError(f"data: expected a datasets.Dataset or a list of dicts, got {type(data).__name__}")


def column_names(data) -> list[str]:
    if isinstance(data, datasets.Dataset):
        return data.column_names
    names: dict[str, None] = {}
    for row in data:
        if isinstance(row, Mapping):
            names.update(dict.fromkeys(row))
    return list(names)


def _map_rows(data, fn, features: datasets.Features, num_proc: int | None, desc: str) -> datasets.Dataset:
    if len(data) == 0:  # map over no rows would not add the new columns
        return datasets.Dataset.from_list([], features=features)
    if isinstance(data, datasets.Dataset):
        return data.map(fn, remove_columns=data.column_names, features=features, num_proc=num_proc, desc=desc)
    return datasets.Dataset.from_list([fn(row) for row in data], features=features)


def as_dataset(data) -> datasets.Dataset:
    data = rows_or_dataset(data)
    return data if isinstance(data, datasets.Dataset) else datasets.Dataset.from_list(data)


def k_histogram(ds: datasets.Dataset, column: str) -> dict[int, int]:
    if len(ds) == 0:
        return {}
    col = ds.select_columns([column]).with_format("arrow")[:].column(column)  # through any indices
    lengths = pc.list_value_length(col.combine_chunks())
    vals, counts = np.unique(lengths.to_numpy(zero_copy_only=False), return_counts=True)
    return {int(v): int(c) for v, c in zip(vals, counts)}


def _collect_drops(mapped: datasets.Dataset, stage: str) -> tuple[dict[str, int], dict[str, str]]:
    reasons = mapped["_drop_reason"]
    dropped = Counter(r for r in reasons if r)
    examples: dict[str, str] = {}
    if dropped:
        details = mapped["_drop_detail"]
        for i, (r, d) in enumerate(zip(reasons, details)):
            if r and r not in examples:
                examples[r] = f"{stage} input row {i}: {d}"
    return dict(dropped), examples


def map_counting_drops(
    data, fn, blank: dict, features: datasets.Features, *, on_bad: str, num_proc, desc: str, stage: str
) -> tuple[datasets.Dataset, dict[str, int], dict[str, str]]:
    """Map ``fn`` over the rows. A row whose ``fn`` raises :class:`ExampleError` is dropped, counted by
    reason with its first example (``on_bad="drop"``), or the error propagates (``"raise"``); ``blank``
    fills a dropped row until the filter removes it. Returns ``(kept, dropped, examples)``."""

    def safe(example):
        try:
            out = fn(example)
        except ExampleError as err:
            if on_bad == "raise":
                raise
            return {**blank, "_drop_reason": err.reason, "_drop_detail": str(err)}
        return {**out, "_drop_reason": "", "_drop_detail": ""}

    mapped = _map_rows(data, safe, features, num_proc, desc)
    dropped, examples = _collect_drops(mapped, stage)
    kept = mapped.filter(lambda r: not r, input_columns="_drop_reason", num_proc=num_proc).flatten_indices()
    return kept.remove_columns(["_drop_reason", "_drop_detail"]), dropped, examples
