"""A small name -> factory registry, in the spirit of timm's ``register_model``/``create_model``.

A factory is registered under a name with a decorator and looked up by that name later; an
unknown name raises :class:`~histomag.errors.ConfigError` whose one-line message lists every
valid name, so a typo in a config file is answered with the choices.

Example:
    >>> from histomag.registry import Registry
    >>> HEADS = Registry("head")
    >>> @HEADS.register("linear")
    ... def make_linear():
    ...     return "a linear head"
    >>> HEADS.get("linear")()
    'a linear head'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from histomag.errors import ConfigError

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Factories of one kind (backbones, heads, ...) registered by name.

    Args:
        kind: what the factories build, used in error messages ("backbone").
        hint: extra text appended to the unknown-name message (e.g. "or timm:NAME").
    """

    def __init__(self, kind: str, *, hint: str = "") -> None:
        self.kind = kind
        self.hint = hint
        self._factories: dict[str, F] = {}

    def register(self, name: str | None = None) -> Callable[[F], F]:
        """Decorator that registers a factory under ``name`` (default: the function's name).

        Args:
            name: the registry key; lower-case names without ':' are expected.

        Returns:
            The decorator, which returns the factory unchanged.

        Raises:
            ConfigError: the name is already taken or contains ':' (reserved for prefixes
                such as ``timm:``).
        """

        def decorator(factory: F) -> F:
            key = name if name is not None else factory.__name__
            if ":" in key:
                raise ConfigError(f"{self.kind} name {key!r} may not contain ':' (reserved for prefixes)")
            if key in self._factories:
                raise ConfigError(f"{self.kind} {key!r} is registered twice; pick another name")
            self._factories[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> F:
        """Return the factory registered under ``name``.

        Raises:
            ConfigError: unknown name; the message lists the valid names.
        """
        try:
            return self._factories[name]
        except KeyError:
            raise ConfigError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """One-line message for an unknown ``name`` that lists the valid ones."""
        valid = ", ".join(self.names())
        extra = f" {self.hint}" if self.hint else ""
        return f"unknown {self.kind} {name!r}; valid names: {valid}{extra}"

    def unregister(self, name: str) -> None:
        """Remove ``name`` (for tests that register a toy entry); unknown names are ignored."""
        self._factories.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._factories)

    def in_order(self) -> list[str]:
        """Registered names in the order they were registered."""
        return list(self._factories)

    def __contains__(self, name: object) -> bool:
        return name in self._factories

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._factories)
