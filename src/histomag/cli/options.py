"""Option values several commands share (``--mpp``, ``--cluster``, the tile settings' defaults), turned into library
calls; imports no command."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator

from histomag.data.folder import TileSettings
from histomag.errors import ConfigError

#: the tile settings' defaults, read from :class:`~histomag.data.folder.TileSettings` (stated there only)
TILE_DEFAULT = TileSettings.default
DEFAULT_TILE_MAGS = ",".join(f"{m:g}" for m in TileSettings.default("magnifications"))


#: ``--max-uncertainty`` and ``--same-acquisition``, shared by tile, dmsl train and dmsl predict
MAX_UNCERTAINTY_HELP = ("--mpp estimate: also refuse an estimate whose 90% interval is wider than this factor either "
                        "side (1.25: from /1.25 to x1.25). Default: refuse only an estimate that cannot tell two "
                        "standard objectives a factor 2 apart (e.g. 10x from 20x).")
SAME_ACQUISITION_HELP = ("--mpp estimate: the files are one acquisition (one scanner or camera setting): pool the "
                         "evidence of all of them into one estimate that serves them all.")


def resolve_mpp(paths: list[Path], mpp: str | None, checkpoint: Path | None, max_uncertainty: float | None = None,
                same_acquisition: bool = False) -> tuple[dict[str, float | tuple[float, float] | None], dict[str, str],
                                                          dict[str, str]]:
    """Per-slide mpp from ``--mpp`` (a number, ``mpp_x,mpp_y``, or ``estimate`` from the pixels).

    Returns the mpp per path, the one-line errors of slides ``estimate`` refused or failed on, and
    per estimated path its recorded source (with the interval); the batch's use of estimates is
    announced loudly on stderr, once.
    """
    if mpp is None:
        return {}, {}, {}
    if mpp.strip().lower() != "estimate":
        from histomag.resolution import parse_mpp

        try:
            value = parse_mpp(mpp)
        except ConfigError:
            raise ConfigError(f"--mpp {mpp!r}: give µm per pixel (e.g. --mpp 0.25), mpp-x,mpp-y for pixels that "
                              "are not square (e.g. --mpp 0.56,0.42) or --mpp estimate") from None
        return {str(p): value for p in paths}, {}, {}
    if max_uncertainty is not None and not max_uncertainty > 1:
        raise ConfigError(f"--max-uncertainty {max_uncertainty:g}: give a factor above 1 (e.g. 1.25 for an interval "
                          "from /1.25 to x1.25)")
    from histomag.magnification.infer import estimate_resolutions

    res = estimate_resolutions(paths, checkpoint, max_uncertainty, same_acquisition=same_acquisition)
    for message in res.warnings:
        print(f"warning: {message}", file=sys.stderr)
    return res.values, res.failed, res.sources  # type: ignore[return-value]


def resolve_job_mpps(jobs: list, mpp: str | None, mpp_csv: Path | None, checkpoint: Path | None,
                     max_uncertainty: float | None = None, batch: list[str] | None = None,
                     same_acquisition: bool = False) -> tuple[list, dict[str, str]]:
    """Each job's resolution, most specific first: ``--mpp-csv`` > an index row's own > ``--mpp`` > metadata.

    ``--mpp estimate`` is only run for the jobs nothing more specific covers. Each job records where
    its resolution came from (``mpp-csv``, ``index-csv``, ``estimated 17.9x, 90% 15.6-20.5x (rulers)``;
    a plain ``--mpp`` reads as ``override``). Returns the jobs to run and the one-line errors of those that cannot.
    ``batch``: the whole batch when ``jobs`` is one shard of it (``--mpp-csv`` is checked against it).
    """
    from dataclasses import replace

    from histomag.data.index import match_mpp_table, read_mpp_table

    table: dict = {}
    if mpp_csv is not None:
        table, unused, missing = match_mpp_table(read_mpp_table(mpp_csv), [Path(p) for p in batch or
                                                                            [j.path for j in jobs]])
        if unused:
            print(f"warning: {mpp_csv}: {len(unused)} listed slide(s) are not in this batch: "
                  f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}", file=sys.stderr)
        if missing:
            print(f"warning: {mpp_csv} does not list {len(missing)} slide(s) of this batch (they use --mpp or their "
                  f"metadata): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}", file=sys.stderr)
    rest = [Path(j.path) for j in jobs if j.path not in table and j.mpp is None]
    values, failed, sources = resolve_mpp(rest, mpp, checkpoint, max_uncertainty, same_acquisition)
    out = []
    for j in jobs:
        if j.path in failed:
            continue
        if j.path in table:
            out.append(replace(j, mpp=table[j.path], mpp_source="mpp-csv"))
        elif j.mpp is not None:
            out.append(replace(j, mpp_source=j.mpp_source or "index-csv"))
        elif j.path in values:
            out.append(replace(j, mpp=values[j.path], mpp_source=sources.get(j.path)))
        else:
            out.append(j)
    return out, failed


def shard_option(shard: str | None, cluster: str | None) -> Any:
    """``--shard K/N`` as a :class:`~histomag.cluster.Shard` (None without one); it excludes ``--cluster``."""
    if not shard:
        return None
    from histomag.cluster import parse_shard

    if cluster:
        raise ConfigError("--shard and --cluster exclude each other: a cluster takes the whole batch")
    return parse_shard(shard)


#: help of every command's ``--cluster`` option
CLUSTER_HELP = ("Dask scheduler address (e.g. tcp://HOST:8786): one task per file on its workers, which must see the "
                "files and the output under the same paths. Needs the [dask] extra.")


@contextlib.contextmanager
def cluster_client(address: str | None) -> Iterator[Any]:
    """A Dask client on ``--cluster ADDRESS`` for the command's duration (``None`` without one).

    An unreachable scheduler is a one-line :class:`~histomag.cluster.ClusterError` here, before any work.
    """
    if not address:
        yield None
        return
    from histomag.cluster import connect

    client = connect(address)
    try:
        yield client
    finally:
        client.close()
