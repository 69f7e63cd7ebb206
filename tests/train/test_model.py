"""The ECM module: shapes, parameter count, the shared classifier in the post-stream, export_forward, top-k."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from ecm_edge.config import load_config  # noqa: E402
from ecm_edge.train.model import ECM, ECMDims  # noqa: E402


def tiny_model(topk: int = 4, normalize: bool = False, seed: int = 0) -> ECM:
    torch.manual_seed(seed)
    return ECM(ECMDims(feature_dim=24, hidden_dim=16, num_classes=5, topk=topk, normalize_aggregation=normalize))


def test_training_forward_shapes_and_weight_range():
    model = tiny_model()
    out = model(torch.randn(3, 24, 31))
    assert out.cas.shape == (3, 5, 31)
    assert out.score_pre.shape == (3, 5)
    assert out.weights.shape == (3, 5, 31)
    assert out.score_post.shape == (3, 5)
    assert bool(((out.weights > 0) & (out.weights < 1)).all())


def test_parameter_count_matches_the_paper_formula():
    d = h = 2048
    c = 20
    model = ECM(ECMDims(feature_dim=d, hidden_dim=h, num_classes=c, topk=93))
    expected = 2 * (d * h * 3 + h) + h * c + c * c + c
    assert model.num_parameters() == expected
    assert round(expected / 1e6, 1) == 25.2


def test_dims_from_config_use_t_fixed_and_ratio():
    dims = ECMDims.from_config(load_config("thumos14"))
    assert (dims.feature_dim, dims.hidden_dim, dims.num_classes, dims.topk) == (2048, 2048, 20, 93)
    assert ECMDims.from_config(load_config("activitynet13")).topk == 60


def test_video_score_is_topk_mean_and_k_is_clipped_to_short_clips():
    model = tiny_model(topk=4).eval()
    cas = torch.randn(2, 5, 10)
    expected = cas.sort(dim=-1, descending=True).values[..., :4].mean(dim=-1)
    torch.testing.assert_close(model.video_score(cas), expected)
    short = torch.randn(2, 5, 3)  # T < k: all snippets count
    torch.testing.assert_close(model.video_score(short), short.mean(dim=-1))


def test_post_stream_scores_each_class_with_its_own_classifier_row():
    """The post-stream is the reference's grouped convolution with the shared classifier weight."""
    model = tiny_model().eval()
    x = torch.randn(2, 24, 30)
    with torch.no_grad():
        out = model(x)
        aggregated = model.aggregate(x, out.weights)  # [B, C, D, 3]
        b, c, d, steps = aggregated.shape
        hidden = model.embed(aggregated.reshape(b * c, d, steps)).reshape(b, -1, steps)
        grouped = F.conv1d(hidden, model.classifier.weight, groups=c).mean(dim=-1)
    torch.testing.assert_close(out.score_post, grouped, rtol=1e-5, atol=1e-5)


def test_aggregate_sums_each_phase_of_every_third_snippet():
    model = tiny_model().eval()
    x, w = torch.randn(1, 24, 9), torch.rand(1, 5, 9)
    aggregated = model.aggregate(x, w)
    assert aggregated.shape == (1, 5, 24, 3)
    for g in range(3):
        manual = sum(w[0, :, t, None] * x[0, None, :, t] for t in range(g, 9, 3))
        torch.testing.assert_close(aggregated[0, :, :, g], manual)


@pytest.mark.parametrize("normalize", [False, True])
def test_aggregate_with_scale_equals_aggregating_the_scaled_input(normalize):
    model = tiny_model(normalize=normalize).eval()
    x, w, scale = torch.randn(2, 24, 20), torch.rand(2, 5, 20), torch.rand(2, 3, 20)
    batched = model.aggregate(x, w, scale=scale)  # [B, K, C, D, 3]
    for k in range(3):
        direct = model.aggregate(x * scale[:, k:k + 1], w)
        torch.testing.assert_close(batched[:, k], direct, rtol=1e-5, atol=1e-5)


def test_normalized_aggregation_divides_by_the_weight_sum():
    x, w = torch.randn(1, 24, 12), torch.rand(1, 5, 12)
    plain = tiny_model().aggregate(x, w)
    normalized = tiny_model(normalize=True).aggregate(x, w)
    sums = torch.stack([w[:, :, g::3].sum(-1) for g in range(3)], dim=-1)[:, :, None, :]
    torch.testing.assert_close(normalized, plain / sums)
    switched = tiny_model()
    switched.normalize_power = 1.0  # what the trainer sets at the start of a normalized warm-up
    torch.testing.assert_close(switched.aggregate(x, w), normalized)
    switched.normalize_power = 0.5  # and half-way through it
    torch.testing.assert_close(switched.aggregate(x, w), plain / sums.sqrt())


def test_export_forward_returns_cas_and_softmax_video_scores_only():
    model = tiny_model().eval()
    features = torch.randn(2, 17, 24)  # [B, T, D]
    with torch.no_grad():
        outputs = model.export_forward(features)
        cas, score_pre = model.pre_stream(features.transpose(1, 2))
    assert len(outputs) == 2
    cas_t, video_scores = outputs
    assert cas_t.shape == (2, 17, 5) and video_scores.shape == (2, 5)
    torch.testing.assert_close(cas_t, cas.transpose(1, 2))
    torch.testing.assert_close(video_scores, torch.softmax(score_pre, dim=-1))
    torch.testing.assert_close(video_scores.sum(-1), torch.ones(2))


def test_dropout_is_active_in_training_and_off_in_eval():
    model = tiny_model()
    x = torch.randn(2, 24, 16)
    model.train()
    assert not torch.equal(model(x).score_post, model(x).score_post)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).score_post, model(x).score_post)


@pytest.mark.parametrize("steps", [1, 3, 5])
def test_embed_steps_equals_the_convolutional_embed(steps):
    model = tiny_model().eval()
    x = torch.randn(7, 24, steps)
    with torch.no_grad():
        torch.testing.assert_close(model.embed_steps(x), model.embed(x), rtol=1e-5, atol=1e-5)


def test_layers_use_the_shared_architecture_constants():
    """The module's layers are built from ecm_edge.architecture, the constants the export and numpy head read."""
    from ecm_edge import architecture as arch
    from ecm_edge.runtime.head import HeadWeights

    model = ECM(ECMDims(feature_dim=24, hidden_dim=16, num_classes=5, topk=4))
    for conv in (model.conv1, model.conv2):
        assert conv.kernel_size == (arch.KERNEL_SIZE,) and conv.padding == (arch.PADDING,)
        assert conv.bias is not None
    for conv, bias in ((model.classifier, arch.CLASSIFIER_BIAS), (model.transition, arch.TRANSITION_BIAS)):
        assert conv.kernel_size == (arch.POINTWISE_KERNEL,) and (conv.bias is not None) == bias
    assert model.act.negative_slope == arch.LEAKY_SLOPE and model.dropout.p == arch.DROPOUT
    assert set(model.state_dict()) == set(arch.HEAD_TENSORS + arch.TRANSITION_TENSORS)
    cfg = load_config(None)
    assert (cfg.model.leaky_slope, cfg.model.dropout) == (arch.LEAKY_SLOPE, arch.DROPOUT)
    assert HeadWeights.random(4, 4, 2).leaky_slope == arch.LEAKY_SLOPE


def test_receptive_radius_is_the_modules_dependency_range():
    """Changing snippet t moves the CAS of snippets t ± RECEPTIVE_RADIUS and nothing beyond."""
    from ecm_edge.architecture import RECEPTIVE_RADIUS, STREAM_WINDOW

    model = tiny_model().eval()
    x = torch.randn(1, 24, 21)
    changed = x.clone()
    changed[:, :, 10] += 5.0
    with torch.no_grad():
        moved = (model.class_activation(changed) - model.class_activation(x)).abs().amax(dim=(0, 1)) > 1e-6
    assert moved.nonzero().flatten().tolist() == list(range(10 - RECEPTIVE_RADIUS, 10 + RECEPTIVE_RADIUS + 1))
    with torch.no_grad():
        assert model.valid_class_activation(x[:, :, :STREAM_WINDOW]).shape[-1] == 1


def test_topk_rule():
    from ecm_edge.architecture import clipped_topk, topk_count

    assert topk_count(750, 0.125) == 93 and topk_count(3, 0.125) == 1
    assert load_config("thumos14").topk == topk_count(750, 0.125)
    assert (clipped_topk(8, 5), clipped_topk(8, 40)) == (5, 8)
    clipped = clipped_topk(torch.tensor(8), torch.tensor(5), torch.minimum)
    assert isinstance(clipped, torch.Tensor) and int(clipped) == 5
