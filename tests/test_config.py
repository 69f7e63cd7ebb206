"""The config schema, the shipped paper configs, and --set overrides."""

from __future__ import annotations

import re

import numpy as np
import pytest
import yaml

from ecm_edge.config import Config, apply_override, load_config, shipped_config_names
from ecm_edge.errors import ConfigError


def test_shipped_configs_are_addressable_by_name():
    assert {"thumos14", "activitynet12", "activitynet13", "small"} <= set(shipped_config_names())
    for name in shipped_config_names():
        assert load_config(name).name == name


def test_thumos14_carries_the_paper_constants():
    cfg = load_config("thumos14")
    assert (cfg.data.feature_dim, cfg.model.hidden_dim, cfg.model.num_classes) == (2048, 2048, 20)
    assert (cfg.data.t_fixed, cfg.model.topk_ratio, cfg.topk) == (750, 0.125, 93)
    assert (cfg.train.lr, cfg.train.betas, cfg.train.weight_decay) == (2e-4, [0.9, 0.999], 5e-4)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.seed) == (16, 150, 16)
    assert (cfg.train.c2c_weight, cfg.train.a2c_weight, cfg.model.dropout) == (0.05, 5.0, 0.5)
    post = cfg.post
    assert (post.mode, post.class_threshold, post.oic_lambda, post.gamma, post.nms_iou) == ("ecm", 0.25, 0.4, 0.15, 0.6)
    np.testing.assert_array_equal(post.act_thresholds, np.arange(0.01, 0.2, 0.025))
    assert len(post.act_thresholds) == 8
    assert post.time_base == "fps"
    assert cfg.model.normalize_aggregation is False


@pytest.mark.parametrize(("name", "classes", "ratio", "k", "threshold", "seed", "decay"), [
    ("activitynet12", 100, 0.25, 25, 0.12, 7, 0),
    ("activitynet13", 200, 0.6, 60, 0.05, 1, 26),
])
def test_activitynet_configs(name, classes, ratio, k, threshold, seed, decay):
    cfg = load_config(name)
    assert (cfg.model.num_classes, cfg.model.topk_ratio, cfg.topk, cfg.data.t_fixed) == (classes, ratio, k, 100)
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.a2c_weight) == (128, 36, 1.0)
    assert (cfg.train.seed, cfg.train.lr_decay_epoch) == (seed, decay)
    assert cfg.post.class_threshold == threshold
    np.testing.assert_array_equal(cfg.post.act_thresholds, np.arange(0, 0.175, 0.025))
    assert len(cfg.post.act_thresholds) == 7
    assert (cfg.post.oic_lambda, cfg.post.gamma, cfg.post.nms_iou, cfg.post.time_base) == (0.5, 0.45, 0.7, "duration")


def test_load_by_path_and_resolved_config_round_trips(tmp_path):
    cfg = load_config("thumos14", ["train.epochs=3", "post.mode=clean", "train.betas=[0.8, 0.9]"])
    saved = cfg.save(tmp_path / "config.yaml")
    again = load_config(saved)
    assert again.to_dict() | {"name": cfg.name} == cfg.to_dict()
    assert (again.train.epochs, again.post.mode, again.train.betas) == (3, "clean", [0.8, 0.9])


def test_override_types_are_checked():
    cfg = Config()
    apply_override(cfg, "train.lr=1e-3")
    assert cfg.train.lr == 1e-3
    apply_override(cfg, "train.lr=1")  # an integer is a valid number
    assert isinstance(cfg.train.lr, float)
    with pytest.raises(ConfigError, match=r"train\.epochs must be an integer"):
        apply_override(cfg, "train.epochs=ten")
    with pytest.raises(ConfigError, match="must be true or false"):
        apply_override(cfg, "model.normalize_aggregation=maybe")
    with pytest.raises(ConfigError, match=r"post\.mode must be one of ecm, clean"):
        apply_override(cfg, "post.mode=fast")
    with pytest.raises(ConfigError, match=r"section\.key=value"):
        apply_override(cfg, "train.epochs")


@pytest.mark.parametrize(("override", "suggestion"), [
    ("train.epoch=3", "train.epochs"),
    ("trian.epochs=3", "train.epochs"),
    ("post.nms_iuo=0.5", "post.nms_iou"),
])
def test_unknown_key_suggests_the_closest(override, suggestion):
    with pytest.raises(ConfigError, match=re.escape(f"did you mean {suggestion!r}")):
        apply_override(Config(), override)


def test_unknown_config_name_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'thumos14'"):
        load_config("thumos")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({"trian": {"epochs": 1}}))
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*'train'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_shipped_name_wins_over_a_same_named_folder(tmp_path, monkeypatch):
    (tmp_path / "small").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_config("small").name == "small"


def test_atomic_writes_have_ordinary_permissions(tmp_path):
    import os

    from ecm_edge.io import atomic_write_text

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "file.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
