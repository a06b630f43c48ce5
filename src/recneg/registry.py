"""Name → class registries for samplers, models and losses.

Each entry couples a class with a frozen config dataclass, so a component can be built from a name and
plain keyword arguments (from Python, the CLI's ``--sampler-arg k=v`` or a TOML file) and every setting is
type-checked and range-checked in one place. Unknown names and keys get a suggestion of the nearest valid one.

Example::

    @SAMPLERS.register("uniform", config=UniformConfig, help="RNS: uniform over non-positives")
    class UniformSampler(Sampler): ...

    sampler = build_sampler("uniform", n_negatives=4)
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from recneg.errors import ConfigError


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _coerce(value: Any, annotation: Any, field: str, owner: str) -> Any:
    """Convert a CLI/TOML value to the field's annotated type; strings like '32' or 'true' are parsed."""
    if isinstance(annotation, str):
        annotation = {"int": int, "float": float, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>"):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, field, owner)
            except ConfigError:
                continue
        raise ConfigError(f"{field} of {owner} must be {annotation}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{field} of {owner} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{field} of {owner} must be an int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{field} of {owner} must be an int, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{field} of {owner} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{field} of {owner} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{field} of {owner} must be a string, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.replace(";", ",").split(",") if v.strip()]
        elem = args[0] if args else str
        return tuple(_coerce(v.strip() if isinstance(v, str) else v, elem, field, owner) for v in value)
    return value


def config_from_mapping(cfg_cls: type, values: Mapping[str, Any] | None, owner: str | None = None):
    """Build a frozen config dataclass from a mapping, with type coercion and nearest-key suggestions."""
    values = dict(values or {})
    owner = owner or cfg_cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
    hints = typing.get_type_hints(cfg_cls)
    kwargs = {}
    for key, value in values.items():
        k = key.replace("-", "_")
        if k not in fields:
            valid = ", ".join(fields) or "none"
            raise ConfigError(f"unknown setting {key!r} for {owner}{suggest(k, fields)}; valid: {valid}")
        kwargs[k] = _coerce(value, hints.get(k, fields[k].type), k, owner)
    return cfg_cls(**kwargs)


@dataclass(frozen=True)
class Entry:
    name: str
    cls: type[Any]  # a sampler, model or loss class; each kind has its own constructor
    config: type | None
    help: str

    def describe(self) -> list[tuple[str, str, Any, str]]:
        """(field, type, default, help) for each config field."""
        if self.config is None:
            return []
        rows = []
        for f in dataclasses.fields(self.config):
            default = f.default if f.default is not dataclasses.MISSING else None
            rows.append(
                (f.name, getattr(f.type, "__name__", str(f.type)), default, f.metadata.get("help", ""))
            )
        return rows


class Registry:
    """A named collection of components of one kind ("sampler", "model", "loss")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(
        self, name: str, *, config: type | None = None, help: str = ""
    ) -> Callable[[type[Any]], type[Any]]:
        def deco(cls: type[Any]) -> type[Any]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            doc = help or (cls.__doc__ or "").strip().splitlines()[0] if (help or cls.__doc__) else ""
            self._entries[name] = Entry(name, cls, config, doc)
            cls.registry_name = name
            return cls

        return deco

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._entries

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        self._load()
        return [self._entries[n] for n in sorted(self._entries)]

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{suggest(name, self._entries)}; "
                f"known: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def make_config(self, name: str, values: Mapping[str, Any] | None = None):
        entry = self.get(name)
        if entry.config is None:
            if values:
                raise ConfigError(f"{self.kind} {name!r} takes no settings, got {sorted(values)}")
            return None
        return config_from_mapping(entry.config, values, owner=f"{self.kind} {name!r}")

    def _load(self) -> None:
        import recneg._builtins  # noqa: F401  (registers every built-in component once)


SAMPLERS = Registry("sampler")
MODELS = Registry("model")
LOSSES = Registry("loss")


def build_sampler(name: str, config=None, **kwargs):
    """Build a registered sampler by name: ``build_sampler("dns", n_candidates=32)``."""
    entry = SAMPLERS.get(name)
    cfg = config if config is not None else SAMPLERS.make_config(name, kwargs)
    return entry.cls(cfg) if entry.config is not None else entry.cls()


def build_model(name: str, train, config=None, **kwargs):
    """Build a registered model for the id space of ``train`` (an :class:`~recneg.data.Interactions`)."""
    entry = MODELS.get(name)
    cfg = config if config is not None else MODELS.make_config(name, kwargs)
    return entry.cls.from_interactions(train, cfg)


def build_loss(name: str, config=None, **kwargs):
    """Build a registered loss module by name: ``build_loss("softbpr", beta=0.1)``."""
    entry = LOSSES.get(name)
    cfg = config if config is not None else LOSSES.make_config(name, kwargs)
    return entry.cls(cfg) if entry.config is not None else entry.cls()
