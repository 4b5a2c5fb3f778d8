"""ncakit.metrics: TRL's names and values for K = 2, and K-way analogues checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ncakit import losses as L
from ncakit.metrics import preference_metrics, reward_ranks, to_floats


def test_k2_matches_trl_definitions():
    pol = torch.tensor([[-1.0, -3.0], [-2.0, -1.0], [-5.0, -6.0]])
    ref = torch.tensor([[-2.0, -2.0], [-2.0, -2.0], [-5.0, -5.0]])
    beta = 0.5
    out = L.dpo(pol, ref, beta=beta)
    m = to_floats(preference_metrics(out, pol))
    chosen = beta * (pol[:, 0] - ref[:, 0])  # [0.5, 0, 0]
    rejected = beta * (pol[:, 1] - ref[:, 1])  # [-0.5, 0.5, -0.5]
    # TRL: rewards/chosen = mean(beta * chosen log-ratio), accuracies = mean(chosen > rejected), ...
    assert m["rewards/chosen"] == pytest.approx(chosen.mean().item())
    assert m["rewards/rejected"] == pytest.approx(rejected.mean().item())
    assert m["rewards/margins"] == pytest.approx((chosen - rejected).mean().item())
    assert m["rewards/accuracies"] == pytest.approx(2 / 3)  # rows 0 and 2 are ordered right
    assert m["logps/chosen"] == pytest.approx(pol[:, 0].mean().item())
    assert m["logps/rejected"] == pytest.approx(pol[:, 1].mean().item())
    assert m["labels/entropy"] == pytest.approx(0.0)  # one-hot labels
    assert not any(k.startswith("rewards/rank_") for k in m)


def test_kway_ranks_accuracies_and_mask():
    # One prompt, K = 4, responses given in scrambled reward order; the last one is padding.
    rewards = torch.tensor([[1.0, 5.0, 3.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    pol = torch.tensor([[-1.0, 2.0, 3.0, 99.0]])  # log-ratios with ref = 0, beta = 1
    out = L.nca(pol, torch.zeros(1, 4), rewards, beta=1.0, mask=mask)
    m = to_floats(preference_metrics(out, pol, rewards, mask))
    # rank 1 = column 1 (r=5, r_hat=2), rank 2 = column 2 (r=3, r_hat=3), rank 3 = column 0 (r=1, r_hat=-1)
    assert m["rewards/rank_1"] == 2.0 and m["rewards/rank_2"] == 3.0 and m["rewards/rank_3"] == -1.0
    assert m["rewards/rank_4"] == 0.0  # no prompt has a 4th valid response
    assert m["rewards/chosen"] == 2.0
    assert m["rewards/rejected"] == pytest.approx((3.0 - 1.0) / 2)  # padding excluded
    assert m["rewards/accuracies"] == pytest.approx(0.5)  # beats column 0, loses to column 2
    assert m["rewards/top1_accuracy"] == 0.0  # argmax r_hat (col 2; padding ignored) != argmax r (col 1)
    w = L.soft_labels(rewards, 1.0, mask)[0, :3]
    assert m["labels/entropy"] == pytest.approx(-(w * w.log()).sum().item(), rel=1e-6)


def test_reward_ranks_are_stable_and_put_padding_last():
    r = torch.tensor([[2.0, 2.0, 7.0, 1.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert reward_ranks(r, r.shape, mask).tolist() == [[2, 0, 1, 3]]
    assert reward_ranks(None, torch.Size([2, 3])).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_uniform_labels_entropy_is_log_k():
    rewards = torch.zeros(2, 4)
    out = L.infonca(torch.zeros(2, 4), torch.zeros(2, 4), rewards)
    m = preference_metrics(out, torch.zeros(2, 4), rewards)
    assert float(m["labels/entropy"]) == pytest.approx(math.log(4))


def test_top1_ties_share_the_credit():
    """Reason: at step 0 every implicit reward is 0; counting the tie as a hit reported 1.0 (a perfect
    score) where the policy knows nothing: a tie among m valid responses counts 1/m (chance)."""
    rewards = torch.tensor([[3.0, 1.0, 2.0, 0.0], [1.0, 2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    zero = torch.zeros(2, 4)
    out = L.nca(zero, zero, rewards, beta=1.0, mask=mask)
    m = to_floats(preference_metrics(out, zero, rewards, mask))
    assert m["rewards/top1_accuracy"] == pytest.approx((1 / 4 + 1 / 3) / 2)  # padding is not a contender
    # a tie between the chosen response and one other: half a hit; a clear win: a whole one
    pol = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 2.0, 1.0, 0.0]])
    out = L.nca(pol, zero, rewards, beta=1.0, mask=mask)
    assert to_floats(preference_metrics(out, pol, rewards, mask))["rewards/top1_accuracy"] == pytest.approx(
        0.75
    )
