"""The config schema, the shipped paper configs, and --set overrides."""

from __future__ import annotations

import re
import typing

import numpy as np
import pytest
import yaml

from ecm_edge.config import Config, apply_override, config_from_stored, load_config, shipped_config_names
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


def test_thumos14_fast_is_the_paper_setting_with_a_recipe_that_ends_on_the_paper_objective():
    from ecm_edge.train.trainer import learning_rate, normalization_power

    fast, paper = load_config("thumos14_fast").to_dict(), load_config("thumos14").to_dict()
    for section in ("data", "model", "post", "eval", "export"):
        assert fast[section] == paper[section], section
    changed = {key for key in fast["train"] if fast["train"][key] != paper["train"][key]}
    assert changed == {"epochs", "lr", "lr_schedule", "lr_min_factor", "lr_warmup_epochs",
                       "normalized_warmup_epochs", "grad_clip", "patience"}
    cfg = load_config("thumos14_fast")
    assert cfg.train.epochs <= 40 and cfg.train.patience > 0
    assert learning_rate(cfg, cfg.train.epochs) == pytest.approx(paper["train"]["lr"])  # ends at the paper's lr
    assert normalization_power(cfg, cfg.train.normalized_warmup_epochs + 1) == 0  # and on the paper's sums
    assert normalization_power(cfg, 1) == 1


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


def test_a_stored_config_rebuilds_with_its_name_and_checked_values(monkeypatch, caplog):
    """config_from_stored: what checkpoints, deploy folders and artifacts recorded, name included."""
    from ecm_edge.config import config_from_stored

    cfg = load_config("thumos14", ["train.epochs=3"])
    stored = cfg.to_dict()
    again = config_from_stored(stored, source="run/last.pt")
    assert again.to_dict() == stored and again.name == "thumos14"
    assert stored == cfg.to_dict()  # the caller's dict is left as it was
    assert config_from_stored({"model": {"num_classes": 4}}, source="m.json").name == "custom"
    with pytest.raises(ConfigError, match=r"^run/last\.pt: unknown key train\.epoch"):
        config_from_stored({"name": "x", "train": {"epoch": 3}}, source="run/last.pt")
    # a key renamed since it was stored (post.backend, now post.kernels) reads as the new one, warned about once
    monkeypatch.setattr("ecm_edge.config._warned_renames", set())
    old = config_from_stored({"post": {"backend": "cpu"}}, source="old/model.json")
    assert old.post.kernels == "cpu" and "backend" not in old.to_dict()["post"]
    assert load_config("thumos14", ["post.backend=numpy"]).post.kernels == "numpy"
    warned = [r.getMessage() for r in caplog.records if "post.backend" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("old/model.json: post.backend is deprecated"), warned


def _numeric_keys() -> list[str]:
    from ecm_edge.config import SECTIONS, _section_type

    keys = []
    for section in SECTIONS:
        hints = typing.get_type_hints(_section_type(section))
        keys += [f"{section}.{name}" for name, hint in hints.items() if hint in (int, float, list[float])]
    return keys


def test_every_numeric_key_has_a_range_and_every_range_a_key():
    from ecm_edge.config import RANGES

    assert sorted(RANGES) == sorted(_numeric_keys())


@pytest.mark.parametrize("name", shipped_config_names())
def test_shipped_configs_and_defaults_are_within_their_ranges(name):
    from ecm_edge.config import RANGES

    for cfg in (Config(), load_config(name)):
        for dotted, allowed in RANGES.items():
            section, key = dotted.split(".")
            value = getattr(getattr(cfg, section), key)
            assert all(v in allowed for v in (value if isinstance(value, list) else [value])), (name, dotted, value)


@pytest.mark.parametrize("override, message", [
    ("stream.horizon=0", "--set: stream.horizon must be in [1, inf), got 0"),
    ("stream.horizon=-5", "--set: stream.horizon must be in [1, inf), got -5"),
    ("post.nms_iou=2", "--set: post.nms_iou must be in [0, 1], got 2.0"),
    ("post.nms_iou=-1", "--set: post.nms_iou must be in [0, 1], got -1.0"),
    ("post.class_threshold=-1", "--set: post.class_threshold must be in [0, 1], got -1.0"),
    ("stream.warmup=-1", "--set: stream.warmup must be in [0, inf), got -1"),
    ("stream.webhook_timeout_s=-1", "--set: stream.webhook_timeout_s must be in (0, inf), got -1.0"),
    ("eval.iou_thresholds=[0.5, 0]", "--set: eval.iou_thresholds must be in (0, 1], got 0.0"),
    ("post.act_thresh_stop=0.001", "small: post.act_thresh_start (0.01) must be below post.act_thresh_stop (0.001)"),
    ("export.max_t=10", "small: export.opt_t (256) must be at most export.max_t (10)"),
])
def test_out_of_range_values_are_one_line_errors_naming_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("small", [override])
    assert str(info.value) == message


def test_stored_configs_are_range_checked_too():
    raw = Config().to_dict()
    raw["post"]["nms_iou"] = 1.5
    with pytest.raises(ConfigError, match=r"model.json: post.nms_iou must be in \[0, 1\], got 1.5"):
        config_from_stored(raw, source="model.json")


def test_overrides_on_a_stored_config_check_the_ordered_pairs_once_complete():
    from ecm_edge.config import apply_overrides

    cfg = config_from_stored(Config().to_dict(), source="model.json")
    with pytest.raises(ConfigError, match=r"^--set: export.min_t \(5000\) must be at most export.opt_t \(750\)$"):
        apply_overrides(cfg, ["export.min_t=5000"])
    cfg = config_from_stored(Config().to_dict(), source="model.json")
    assert apply_overrides(cfg, ["export.min_t=700", "export.opt_t=700"]).export.opt_t == 700  # complete, then checked
