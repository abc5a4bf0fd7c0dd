"""Option values several commands share (``--mpp``), turned into library calls; imports no command."""

from __future__ import annotations

import sys
from pathlib import Path

from histomag.errors import ConfigError


def resolve_mpp(paths: list[Path], mpp: str | None, checkpoint: Path | None, max_uncertainty: float = 0.25
                ) -> tuple[dict[str, float | tuple[float, float] | None], dict[str, str]]:
    """Per-slide mpp from ``--mpp`` (a number, ``mpp_x,mpp_y``, or ``estimate`` with a magnification model).

    Returns the mpp per path and, for ``estimate``, the one-line errors of slides it failed on;
    every estimate used is announced loudly on stderr.
    """
    if mpp is None:
        return {}, {}
    if mpp.strip().lower() != "estimate":
        from histomag.resolution import parse_mpp

        try:
            value = parse_mpp(mpp)
        except ConfigError:
            raise ConfigError(f"--mpp {mpp!r}: give µm per pixel (e.g. --mpp 0.25), mpp-x,mpp-y for pixels that "
                              "are not square (e.g. --mpp 0.56,0.42) or --mpp estimate") from None
        return {str(p): value for p in paths}, {}
    from histomag.train.maginfer import estimate_resolutions

    values, failed, warnings = estimate_resolutions(paths, checkpoint, max_uncertainty)
    for message in warnings:
        print(f"warning: {message}", file=sys.stderr)
    return values, failed  # type: ignore[return-value]


