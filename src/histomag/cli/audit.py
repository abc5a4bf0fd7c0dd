"""``histomag audit``: the resolution every file states vs the one its pixels show, with a verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app, error
from histomag.cli.options import CLUSTER_HELP, cluster_client, shard_option


@app.command()
def audit(
    paths: list[Path] = typer.Argument(..., help="Slides, images, or folders of them."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for audit.csv and audit.html."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="Estimator (default: the rulers "
                                              "shipped with histomag; a rulers' .json, cnn, or a network's run or "
                                              "model file)."),
    n_crops: int = typer.Option(32, "--n-crops", help="At most this many fields (rulers) or crops (a network) per file."),
    evidence: bool = typer.Option(False, "--evidence", help="Also draw what the rulers measured in each file "
                                  "(OUT/evidence/*.png, linked from audit.html)."),
    overlays: bool = typer.Option(False, "--overlays", help="Also draw each file's thumbnail with its tissue mask and "
                                  "the fields the estimate measured outlined (OUT/overlays/*.png, linked from "
                                  "audit.html)."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: audit only every N-th file from the K-th (copy K "
                                        "of N copies given the same files) into OUT/shards/K-of-N; join them with "
                                        "`histomag merge OUT`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Per file: metadata mpp (or none), estimate with its interval, verdict ok / missing / likely wrong."""
    from histomag.magnification.audit import audit_files
    from histomag.magnification.sources import expand_image_paths
    from histomag.errors import InputPathError
    from histomag.magnification.infer import load_estimator
    from histomag.report.audit import render_audit

    if out.exists() and not out.is_dir():
        raise InputPathError(f"{out} is a file; give a folder for the audit")
    the_shard = shard_option(shard, cluster)
    items = expand_image_paths(paths)
    estimator = load_estimator(checkpoint)
    if the_shard is not None:
        from histomag.data.shards import start_shard

        items, out = start_shard(out, the_shard, items, [str(p) for p in items], kind="audit",
                                 model=estimator.source)
    if evidence and cluster:
        from histomag.errors import ConfigError

        raise ConfigError("--evidence draws each file here; drop --cluster, or audit without --evidence")
    draw = None
    if evidence:
        from histomag.report.evidence import evidence_png as draw
    with cluster_client(cluster) as client:
        rows = audit_files(items, estimator, out, n_crops=n_crops, progress=not quiet, client=client,
                           checkpoint=checkpoint, keep_thumbs=the_shard is not None, render=render_audit,
                           evidence=draw, overlays=overlays)
    bad = [r for r in rows if r["verdict"] == "error"]
    for r in bad:
        error(r["error"])
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("ok", "likely wrong", "missing", "error")}
    print(", ".join(f"{n} {v}" for v, n in counts.items()) + f" -> {out / 'audit.csv'}, {out / 'audit.html'}")
    if bad:
        return 2 if len(bad) == len(rows) else 1
    return 0
