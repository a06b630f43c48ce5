"""Sampled softmax with logQ correction and the streaming frequency estimator (ALGORITHMS.md §6, §8.7)."""

import math

import pytest
import torch

from recneg import build_loss
from recneg.data.interactions import Interactions
from recneg.errors import ConfigError
from recneg.models.base import TableView
from recneg.samplers.base import Negatives
from recneg.samplers.batch import BatchNegatives, InBatchConfig, InBatchSampler
from recneg.softmax import (
    SampledSoftmaxLoss,
    SoftmaxConfig,
    StreamingFrequencyEstimator,
    sampled_softmax_loss,
)

torch.set_num_threads(1)


def _hand_loss(pos, negs, log_q=None, pos_log_q=None, mask=None, tau=1.0):
    """Plain-python cross-entropy of one row: class 0 = the positive."""
    p = pos / tau - (pos_log_q or 0.0)
    logits = [p]
    for j, s in enumerate(negs):
        if mask is not None and mask[j]:
            continue
        logits.append(s / tau - (log_q[j] if log_q is not None else 0.0))
    m = max(logits)
    return m + math.log(sum(math.exp(x - m) for x in logits)) - p


def test_shared_negatives_match_hand_computation():
    u = torch.tensor([[1.0, 0.0], [0.5, -1.0]])
    p = torch.tensor([[0.2, 0.3], [1.0, 1.0]])
    v = torch.tensor([[1.0, 1.0], [-1.0, 0.5], [0.0, 2.0]])
    log_q = torch.tensor([math.log(0.5), math.log(2.0), math.log(0.1)])
    mask = torch.tensor([[False, True, False], [False, False, False]])
    neg = BatchNegatives(emb=v, log_q=log_q, mask=mask, pos_log_q=torch.tensor([0.3, -0.2]))
    for correct_positive in (False, True):
        got = sampled_softmax_loss(
            u, p, neg, temperature=0.5, correct_positive=correct_positive, reduction="none"
        )
        for b in range(2):
            negs = (v @ u[b]).tolist()
            want = _hand_loss(
                float(u[b] @ p[b]),
                negs,
                log_q.tolist(),
                float(neg.pos_log_q[b]) if correct_positive else None,
                mask[b].tolist(),
                tau=0.5,
            )
            assert got[b].item() == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize,correct_positive", [(False, False), (True, False), (False, True)])
def test_fused_shared_path_equals_the_per_row_path(reduction, normalize, correct_positive):
    """Shared negatives take the fused autograd.Function; the same set repeated per row takes autograd.

    Value and every gradient (queries, positives, negatives) must agree, with masks (a fully masked row
    included), a log Q of each shape and a positive logit far above the negatives (stability).
    """
    g = torch.Generator().manual_seed(7)
    n_rows, n, d = 6, 9, 4
    for log_q_shape in ((n,), (n_rows, n), None):
        u = torch.randn(n_rows, d, generator=g, dtype=torch.float64)
        p = torch.randn(n_rows, d, generator=g, dtype=torch.float64)
        v = torch.randn(n, d, generator=g, dtype=torch.float64)
        u[0] *= 30.0  # large logits: exp would overflow without the max shift
        mask = torch.rand(n_rows, n, generator=g) < 0.3
        mask[1] = True  # only the positive is left in row 1
        log_q = None if log_q_shape is None else torch.randn(*log_q_shape, generator=g, dtype=torch.float64)
        pos_log_q = torch.randn(n_rows, generator=g, dtype=torch.float64)
        grads, values = [], []
        for shared in (True, False):
            uu, pp, vv = (t.clone().requires_grad_(True) for t in (u, p, v))
            emb = vv if shared else vv.unsqueeze(0).expand(n_rows, n, d)
            neg = BatchNegatives(emb=emb, log_q=log_q, mask=mask, pos_log_q=pos_log_q)
            assert neg.shared is shared
            loss = sampled_softmax_loss(
                uu,
                pp,
                neg,
                temperature=0.3,
                normalize=normalize,
                correct_positive=correct_positive and log_q is not None,
                reduction=reduction,
            )
            assert torch.isfinite(loss).all()
            loss.sum().backward() if reduction == "none" else loss.backward()
            values.append(loss.detach())
            grads.append([uu.grad, pp.grad, vv.grad])
        torch.testing.assert_close(values[0], values[1], rtol=1e-10, atol=1e-10)
        for a, b in zip(*grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_no_shared_columns_gives_zero_loss():
    u, p = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    neg = BatchNegatives(
        emb=torch.zeros(0, 4), log_q=torch.zeros(0), mask=torch.zeros(3, 0, dtype=torch.bool)
    )
    loss = sampled_softmax_loss(u, p, neg, reduction="none")
    assert torch.equal(loss, torch.zeros(3))
    loss.sum().backward()
    assert torch.equal(u.grad, torch.zeros(3, 4))


def test_per_row_negatives_are_a_sampled_softmax():
    torch.manual_seed(0)
    u, p, e = torch.randn(3, 4), torch.randn(3, 4), torch.randn(3, 5, 4)
    log_q = torch.randn(3, 5)
    got = sampled_softmax_loss(u, p, Negatives(emb=e, log_q=log_q), reduction="none")
    for b in range(3):
        want = _hand_loss(float(u[b] @ p[b]), (e[b] @ u[b]).tolist(), log_q[b].tolist())
        assert got[b].item() == pytest.approx(want, rel=1e-5)
    # without log_q there is no correction (plain sampled softmax)
    plain = sampled_softmax_loss(u, p, Negatives(emb=e), reduction="none")
    assert plain[0].item() == pytest.approx(_hand_loss(float(u[0] @ p[0]), (e[0] @ u[0]).tolist()), rel=1e-5)
    # the positive's Q is unknown for per-row samplers: correcting it must raise, not pass silently
    with pytest.raises(ConfigError, match="correct_positive"):
        sampled_softmax_loss(u, p, Negatives(emb=e, log_q=log_q), correct_positive=True)


def test_normalize_gives_cosine_logits_over_temperature():
    u = torch.tensor([[3.0, 4.0]])
    p = torch.tensor([[0.0, 2.0]])
    v = torch.tensor([[10.0, 0.0], [-1.0, -1.0]])
    got = sampled_softmax_loss(u, p, Negatives(emb=v), temperature=0.1, normalize=True)
    cos_pos = 0.8
    cos_neg = [0.6, -7.0 / (5 * math.sqrt(2))]
    assert got.item() == pytest.approx(_hand_loss(cos_pos, cos_neg, tau=0.1), rel=1e-5)


def test_masked_column_gets_no_gradient_and_no_weight():
    u = torch.randn(2, 3)
    p = torch.randn(2, 3)
    v = torch.randn(4, 3, requires_grad=True)
    mask = torch.zeros(2, 4, dtype=torch.bool)
    mask[:, 2] = True
    loss = sampled_softmax_loss(u, p, Negatives(emb=v, mask=mask))
    loss.backward()
    assert torch.all(v.grad[2] == 0) and torch.any(v.grad[0] != 0)
    kept = sampled_softmax_loss(u, p, Negatives(emb=v.detach()[[0, 1, 3]]))
    assert loss.item() == pytest.approx(kept.item(), rel=1e-6)


def _equal_frequency_batch():
    """Every item has the same training count; a batch of 4 distinct positives, B' = 0."""
    users = torch.arange(8) % 4
    items = torch.arange(8) % 4 + 4 * (torch.arange(8) // 4)  # items 0..7 once each
    train = Interactions(users.numpy(), items.numpy(), n_users=4, n_items=8)
    torch.manual_seed(1)
    ut, it = torch.randn(4, 6), torch.randn(8, 6)
    bu, bp = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 5, 2, 7])
    view = TableView(bu, bp, ut, it, ut, it)
    sampler = InBatchSampler(InBatchConfig()).bind(train)
    return view, sampler(bu, bp, view)


def test_logq_with_equal_frequencies_and_corrected_positive_changes_nothing():
    view, neg = _equal_frequency_batch()
    assert torch.allclose(neg.log_q, torch.full((4,), math.log(4 / 8)))  # B·q_j = 4 · 1/8
    plain = sampled_softmax_loss(view.user_emb, view.pos_emb, neg, logq_correction=False)
    corrected = sampled_softmax_loss(view.user_emb, view.pos_emb, neg, correct_positive=True)
    assert corrected.item() == pytest.approx(plain.item(), rel=1e-6)


def test_uncorrected_positive_shifts_only_the_negatives():
    view, neg = _equal_frequency_batch()
    got = sampled_softmax_loss(view.user_emb, view.pos_emb, neg, correct_positive=False, reduction="none")
    c = math.log(0.5)
    for b in range(4):
        negs = (view.pos_emb @ view.user_emb[b]).tolist()
        mask = neg.mask[b].tolist()
        want = _hand_loss(float(view.user_emb[b] @ view.pos_emb[b]), negs, [c] * 4, None, mask)
        assert got[b].item() == pytest.approx(want, rel=1e-5)
    plain = sampled_softmax_loss(view.user_emb, view.pos_emb, neg, logq_correction=False)
    assert got.mean().item() > plain.item()  # log q < 0 here: negatives weigh more


def test_registered_loss_and_config_checks():
    loss = build_loss("softmax", temperature="0.05", normalize="true")
    assert isinstance(loss, SampledSoftmaxLoss) and loss.config.temperature == 0.05 and loss.config.normalize
    with pytest.raises(ConfigError, match="temperature"):
        SoftmaxConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="reduction"):
        SoftmaxConfig(reduction="avg")
    u, p, v = torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 3)
    assert loss(u, p, Negatives(emb=v)).dim() == 0


# --------------------------------------------------------------------------------------------- estimator
def test_streaming_estimate_converges_to_one_over_period():
    est = StreamingFrequencyEstimator(n_items=10, alpha=0.05)
    assert est.estimate(torch.tensor([3])).item() == pytest.approx(
        1 / 100
    )  # before first sighting: 1/Bgap_init
    for t in range(1, 2001):
        ids = [0]  # every step
        if t % 4 == 0:
            ids.append(1)
        if t % 10 == 0:
            ids.append(2)
        est.update(torch.tensor(ids))
    p = est.estimate(torch.tensor([0, 1, 2, 3]))
    assert p[0].item() == pytest.approx(1.0, abs=1e-6)  # clamped at 1, never above
    assert p[1].item() == pytest.approx(1 / 4, rel=0.01)
    assert p[2].item() == pytest.approx(1 / 10, rel=0.01)
    assert p[3].item() == pytest.approx(1 / 100)  # never seen
    assert float(est.step) == 2000


def test_streaming_counts_an_item_once_per_step():
    once, twice = StreamingFrequencyEstimator(5, alpha=0.1), StreamingFrequencyEstimator(5, alpha=0.1)
    for _ in range(30):
        once.update(torch.tensor([2]))
        twice.update(torch.tensor([2, 2, 2]))
    assert torch.equal(once.gap, twice.gap)
    # the paper's per-occurrence loop would have pulled the gap toward 0 instead
    assert once.estimate(torch.tensor([2])).item() <= 1.0


def _collision_run(n_hashes: int) -> float:
    est = StreamingFrequencyEstimator(n_items=2, hash_size=8, n_hashes=n_hashes, alpha=0.1)
    # hash 0 sends items 0 and 1 to slot 0 (a = 8 ≡ 0 mod H); hash 1 separates them (a = 1)
    est.hash_a.copy_(torch.tensor([8, 1][:n_hashes]))
    est.hash_b.zero_()
    s = est.slots(torch.tensor([0, 1]))
    assert s[0, 0] == s[0, 1] and (n_hashes == 1 or s[1, 0] != s[1, 1])
    for t in range(1, 1001):
        ids = [0] if t % 2 == 0 else []
        if t % 10 == 5:
            ids.append(1)  # the rare item: every 10 steps, never with item 0
        est.update(torch.tensor(ids, dtype=torch.long))
    return est.estimate(torch.tensor([1])).item()


def test_max_gap_rule_recovers_the_rarer_item_under_collision():
    one, two = _collision_run(1), _collision_run(2)
    assert abs(two - 0.1) < abs(one - 0.1)
    assert two == pytest.approx(0.1, rel=0.02)
    assert one > 0.3  # one hash: the slot is hit every ~2 steps, the rare item looks frequent


def test_estimator_state_is_in_buffers():
    est = StreamingFrequencyEstimator(6, alpha=0.2)
    for _ in range(5):
        est.update(torch.tensor([1, 4]))
    state = est.state_dict()
    assert {"gap", "last_step", "step", "hash_a", "hash_b"} <= set(state)
    fresh = StreamingFrequencyEstimator(6, alpha=0.2)
    fresh.load_state_dict(state)
    ids = torch.arange(6)
    assert torch.equal(fresh.estimate(ids), est.estimate(ids))
    with pytest.raises(ConfigError):
        StreamingFrequencyEstimator(6, alpha=0.0)
