"""Options shared by several commands."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import click

from ecm_edge.config import Config, load_config, shipped_config_names


def config_options(default: str | None = "thumos14") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--config NAME|PATH`` and repeatable ``--set section.key=value``."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                          help="Override a config value (repeatable), e.g. --set train.epochs=10.")(fn)
        fn = click.option("--config", "config_name", default=default, show_default=True, metavar="NAME|PATH",
                          help=f"Shipped config name ({', '.join(shipped_config_names())}) or YAML path.")(fn)
        return fn

    return decorate


def resolve_config(config_name: str | None, overrides: tuple[str, ...]) -> Config:
    return load_config(config_name, overrides)


class HiddenAliasOption(click.Option):
    """An option whose old spellings (``hidden_aliases``) still parse but stay out of ``--help`` and messages."""

    def __init__(self, *args: Any, hidden_aliases: Sequence[str] = (), **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.hidden_aliases = tuple(hidden_aliases)

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        return self._without_aliases(super().get_help_record, ctx)

    def get_error_hint(self, ctx: click.Context) -> str:
        return self._without_aliases(super().get_error_hint, ctx)

    def _without_aliases(self, method: Callable[[click.Context], Any], ctx: click.Context) -> Any:
        shown = self.opts
        self.opts = [opt for opt in shown if opt not in self.hidden_aliases]
        try:
            return method(ctx)
        finally:
            self.opts = shown


def renamed_option(new: str, old: str, name: str, **attrs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``click.option(new, ...)`` that also accepts the option's former spelling ``old`` as a hidden alias."""
    return click.option(new, old, name, cls=HiddenAliasOption, hidden_aliases=(old,), **attrs)

def progress_factory(show: bool) -> Callable[[int, str], Callable[[int], None]]:
    """``(total, description) -> advance(n)`` on a tqdm bar (hidden unless ``show``)."""
    from tqdm import tqdm

    def make(total: int, description: str) -> Callable[[int], None]:
        bar = tqdm(total=total, desc=description, unit="video", disable=not show, leave=False)

        def advance(n: int) -> None:
            bar.update(n)
            if bar.n >= total:
                bar.close()

        return advance

    return make
