"""Annotated source, labml.ai style: a library function's real code beside the maths it computes.

The tutorials explain a loss by showing its source (read with :func:`inspect.getsource`, never
copied) split into blocks, each next to a note (markdown with LaTeX)::

    >>> from ncakit.losses import dpo
    >>> view = annotated(dpo, [
    ...     ("def dpo(", "The signature every loss shares."),
    ...     ("h = beta", "The margin $h$ between the implicit rewards."),
    ...     ("return", "The loss and the detached diagnostics."),
    ... ])
    >>> len(view.blocks), "".join(b.code for b in view.blocks) == inspect.getsource(dpo)
    (3, True)

An anchor is a substring of a source line (or, if no line contains it, a regular expression
searched in each line; a compiled :class:`re.Pattern` is always a regex). Anchors are looked up in
order, each in the lines after the previous one's, and each starts a block that runs to the next
anchor (lines before the first anchor form an unannotated leading block). The blocks concatenate
back to exactly ``inspect.getsource(fn)``: nothing is dropped, nothing is rewritten. An anchor
that matches no later line raises :class:`StaleAnchorError` naming the anchor and the function, so
a notebook can never silently drift from the library it explains.

In Jupyter the result renders as a two-column table (note | code, the code highlighted with
pygments when it is installed, else a plain ``<pre>``); elsewhere as plain text.

The module also holds the tutorial's hand-derived gradients of DPO, InfoNCA and NCA with respect to
the policy log-probs (:func:`dpo_logp_grad`, :func:`infonca_logp_grad`, :func:`nca_logp_grad`),
written from MATH.md's formulas, so that the notebook and ``tests/test_annotate.py`` check the very
same expressions against autograd on the library losses.

It imports the standard library only (pygments lazily, if installed; the gradients use tensor
methods and :func:`ncakit.losses.soft_labels`, imported when called).
"""

from __future__ import annotations

import html
import inspect
import re
import textwrap
from typing import NamedTuple

__all__ = [
    "Annotated",
    "Block",
    "StaleAnchorError",
    "annotated",
    "source_lines",
    "dpo_logp_grad",
    "infonca_logp_grad",
    "nca_logp_grad",
]


class StaleAnchorError(LookupError):
    """An anchor of :func:`annotated` / :func:`source_lines` matches no line of the function's
    source (after the previous anchor): the library changed and the notes must be updated."""


class Block(NamedTuple):
    """One annotated block: the ``note`` (markdown, ``""`` for none), the ``code`` (whole source
    lines, each with its newline, exactly as in the file) and where it starts (``lineno``, the
    line's number in the file; ``anchor``, the anchor that started it, ``None`` for a leading block)."""

    note: str
    code: str
    lineno: int
    anchor: object = None


def _qualified_name(fn) -> str:
    module = getattr(fn, "__module__", None)
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)
    return f"{module}.{name}" if module else name


def _source(fn) -> tuple[list[str], int, str]:
    """(source lines with newlines, first line's number in its file, the file), via inspect."""
    try:
        lines, start = inspect.getsourcelines(fn)
    except (OSError, TypeError) as err:
        raise TypeError(f"annotated: cannot read the source of {_qualified_name(fn)}: {err}") from err
    try:
        path = inspect.getsourcefile(fn) or "?"
    except TypeError:
        path = "?"
    return lines, max(start, 1), path


def _matches(anchor, line: str) -> bool:
    if isinstance(anchor, re.Pattern):
        return anchor.search(line) is not None
    return anchor in line


def _find(anchor, lines: list[str], begin: int, what: str) -> int:
    """Index of the first line at or after ``begin`` that ``anchor`` matches (a substring first; a
    str that no line contains is then tried as a regex); :class:`StaleAnchorError` if none does."""
    if not isinstance(anchor, str | re.Pattern) or (isinstance(anchor, str) and not anchor.strip()):
        raise TypeError(f"{what}: an anchor must be a non-empty str or a re.Pattern, got {anchor!r}")
    candidates = [anchor]
    if isinstance(anchor, str):
        try:
            candidates.append(re.compile(anchor))
        except re.error:
            pass
    for candidate in candidates:
        for i in range(begin, len(lines)):
            if _matches(candidate, lines[i]):
                return i
    earlier = [i for i in range(begin) for c in candidates if _matches(c, lines[i])]
    where = f"after source line {begin}" if begin else "in the source"
    hint = (
        f" (it matches source line {earlier[0] + 1}, before the previous anchor: anchors must follow "
        "the order of the source)"
        if earlier
        else ""
    )
    shown = anchor.pattern if isinstance(anchor, re.Pattern) else anchor
    raise StaleAnchorError(
        f"{what}: anchor {shown!r} matches no line {where}{hint}. The library's code changed; "
        "update the anchor and its note to the current source."
    )


def annotated(fn, notes) -> Annotated:
    """The source of ``fn`` split at the ``notes``' anchors, each block beside its note.

    Args:
        fn: a function (or class, method) whose source :func:`inspect.getsource` can read, e.g.
            ``ncakit.losses.nca``.
        notes: a sequence of ``(anchor, note)`` pairs in source order. ``anchor``: a substring of
            the line that starts the block (a str that no later line contains is tried as a regex;
            a compiled ``re.Pattern`` is always one). ``note``: markdown with ``$...$`` LaTeX.

    Returns:
        An :class:`Annotated` whose ``blocks`` concatenate back to exactly ``inspect.getsource(fn)``.

    Raises:
        StaleAnchorError: an anchor matches no line after the previous anchor's line.
    """
    lines, start, path = _source(fn)
    name = _qualified_name(fn)
    notes = list(notes)
    if not notes:
        raise ValueError(f"annotated({name}): give at least one (anchor, note) pair")
    starts, begin = [], 0
    for k, pair in enumerate(notes):
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"annotated({name}): note {k + 1} should be an (anchor, note) pair, got {pair!r}")
        anchor, note = pair
        what = f"annotated({name}), note {k + 1} of {len(notes)}"
        i = _find(anchor, lines, begin, what)
        starts.append((i, anchor, "" if note is None else str(note)))
        begin = i + 1
    blocks = []
    if starts[0][0] > 0:
        blocks.append(Block("", "".join(lines[: starts[0][0]]), start, None))
    for j, (i, anchor, note) in enumerate(starts):
        end = starts[j + 1][0] if j + 1 < len(starts) else len(lines)
        blocks.append(Block(note, "".join(lines[i:end]), start + i, anchor))
    return Annotated(name, path, start, tuple(blocks))


def source_lines(fn, start_anchor, end_anchor=None) -> str:
    """The lines of ``fn``'s source from the first line ``start_anchor`` matches through the first
    line at or after it that ``end_anchor`` matches (just that one line if ``end_anchor`` is None),
    each with its newline, exactly as in the file. Anchors as in :func:`annotated`.

    >>> from ncakit.losses import dpo
    >>> source_lines(dpo, "h = beta").strip()
    'h = beta * (s[:, 0] - s[:, 1])'
    """
    lines, _, _ = _source(fn)
    what = f"source_lines({_qualified_name(fn)})"
    i = _find(start_anchor, lines, 0, what)
    j = i if end_anchor is None else _find(end_anchor, lines, i, what)
    return "".join(lines[i : j + 1])


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------

_MATH = re.compile(r"\$\$.+?\$\$|\$[^$\n]+?\$", re.DOTALL)
_CODE = re.compile(r"`([^`\n]+)`")


def _inline(text: str) -> str:
    """Markdown inline markup to HTML: `code`, **bold**, *italic*, [text](url); $math$ kept verbatim
    (HTML-escaped only, for MathJax to typeset)."""
    kept: list[str] = []

    def keep(fragment: str) -> str:
        kept.append(fragment)
        return f"\x00{len(kept) - 1}\x00"

    text = _MATH.sub(lambda m: keep(html.escape(m.group(0), quote=False)), text)
    text = _CODE.sub(lambda m: keep(f"<code>{html.escape(m.group(1), quote=False)}</code>"), text)
    text = html.escape(text, quote=False)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"(?<![*\w])\*(?!\s)(.+?)(?<!\s)\*(?![*\w])", r"<em>\1</em>", text)
    text = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', text)
    return re.sub(r"\x00(\d+)\x00", lambda m: kept[int(m.group(1))], text)


def markdown_to_html(note: str) -> str:
    """A small markdown subset for the notes: paragraphs, ``- `` bullet lists, ``$$...$$`` display
    maths and the inline markup of :func:`_inline`. Anything else is shown as text."""
    parts = []
    for para in re.split(r"\n\s*\n", textwrap.dedent(note).strip()):
        rows = para.splitlines()
        if (
            rows
            and all(r.lstrip().startswith(("- ", "* ")) or r.startswith("  ") for r in rows)
            and (rows[0].lstrip().startswith(("- ", "* ")))
        ):
            items, current = [], []
            for r in rows:
                if r.lstrip().startswith(("- ", "* ")):
                    if current:
                        items.append(" ".join(current))
                    current = [r.lstrip()[2:]]
                else:
                    current.append(r.strip())
            items.append(" ".join(current))
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
        else:
            parts.append(f"<p>{_inline(' '.join(r.strip() for r in rows))}</p>")
    return "".join(parts)


def _highlighted_lines(source: str) -> list[str] | None:
    """One HTML string per source line (inline styles, every line's spans closed), or None
    without pygments."""
    try:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer
    except ImportError:
        return None
    # Highlight the whole function at once (a docstring spans several blocks), then split: pygments
    # closes and reopens its spans at every newline, so each line is balanced HTML on its own.
    out = highlight(
        source, PythonLexer(stripnl=False, ensurenl=True), HtmlFormatter(nowrap=True, noclasses=True)
    )
    lines = out.split("\n")
    n = len(source.splitlines())
    return lines[:n] if len(lines) >= n else None


_TABLE = (
    "border-collapse:collapse;width:100%;table-layout:fixed;font-size:13px;"
    "border:1px solid #ddd;margin:0.5em 0"
)
_NOTE = "width:38%;vertical-align:top;text-align:left;padding:4px 12px;background:#fafafa;border-top:1px solid #eee"
_CODE_TD = (
    "vertical-align:top;text-align:left;padding:2px 8px;border-top:1px solid #eee;border-left:1px solid #ddd"
)
_PRE = (
    "margin:0;padding:0;background:transparent;white-space:pre;overflow-x:auto;line-height:1.4;font-size:12px"
)


class Annotated:
    """A function's source in annotated blocks (see :func:`annotated`).

    Attributes:
        name: ``module.qualname`` of the function; path: its file; lineno: its first line there;
        blocks: the :class:`Block` s in source order; ``source`` (property): their concatenation,
        which equals ``inspect.getsource(fn)``.
    """

    def __init__(self, name: str, path: str, lineno: int, blocks: tuple[Block, ...]):
        self.name, self.path, self.lineno, self.blocks = name, path, lineno, blocks

    @property
    def source(self) -> str:
        return "".join(b.code for b in self.blocks)

    def _where(self) -> str:
        path = self.path.replace("\\", "/")
        short = path[path.rfind("/ncakit/") + 1 :] if "/ncakit/" in path else path.rsplit("/", 1)[-1]
        return f"{short}, line {self.lineno}"

    def __repr__(self) -> str:
        out = [f"annotated({self.name})  [{self._where()}, {len(self.blocks)} blocks]"]
        for block in self.blocks:
            out.append("")
            if block.note:
                out += ["  " + row for row in textwrap.dedent(block.note).strip().splitlines()]
            out += [f"  {block.lineno + i:>4} | {row}" for i, row in enumerate(block.code.splitlines())]
        return "\n".join(out)

    __str__ = __repr__

    def _repr_markdown_(self) -> str:
        out = [f"**`{self.name}`** ({self._where()})"]
        for block in self.blocks:
            if block.note:
                out.append(textwrap.dedent(block.note).strip())
            out.append("```python\n" + block.code.rstrip("\n") + "\n```")
        return "\n\n".join(out)

    def _repr_html_(self) -> str:
        styled = _highlighted_lines(self.source)
        plain = [html.escape(row, quote=False) for row in self.source.splitlines()]
        rows_html = styled if styled is not None else plain
        rows = [
            f'<tr><th style="{_NOTE};font-weight:normal">Note</th><th style="{_CODE_TD};font-weight:normal">'
            f"<code>{html.escape(self.name)}</code> ({html.escape(self._where())})</th></tr>"
        ]
        first = 0
        for block in self.blocks:
            n = len(block.code.splitlines())
            code = "\n".join(rows_html[first : first + n])
            first += n
            note = markdown_to_html(block.note) if block.note else ""
            rows.append(
                f'<tr><td style="{_NOTE}">{note}</td>'
                f'<td style="{_CODE_TD}"><pre style="{_PRE}">{code}</pre></td></tr>'
            )
        return f'<table class="ncakit-annotated" style="{_TABLE}">' + "".join(rows) + "</table>"


# --------------------------------------------------------------------------------------------
# The tutorial's derived gradients (MATH.md), per prompt, w.r.t. the policy log-probs [B, K]
# --------------------------------------------------------------------------------------------
# No mask, no validation: these are the textbook formulas that tutorials/06 derives and checks
# against autograd on the library losses (sum over prompts, so row b is dL_b / d log π_θ(y_bi)).


def dpo_logp_grad(policy_logps, ref_logps, *, beta: float = 0.1):
    """∂L_DPO/∂log π_θ for ``[B, 2]`` inputs, chosen in column 0 (MATH.md, DPO family).

    With h = β·(s_w − s_l), L = −log σ(h) and dL/dh = −σ(−h): the chosen response gets
    −β·σ(−h), the rejected +β·σ(−h) (the two sum to zero).
    """
    s = policy_logps.detach() - ref_logps.detach()
    h = beta * (s[:, 0] - s[:, 1])
    push = beta * (-h).sigmoid()
    return (-push).unsqueeze(-1) * s.new_tensor([1.0, -1.0])


def infonca_logp_grad(policy_logps, ref_logps, rewards, *, beta: float = 0.1, alpha: float = 1.0):
    """∂L_InfoNCA/∂log π_θ ``[B, K]`` (MATH.md, InfoNCA): β·(softmax(r̂) − w) per response, w =
    softmax(r/α); each row sums to zero."""
    from ncakit.losses import soft_labels

    r_hat = beta * (policy_logps.detach() - ref_logps.detach())
    return beta * (r_hat.softmax(dim=-1) - soft_labels(rewards, alpha).to(r_hat.dtype))


def nca_logp_grad(policy_logps, ref_logps, rewards, *, beta: float = 0.1, alpha: float = 1.0):
    """∂L_NCA/∂log π_θ ``[B, K]`` (MATH.md, NCA): β·(−w_i·σ(−r̂_i) + σ(r̂_i)/K) per response; the
    coefficient of response i depends on r̂_i alone and vanishes at r̂_i = log(K·w_i)."""
    from ncakit.losses import soft_labels

    r_hat = beta * (policy_logps.detach() - ref_logps.detach())
    w = soft_labels(rewards, alpha).to(r_hat.dtype)
    k = r_hat.shape[-1]
    return beta * (-w * (-r_hat).sigmoid() + r_hat.sigmoid() / k)
