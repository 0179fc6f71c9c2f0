"""Loading what installed packages add through entry points: architectures
(``fedxai.architectures``) and data sources (``fedxai.datasets``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from fedxai.settings import SettingsError


class Named(Protocol):
    @property
    def name(self) -> str: ...


T = TypeVar("T", bound=Named)


class PluginError(SettingsError):
    """An installed plugin cannot be used; the message names it and says why."""


def registry(built_in: Iterable[T], group: str, kind: str, load: Callable[[EntryPoint], T]) -> Mapping[str, T]:
    """The built-in entries and every installed plugin's in entry-point ``group``, each
    loaded and checked by ``load``, by name; raises PluginError for the first that
    cannot be used."""
    found = {item.name: item for item in built_in}
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        item = load(entry)
        if item.name in found:
            raise PluginError(f"{plugin_label(kind, entry)}: the name {item.name!r} is taken")
        found[item.name] = item
    return MappingProxyType(found)


def load_plugin(entry: EntryPoint, kind: str, expected: type[T]) -> tuple[T, str]:
    """The object ``entry`` names, checked to be an ``expected`` whose ``name`` is the
    entry point's, and the distribution that installed it ("name version")."""
    where = plugin_label(kind, entry)
    try:
        loaded: Any = entry.load()
    except Exception as error:  # whatever importing the plugin raises, reported with its name
        raise PluginError(f"{where} cannot be imported: {type(error).__name__}: {error}") from error
    if not isinstance(loaded, expected):
        raise PluginError(f"{where} is a {type(loaded).__name__}, not a {expected.__module__}.{expected.__name__}")
    if loaded.name != entry.name:
        raise PluginError(f"{where} names itself {loaded.name!r}: the entry point's name must be the same")
    provider = f"{entry.dist.name} {entry.dist.version}" if entry.dist is not None else entry.module
    return loaded, provider


def plugin_label(kind: str, entry: EntryPoint) -> str:
    return f"{kind} plugin {entry.name!r} ({entry.value})"
