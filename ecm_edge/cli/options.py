"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ecm_edge.config import Config, load_config


def config_options(default: str | None = "thumos14") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--config NAME|PATH`` and repeatable ``--set section.key=value``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value (repeatable), e.g. --set train.epochs=10.")(fn)
        fn = click.option("--config", "config_name", default=default, show_default=True, metavar="NAME|PATH",
                          help="Shipped config name (thumos14, thumos14_lite, activitynet12, activitynet13, "
                               "small, demo) or YAML path.")(fn)
        return fn

    return decorate


def resolve_config(config_name: str | None, overrides: tuple[str, ...]) -> Config:
    return load_config(config_name, overrides)
