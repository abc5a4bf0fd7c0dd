"""DMSL modes as data: what each one is, registered by name like backbones.

A :class:`ModeSpec` says everything the rest of histomag needs to know about a mode: whether the
loss adds SIM, whether it takes one magnification or several, how its head(s) are built, which
tuple layout it expects, and how tables and explanations name it. The network
(:class:`~histomag.dmsl.network.MultiMagNet`), the loss, the training config, cross-validation,
the metric tables and the similarity statistics read the spec, so a new mode built from these
parts is one :func:`register_mode` call.

Example:
    >>> from histomag.dmsl.modes import ModeSpec, get_mode, register_mode
    >>> get_mode("sim").uses_sim
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from histomag.errors import ConfigError
from histomag.registry import Registry

Head = Literal["per-branch", "concat"]
HEADS: tuple[str, ...] = ("per-branch", "concat")


@dataclass(frozen=True)
class ModeSpec:
    """One DMSL mode.

    Attributes:
        name: the key (``--mode`` value, ``config.json``'s ``mode``).
        method: how result tables name it ("DMSL", "MM", ...).
        description: how explanations name it ("with SIM", "without SIM", ...).
        uses_sim: the training loss adds the SIM term between branches.
        single: exactly one magnification (one backbone, one head); otherwise two or more.
        head: ``"per-branch"`` (a linear head per branch, class probabilities fused by a weighted
            sum) or ``"concat"`` (pooled features concatenated before one linear head).
        tuple_mode: the tuple layout it is meant for (``"same-fov"`` or ``"context"``).
    """

    name: str
    method: str
    description: str
    uses_sim: bool = False
    single: bool = False
    head: Head = "per-branch"
    tuple_mode: str = "same-fov"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ConfigError(f"mode {self.name!r}: unknown head {self.head!r}; valid: {', '.join(HEADS)}")
        if self.single and (self.uses_sim or self.head != "per-branch"):
            raise ConfigError(f"mode {self.name!r}: a single-magnification mode has one per-branch head and no SIM")

    @property
    def fuses_branches(self) -> bool:
        """Several branches whose probabilities are fused (so ``fusion='learned'`` applies)."""
        return not self.single and self.head == "per-branch"

    def check_magnifications(self, n: int, shown: str) -> None:
        """ConfigError unless ``n`` magnifications suit this mode (``shown`` names them in the message)."""
        if self.single and n != 1:
            raise ConfigError(f"mode {self.name!r} takes exactly one magnification, got {shown}; e.g. 40")
        if not self.single and n < 2:
            raise ConfigError(f"mode {self.name!r} needs at least two magnifications, got {shown}; e.g. 40,20")


MODE_SPECS: Registry = Registry("mode")


def register_mode(spec: ModeSpec) -> ModeSpec:
    """Register ``spec`` under its name (ConfigError if the name is taken)."""
    MODE_SPECS.register(spec.name)(spec)  # type: ignore[arg-type]
    return spec


def get_mode(name: str) -> ModeSpec:
    """The spec registered as ``name``; ConfigError listing the valid names otherwise."""
    return MODE_SPECS.get(name)  # type: ignore[return-value]


def mode_method(name: str) -> str:
    """How tables name a mode ("DMSL" for ``sim``); an unregistered name (an old run) as itself."""
    return get_mode(name).method if name in MODE_SPECS else name


def mode_description(name: str) -> str:
    """How explanations name a mode ("with SIM" for ``sim``); an unregistered name as itself."""
    return get_mode(name).description if name in MODE_SPECS else name


def mode_names() -> list[str]:
    """Registered mode names, in the order they were registered (the built-ins first)."""
    return MODE_SPECS.in_order()


register_mode(ModeSpec("sim", "DMSL", "with SIM", uses_sim=True))
register_mode(ModeSpec("mm", "MM", "without SIM"))
register_mode(ModeSpec("single", "Single", "single", single=True))
register_mode(ModeSpec("mscn", "MSCN", "MSCN", head="concat", tuple_mode="context"))
