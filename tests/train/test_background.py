"""The batched background branch against a plain loop over videos and classes (the published algorithm)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ecm_edge.train.background import aggregated_scores, background_scores, ground_truth_pairs  # noqa: E402
from ecm_edge.train.model import ECM, ECMDims  # noqa: E402


def loop_background_scores(model: ECM, x: torch.Tensor, weights: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One aggregation + post-classification per (video, ground-truth class), as the reference does it."""
    rows = []
    for b in range(labels.shape[0]):
        gt = torch.where(labels[b] == 1)[0]
        runs = []
        for c in gt:
            scaled = x[b:b + 1] * (1 - weights[b:b + 1, c:c + 1])  # suppress class c's foreground
            runs.append(model.post_classify(model.aggregate(scaled, weights[b:b + 1])))
        runs = torch.cat(runs, dim=0)
        row = runs.mean(dim=0)
        for i, c in enumerate(gt):
            row[c] = runs[i, c]
        rows.append(row)
    return torch.stack(rows)


def random_labels(rng: np.random.Generator, batch: int, classes: int, low: int = 1, high: int = 4) -> torch.Tensor:
    labels = np.zeros((batch, classes), dtype=np.float32)
    for b in range(batch):
        labels[b, rng.choice(classes, size=rng.integers(low, high + 1), replace=False)] = 1
    return torch.from_numpy(labels)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_equals_loop(seed, normalize):
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    classes = 7
    model = ECM(ECMDims(feature_dim=32, hidden_dim=16, num_classes=classes, topk=4,
                        normalize_aggregation=normalize)).eval()
    x = torch.randn(5, 32, 27)
    labels = random_labels(rng, 5, classes)
    with torch.no_grad():
        weights = model(x).weights
        batched = background_scores(model, x, weights, labels)
        looped = loop_background_scores(model, x, weights, labels)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)


def test_gradients_match_the_loop():
    torch.manual_seed(3)
    model = ECM(ECMDims(feature_dim=16, hidden_dim=16, num_classes=4, topk=2)).eval()
    x = torch.randn(3, 16, 12)
    labels = random_labels(np.random.default_rng(3), 3, 4)
    grads = []
    for fn in (background_scores, loop_background_scores):
        model.zero_grad()
        fn(model, x, model(x).weights, labels).square().sum().backward()
        grads.append(model.conv1.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_video_without_ground_truth_gets_a_zero_row():
    torch.manual_seed(0)
    model = ECM(ECMDims(feature_dim=16, hidden_dim=16, num_classes=4, topk=2)).eval()
    x = torch.randn(2, 16, 9)
    labels = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 0]], dtype=torch.float32)
    with torch.no_grad():
        s_bg = background_scores(model, x, model(x).weights, labels)
        expected = loop_background_scores(model, x[:1], model(x[:1]).weights, labels[:1])
    torch.testing.assert_close(s_bg[0], expected[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(s_bg[1], torch.zeros(4))
    assert torch.equal(background_scores(model, x, model(x).weights, torch.zeros(2, 4)), torch.zeros(2, 4))


def test_ground_truth_pairs_pad_to_the_largest_count():
    labels = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float32)
    classes, valid, counts = ground_truth_pairs(labels)
    assert counts.tolist() == [3, 1]
    assert valid.tolist() == [[True, True, True], [True, False, False]]
    assert classes[0].tolist() == [1, 3, 4] and classes[1, 0].item() == 0


def test_aggregated_scores_is_a_softmax_over_2c():
    score_post, s_bg = torch.randn(3, 5), torch.randn(3, 5)
    agg = aggregated_scores(score_post, s_bg)
    assert agg.shape == (3, 10)
    torch.testing.assert_close(agg, torch.softmax(torch.cat([score_post, s_bg], 1), 1))
