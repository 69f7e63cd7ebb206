"""The four ECM losses against direct per-video formulations of the published ones."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from ecm_edge.train.losses import a2c_loss, c2c_loss, classification_loss, total_loss  # noqa: E402

LABELS = torch.tensor([[1, 0, 0, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float32)


def test_classification_loss_is_cross_entropy_against_normalized_labels():
    scores = torch.randn(3, 4)
    expected = 0.0
    for b in range(3):
        target = LABELS[b] / LABELS[b].sum()
        expected += -(target * torch.log(torch.softmax(scores[b], 0))).sum() / 3
    torch.testing.assert_close(classification_loss(scores, LABELS), expected)


def test_classification_loss_is_minimal_for_matching_logits():
    confident = torch.where(LABELS > 0, 20.0, -20.0)
    wrong = -confident
    assert classification_loss(confident, LABELS) < classification_loss(wrong, LABELS)


def test_c2c_is_mse_on_logits():
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(c2c_loss(a, b), ((a - b) ** 2).mean())


def loop_a2c(score_agg: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    total = 0.0
    c = labels.shape[1]
    for b in range(labels.shape[0]):
        gt = torch.where(labels[b] == 1)[0]
        picked = score_agg[b, torch.cat([gt, gt + c])]
        target = torch.cat([torch.ones(len(gt)), torch.zeros(len(gt))])
        total = total + F.binary_cross_entropy(picked, target)
    return total / labels.shape[0]


def test_a2c_equals_the_per_video_bce():
    score_agg = torch.softmax(torch.randn(3, 8), dim=1)
    torch.testing.assert_close(a2c_loss(score_agg, LABELS), loop_a2c(score_agg, LABELS))


def test_a2c_ignores_videos_without_labels_but_divides_by_the_batch():
    score_agg = torch.softmax(torch.randn(4, 8), dim=1)
    labels = torch.cat([LABELS, torch.zeros(1, 4)])
    expected = loop_a2c(score_agg[:3], LABELS) * 3 / 4
    torch.testing.assert_close(a2c_loss(score_agg, labels), expected)


def test_a2c_gradient_stays_finite_when_softmax_saturates():
    logits = torch.tensor([[0.0, -500.0, 0.0, 0.0, -500.0, 500.0, 0.0, 0.0]], requires_grad=True)
    loss = a2c_loss(torch.softmax(logits, dim=1), torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    loss.backward()
    assert torch.isfinite(loss) and bool(torch.isfinite(logits.grad).all())
    assert loss.item() == pytest.approx(100.0)  # both entries hit the log clamp


def test_total_loss_weights_and_terms():
    torch.manual_seed(0)
    pre, post = torch.randn(3, 4, requires_grad=True), torch.randn(3, 4)
    agg = torch.softmax(torch.randn(3, 8), 1)
    loss, terms = total_loss(pre, post, agg, LABELS, c2c_weight=0.05, a2c_weight=5.0)
    expected = (classification_loss(pre, LABELS) + classification_loss(post, LABELS)
                + 0.05 * c2c_loss(pre, post) + 5.0 * a2c_loss(agg, LABELS))
    torch.testing.assert_close(loss, expected)
    assert set(terms) == {"pre", "post", "c2c", "a2c", "total"}
    assert all(not t.requires_grad for t in terms.values())
    loss.backward()
    assert pre.grad is not None
