"""ncakit.annotate: the annotated-source renderer of tutorials/06 and the gradients it derives.

- the blocks are a partition of ``inspect.getsource(fn)``: concatenated they give it back exactly
  (nothing dropped, nothing copied), each block starts at its anchor's line;
- an anchor that no longer matches the source raises StaleAnchorError naming the anchor and fn;
- every rendering (HTML with and without pygments, markdown, plain text) shows every source line;
- the hand-derived gradients of DPO, InfoNCA and NCA w.r.t. the policy log-probs equal autograd
  on the library losses, and satisfy MATH.md's facts (sums to zero, optimum, anchors).
"""

from __future__ import annotations

import html
import inspect
import math
import re
import sys

import pytest
import torch

from ncakit import annotate
from ncakit.annotate import (
    StaleAnchorError,
    annotated,
    dpo_logp_grad,
    infonca_logp_grad,
    nca_logp_grad,
    source_lines,
)
from ncakit.losses import dpo, infonca, log_ratios, nca, pairwise_setup, soft_labels

# Anchors like the notebook's: the block structure of each loss the tutorial annotates.
NOTES = {
    dpo: [
        ("def dpo(", "signature"),
        ("h = beta", "the margin $h$"),
        ("return loss_output", "$-\\log\\sigma(h)$"),
    ],
    infonca: [
        ("if validate:", "checks"),
        ("s = log_ratios", "$s$"),
        ("w = soft_labels", "$w$"),
        ("logits = beta * s", "$\\hat r$"),
        ("if mask is not None", "padding"),
        ("log_p = F.log_softmax", "log-probabilities"),
        ("if mask is not None", "padding again"),
        ("loss = -(w * log_p)", "the loss"),
    ],
    nca: [
        ("def nca(", "signature"),
        ("r_hat = beta * s", "$\\hat r$"),
        ("if mask is None:", "no padding"),
        ("else:", "padding"),
        (re.compile(r"^\s*loss = "), "the loss (a compiled regex anchor)"),
        ("return", "output"),
    ],
    log_ratios: [("dtype = compute_dtype", "dtype"), ("if mask", "mask")],
    soft_labels: [(r"r = rewards\.detach\(\)", "a str that only matches as a regex"), ("return", "w")],
    pairwise_setup: [("if validate:", "checks"), ("s = log_ratios", "s")],
    nca_logp_grad: [("r_hat = beta", "r̂"), ("return beta", "the gradient")],
}
CASES = pytest.mark.parametrize("fn", list(NOTES), ids=[f.__name__ for f in NOTES])


def _anchor_matches(anchor, line: str) -> bool:
    """The documented rule: a compiled pattern is a regex; a str is a substring, else a regex."""
    if isinstance(anchor, re.Pattern):
        return anchor.search(line) is not None
    if anchor in line:
        return True
    try:
        return re.search(anchor, line) is not None
    except re.error:
        return False


def _text_of_html(markup: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", markup))


@CASES
def test_blocks_concatenate_back_to_the_source_exactly(fn):
    view = annotated(fn, NOTES[fn])
    source = inspect.getsource(fn)
    assert view.source == source
    assert "".join(b.code for b in view.blocks) == source
    # whole lines only, in order, each annotated block starting on a line its anchor matches
    lines, first = inspect.getsourcelines(fn)
    anchored = [b for b in view.blocks if b.anchor is not None]
    assert len(anchored) == len(NOTES[fn])
    for block, (anchor, note) in zip(anchored, NOTES[fn], strict=True):
        assert block.note == note
        assert block.code.endswith("\n")
        head = lines[block.lineno - first]
        assert block.code.startswith(head)
        assert _anchor_matches(anchor, head), (anchor, head)
    linenos = [b.lineno for b in view.blocks]
    assert linenos == sorted(set(linenos)) and linenos[0] == first
    # a leading, unannotated block exists exactly when the first anchor is not on the first line
    assert (view.blocks[0].anchor is None) == (anchored[0].lineno > first)


def test_a_repeated_anchor_takes_the_next_match_in_source_order():
    view = annotated(infonca, NOTES[infonca])
    masks = [b for b in view.blocks if b.anchor == "if mask is not None"]
    assert len(masks) == 2 and masks[0].lineno < masks[1].lineno
    assert "masked_fill" in masks[0].code and "torch.where" in masks[1].code


def test_a_stale_anchor_raises_a_clear_error_naming_anchor_and_function():
    with pytest.raises(StaleAnchorError) as err:
        annotated(nca, [("r_hat = beta * s", "fine"), ("r_hat = gamma * s", "stale")])
    msg = str(err.value)
    assert "'r_hat = gamma * s'" in msg and "ncakit.losses.nca" in msg and "note 2 of 2" in msg
    assert isinstance(err.value, LookupError)


def test_anchors_out_of_source_order_are_reported_as_such():
    with pytest.raises(StaleAnchorError, match="order of the source") as err:
        annotated(dpo, [("return loss_output", "last line"), ("h = beta", "before it")])
    assert "ncakit.losses.dpo" in str(err.value) and "'h = beta'" in str(err.value)


def test_bad_notes_are_refused():
    with pytest.raises(ValueError, match="at least one"):
        annotated(dpo, [])
    with pytest.raises(TypeError, match="pair"):
        annotated(dpo, ["h = beta"])
    with pytest.raises(TypeError, match="anchor"):
        annotated(dpo, [("  ", "blank anchor")])
    with pytest.raises(TypeError, match="cannot read the source"):
        annotated(len, [("x", "a builtin has no Python source")])


def test_source_lines_cuts_whole_lines_from_the_source():
    source = inspect.getsource(nca)
    one = source_lines(nca, "r_hat = beta * s")
    assert one.strip() == "r_hat = beta * s" and one in source
    span = source_lines(nca, "if mask is None:", "else:")
    assert span in source and span.startswith("    if mask is None:") and span.rstrip().endswith("else:")
    with pytest.raises(StaleAnchorError, match="ncakit.losses.nca"):
        source_lines(nca, "no such line anywhere")


def _every_line_in(text: str, fn) -> list[str]:
    return [line for line in inspect.getsource(fn).splitlines() if line.strip() and line not in text]


@CASES
def test_html_shows_every_source_line(fn):
    view = annotated(fn, NOTES[fn])
    markup = view._repr_html_()
    assert markup.count("<tr>") == len(view.blocks) + 1  # a header row, then one row per block
    assert not _every_line_in(_text_of_html(markup), fn)


def test_html_without_pygments_falls_back_to_pre(monkeypatch):
    monkeypatch.setitem(sys.modules, "pygments", None)  # `import pygments` now raises ImportError
    assert annotate._highlighted_lines("x = 1\n") is None
    view = annotated(nca, NOTES[nca])
    markup = view._repr_html_()
    assert "<pre" in markup and "color:" not in markup.split("</th>")[-1]
    assert not _every_line_in(_text_of_html(markup), nca)


def test_text_and_markdown_show_every_line_and_every_note():
    view = annotated(nca, NOTES[nca])
    for rendered in (repr(view), str(view), view._repr_markdown_()):
        assert not _every_line_in(rendered, nca)
        assert all(note in rendered for _, note in NOTES[nca])
    assert view._repr_markdown_().count("```python") == len(view.blocks)


def test_notes_are_markdown_with_their_html_escaped_and_their_maths_kept():
    view = annotated(dpo, [("h = beta", "**margin** $h<0$ `x<y` <script>alert(1)</script>\n\n- a\n- *b*")])
    note_cell = view._repr_html_().split("<td")[-2]
    assert "<strong>margin</strong>" in note_cell and "<em>b</em>" in note_cell and "<ul>" in note_cell
    assert "$h&lt;0$" in note_cell and "<code>x&lt;y</code>" in note_cell
    assert "<script>" not in note_cell and "&lt;script&gt;" in note_cell


# --------------------------------------------------------------------------------------------
# The tutorial's derived gradients against autograd on the library losses (float64)
# --------------------------------------------------------------------------------------------


def _autograd(loss_fn, policy_logps, *args, **kwargs) -> torch.Tensor:
    policy = policy_logps.clone().requires_grad_(True)
    loss_fn(policy, *args, **kwargs).loss.sum().backward()  # sum: row b is dL_b / d log π_θ(y_b·)
    return policy.grad


def _batch(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    policy = -20 + 3 * torch.randn(7, k, generator=g, dtype=torch.float64)
    ref = policy + torch.randn(7, k, generator=g, dtype=torch.float64)
    rewards = 10 * torch.rand(7, k, generator=g, dtype=torch.float64)
    return policy, ref, rewards


@pytest.mark.parametrize("beta", [0.01, 0.5, 2.0])
def test_dpo_gradient_by_hand_equals_autograd(beta):
    policy, ref, _ = _batch(2, seed=1)
    by_hand = dpo_logp_grad(policy, ref, beta=beta)
    torch.testing.assert_close(by_hand, _autograd(dpo, policy, ref, beta=beta), rtol=0, atol=1e-12)
    torch.testing.assert_close(by_hand.sum(dim=1), torch.zeros(7, dtype=torch.float64), rtol=0, atol=1e-15)
    # MATH.md anchor at policy = reference: dL/ds_w = −β/2
    at_ref = dpo_logp_grad(
        torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64), beta=beta
    )
    assert at_ref[0, 0].item() == pytest.approx(-beta / 2, abs=1e-15)


@pytest.mark.parametrize(("k", "beta", "alpha"), [(2, 0.1, 1.0), (4, 0.5, 1.0), (8, 2.0, 0.3)])
def test_infonca_gradient_by_hand_equals_autograd(k, beta, alpha):
    policy, ref, rewards = _batch(k, seed=k)
    by_hand = infonca_logp_grad(policy, ref, rewards, beta=beta, alpha=alpha)
    got = _autograd(infonca, policy, ref, rewards, beta=beta, alpha=alpha)
    torch.testing.assert_close(by_hand, got, rtol=0, atol=1e-12)
    # MATH.md: the coefficients sum to zero, so a per-prompt shift of every log-prob changes nothing
    torch.testing.assert_close(by_hand.sum(dim=1), torch.zeros(7, dtype=torch.float64), rtol=0, atol=1e-14)
    shifted = infonca_logp_grad(policy - 3.0, ref, rewards, beta=beta, alpha=alpha)
    torch.testing.assert_close(shifted, by_hand, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("k", "beta", "alpha"), [(2, 0.1, 1.0), (4, 0.5, 1.0), (8, 2.0, 0.3)])
def test_nca_gradient_by_hand_equals_autograd(k, beta, alpha):
    policy, ref, rewards = _batch(k, seed=10 + k)
    by_hand = nca_logp_grad(policy, ref, rewards, beta=beta, alpha=alpha)
    torch.testing.assert_close(
        by_hand, _autograd(nca, policy, ref, rewards, beta=beta, alpha=alpha), rtol=0, atol=1e-12
    )
    w = soft_labels(rewards, alpha)
    # MATH.md optimum: every coefficient vanishes at r̂_i = log(K·w_i) ...
    at_target = ref + torch.log(k * w) / beta
    assert nca_logp_grad(at_target, ref, rewards, beta=beta, alpha=alpha).abs().max().item() < 1e-12
    # ... and at policy = reference dL/dr̂_i = (1/K − w_i)/2, i.e. β times that per log-prob
    torch.testing.assert_close(
        nca_logp_grad(ref, ref, rewards, beta=beta, alpha=alpha), beta * (1 / k - w) / 2, rtol=0, atol=1e-15
    )


def test_nca_is_infonca_free_of_the_zero_sum_and_dpo_is_infonca_at_k2():
    # K = 2 with one-hot labels (α → 0): InfoNCA's gradient is DPO's (MATH.md, InfoNCA).
    policy, ref, _ = _batch(2, seed=3)
    one_hot = torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(7, 2)
    torch.testing.assert_close(
        infonca_logp_grad(policy, ref, one_hot, beta=0.3, alpha=1e-4),
        dpo_logp_grad(policy, ref, beta=0.3),
        rtol=0,
        atol=1e-12,
    )
    # NCA's coefficients do not sum to zero away from the reference (a common fall is felt).
    policy, ref, rewards = _batch(4, seed=4)
    sums = nca_logp_grad(policy, ref, rewards, beta=0.5).sum(dim=1)
    assert sums.abs().max().item() > 1e-3 and math.isfinite(sums.sum().item())
