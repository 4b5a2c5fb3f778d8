"""Parity with TRL 1.16's DPOTrainer losses, driving TRL's own code.

TRL computes its pairwise losses inline in ``DPOTrainer._compute_loss``. We call that method with a
stand-in ``self`` (only the attributes it reads) and a stand-in model whose per-token log-probs we
choose, with precomputed reference log-probs, so TRL's formula lines run unmodified on the same
numbers ncakit sees. Skipped cleanly when trl is not installed.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from ncakit import get_loss
from ncakit import losses as L

trl_dpo = pytest.importorskip("trl.trainer.dpo_trainer", reason="trl not installed")


class _Accel:
    device = torch.device("cpu")

    def gather(self, t):
        return t

    gather_for_metrics = gather


class _TokenLogpModel(torch.nn.Module):
    """Returns the per-token log-probs it was built with, shaped like TRL's fused-LM-head output."""

    def __init__(self, per_token_logps):
        super().__init__()
        self.per_token = per_token_logps

    def forward(self, input_ids=None, labels=None, **kwargs):
        n, t = self.per_token.shape
        return SimpleNamespace(
            log_probs=self.per_token,
            entropy=torch.zeros(n, t),
            mean_logits=torch.zeros(n, t),
            is_top1=torch.zeros(n, t, dtype=torch.bool),
        )


def _fake_trainer(loss_type, beta, label_smoothing=0.0):
    return SimpleNamespace(
        model=SimpleNamespace(training=True),
        accelerator=_Accel(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=label_smoothing,
        use_weighting=False,
        _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
        _total_train_tokens=0,
        _tp_size=1,
    )


def _run_trl(loss_type, per_token, completion_mask, ref_c, ref_r, beta, label_smoothing=0.0, **overrides):
    """TRL's batch layout: rows [chosen..., rejected...]; completion_mask marks completion tokens.

    ``overrides`` set other trainer attributes TRL reads (e.g. ``f_divergence_type="js_divergence"``,
    ``f_alpha_divergence_coef=0.5``). Returns (TRL's batch loss, TRL's logged metrics).
    """
    n, t = completion_mask.shape
    inputs = {
        "input_ids": torch.zeros(n, t, dtype=torch.long),
        "attention_mask": torch.ones(n, t, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": ref_c,
        "ref_rejected_logps": ref_r,
    }
    fake = _fake_trainer(loss_type, beta, label_smoothing)
    for key, value in overrides.items():
        setattr(fake, key, value)
    loss = trl_dpo.DPOTrainer._compute_loss(fake, _TokenLogpModel(per_token), inputs, return_outputs=False)
    return loss, fake._metrics["train"]


CASES = [
    ("sigmoid", "dpo", {}),
    ("ipo", "ipo", {}),
    ("hinge", "hinge", {}),
    ("robust", "robust_dpo", {"label_smoothing": 0.2}),
    ("nca_pair", "nca_pair", {}),
    ("bco_pair", "biased_nca", {}),
]


@pytest.mark.parametrize("trl_name, ours, extra", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", range(3))
def test_loss_and_metrics_match_trl(trl_name, ours, extra, seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 7
    beta = [0.1, 0.5, 2.0][seed]
    # Per-token log-probs for the 2B sequences (chosen rows first), completion masks of varied length.
    completion_mask = torch.zeros(2 * B, T + 1, dtype=torch.long)
    for i in range(2 * B):
        start = 1 + int(torch.randint(0, 3, (1,), generator=g))
        completion_mask[i, start:] = 1
    shift_mask = completion_mask[:, 1:]
    per_token = (-torch.rand(2 * B, T, generator=g) * 3) * shift_mask  # TRL zeroes non-completion tokens
    logps = per_token.sum(dim=1)
    ref = logps + torch.randn(2 * B, generator=g)
    ref_c, ref_r = ref[:B], ref[B:]

    trl_loss, trl_metrics = _run_trl(
        trl_name, per_token, completion_mask, ref_c, ref_r, beta, extra.get("label_smoothing", 0.0)
    )

    policy = L.pairwise_to_k(logps[:B], logps[B:])
    reference = L.pairwise_to_k(ref_c, ref_r)
    kwargs = dict(extra)
    if ours == "ipo":  # TRL length-normalises IPO by completion tokens; ncakit takes the lengths
        lengths = shift_mask.sum(dim=1).float()
        kwargs["lengths"] = L.pairwise_to_k(lengths[:B], lengths[B:])
    out = get_loss(ours)(policy, reference, beta=beta, **kwargs)
    torch.testing.assert_close(out.loss.mean(), trl_loss, rtol=1e-6, atol=1e-6)

    # TRL's logged reward metrics (beta * summed log-ratio) equal ncakit's.
    from ncakit.metrics import preference_metrics

    ours_m = preference_metrics(L.dpo(policy, reference, beta=beta), policy)
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "rewards/accuracies",
        "logps/chosen",
        "logps/rejected",
    ):
        assert float(ours_m[key]) == pytest.approx(trl_metrics[key][0], rel=1e-5, abs=1e-6), key
