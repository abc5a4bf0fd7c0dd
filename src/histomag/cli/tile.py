"""``histomag tile``: cut same-field-of-view (or context) tuples at several magnifications."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from histomag.cli.app import app, error
from histomag.cli.options import (
    CLUSTER_HELP,
    DEFAULT_TILE_MAGS,
    MAX_UNCERTAINTY_HELP,
    SAME_ACQUISITION_HELP,
    TILE_DEFAULT,
    cluster_client,
    resolve_job_mpps,
    shard_option,
)


@app.command()
def tile(
    slides: list[Path] = typer.Argument(..., help="Slides or images (folders are expanded), or index CSVs of images "
                                        "(image, optional label, group/patient, mpp or mpp_x,mpp_y or magnification)."),
    out: Path = typer.Option(..., "--out", "-o", help="Dataset folder (created; re-running resumes)."),
    mags: str = typer.Option(DEFAULT_TILE_MAGS, "--mags", help="Magnifications of each tuple, e.g. 40,20."),
    size: int = typer.Option(TILE_DEFAULT("size"), "--size", help="Pixel size at the highest magnification."),
    mode: str = typer.Option(TILE_DEFAULT("mode"), "--layout", "--mode", help="Tuple layout: same-fov (identical tissue) or "
                             "context (same centre and px size). --mode is the older name of --layout."),
    placement: str = typer.Option(TILE_DEFAULT("placement"), "--placement", help="grid or random."),
    overlap: float = typer.Option(TILE_DEFAULT("overlap"), "--overlap", help="Grid overlap as a share of the field."),
    n_random: int = typer.Option(TILE_DEFAULT("n_random"), "--n-random", help="Fields per slide with --placement random."),
    seed: int = typer.Option(0, "--seed"),
    min_tissue: float = typer.Option(TILE_DEFAULT("min_tissue"), "--min-tissue", help="Minimum tissue share of a field."),
    tissue_threshold: Optional[float] = typer.Option(None, "--tissue-threshold", help="Override the Otsu tissue threshold."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label mask PNG or QuPath GeoJSON (one slide only)."),
    labels_dir: Optional[Path] = typer.Option(None, "--labels-dir", help="Folder with <slide>.labels.png or <slide>.geojson."),
    label_fraction: float = typer.Option(TILE_DEFAULT("label_fraction"), "--label-fraction", help="Share a class must cover to label a field."),
    negative_class: Optional[str] = typer.Option(None, "--negative-class", help="Label for fields with 0% of every other class."),
    patients: Optional[Path] = typer.Option(None, "--patients", help="CSV with slide_id,patient_id columns."),
    group_block: int = typer.Option(10, "--group-block", help="Index CSVs without a group/patient column: group "
                                    "images in blocks of this many consecutive image numbers per label (0: one "
                                    "group per image)."),
    mpp: Optional[str] = typer.Option(None, "--mpp", help="Resolution override in µm/px for every slide (mpp-x,mpp-y "
                                      "for pixels that are not square), or 'estimate' to recover it from the pixels; "
                                      "an index CSV row's own mpp and --mpp-csv win over it."),
    mpp_csv: Optional[Path] = typer.Option(None, "--mpp-csv", help="CSV of per-slide resolutions (slide, mpp or "
                                           "mpp_x,mpp_y): wins over --mpp and metadata, for slides whose metadata "
                                           "is missing or known wrong."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Magnification model for --mpp estimate "
                                              "(default: the rulers shipped with histomag; a .json rulers' calibration, cnn, or a network's run folder or model file)."),
    max_uncertainty: Optional[float] = typer.Option(None, "--max-uncertainty", help=MAX_UNCERTAINTY_HELP),
    same_acquisition: bool = typer.Option(False, "--same-acquisition", help=SAME_ACQUISITION_HELP),
    allow_upsample: bool = typer.Option(False, "--allow-upsample", help="Permit magnifications above the scan."),
    max_tuples: Optional[int] = typer.Option(None, "--max-tuples", help="At most this many tuples per slide."),
    image_format: str = typer.Option("png", "--format", help="Tuple images: png (lossless, default), qoi or jxl "
                                       "(lossless JPEG XL), jpeg (4:4:4) or webp (lossy)."),
    quality: int = typer.Option(90, "--quality", help="JPEG / WebP quality (1-100)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Slides tiled in parallel processes."),
    cluster: Optional[str] = typer.Option(None, "--cluster", help=CLUSTER_HELP),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: tile only every N-th slide from the K-th (copy K "
                                        "of N copies given the same batch, e.g. a Slurm array) into "
                                        "OUT/shards/K-of-N; join them with `histomag merge OUT`."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> int:
    """Tile slides into a dataset folder: one PNG per magnification per tuple plus manifest.csv."""
    from histomag.data.folder import TileSettings
    from histomag.data.sources import slide_jobs
    from histomag.tiling.jobs import tile_slides
    from histomag.resolution import parse_magnifications
    from histomag.tiling.fields import make_tuple_spec

    magnifications = parse_magnifications(mags)  # raises on an empty or malformed list
    the_shard = shard_option(shard, cluster)
    with cluster_client(cluster) as client:  # an unreachable scheduler: one line here, before any work
        make_tuple_spec(magnifications, size, mode)  # validate early  # type: ignore[arg-type]
        jobs, notes = slide_jobs(slides, labels=labels, labels_dir=labels_dir, patients=patients,
                                 group_block=group_block)
        for message in notes:
            print(f"note: {message}", file=sys.stderr)
        batch = [j.path for j in jobs]
        if the_shard is not None:
            from histomag.data.shards import start_shard

            jobs, out = start_shard(out, the_shard, jobs, batch)
        jobs, failed_early = resolve_job_mpps(jobs, mpp, mpp_csv, checkpoint, max_uncertainty,
                                              batch=batch, same_acquisition=same_acquisition)
        settings = TileSettings(tuple(magnifications), size, mode=mode, placement=placement, overlap=overlap,
                                n_random=n_random, seed=seed, min_tissue=min_tissue,
                                tissue_threshold=tissue_threshold, label_fraction=label_fraction,
                                negative_class=negative_class, allow_upsample=allow_upsample, max_tuples=max_tuples,
                                image_format=image_format.lower(), quality=quality)
        results = tile_slides(jobs, settings, out, workers=workers, progress=not quiet, client=client) if jobs else []
    ok = [r for r in results if r.status == "ok"]
    failed = [r.error for r in results if r.status != "ok"] + list(failed_early.values())
    for message in failed:
        error(message)
    n_all = len(results) + len(failed_early)
    written = sum(r.tuples_written for r in ok)
    resumed = sum(r.tuples_resumed for r in ok)
    dropped = sum(r.fields_dropped for r in ok)
    skipped = [e for r in results for e in r.field_errors]
    for message in skipped[:20]:
        error(message)
    if len(skipped) > 20:
        error(f"... and {len(skipped) - 20} more unreadable fields (slides.csv counts them per slide)")
    empty = [r.slide_id for r in ok if r.tuples_written + r.tuples_resumed == 0]
    if empty:
        shown = ", ".join(empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        print(f"note: {len(empty)} slide(s)/image(s) gave no tuple (smaller than one field, or too little tissue "
              f"per field): {shown}", file=sys.stderr)
    print(f"tiled {len(ok)} of {n_all} slides ({len(failed)} failed): {written} tuples written, "
          f"{resumed} already present, {dropped} fields dropped by the label rule -> {out / 'manifest.csv'}")
    if skipped:
        print(f"{len(skipped)} field(s) skipped: their image data could not be decoded (see the errors above)",
              file=sys.stderr)
    if failed:
        return 2 if not ok else 1
    return 1 if skipped else 0


@app.command()
def merge(
    out: Path = typer.Argument(..., help="The --out folder the shards were written for (OUT/shards/K-of-N)."),
    partial: bool = typer.Option(False, "--partial", help="Merge the finished shards even if some have not run."),
) -> int:
    """Join the shards of `tile --shard K/N` (or `audit --shard K/N`) as a one-process run would have written them."""
    from histomag.data.shards import merge_shards, shard_kind

    if shard_kind(out) == "audit":
        from histomag.magnification.audit import merge_audit_shards
        from histomag.report.audit import render_audit

        rows = merge_audit_shards(out, partial=partial, render=render_audit)
        bad = sum(r["verdict"] == "error" for r in rows)
        print(f"merged the audit of {len(rows)} files ({bad} unreadable) -> {out / 'audit.csv'}, {out / 'audit.html'}")
        return 1 if bad else 0
    summary = merge_shards(out, partial=partial)
    print(f"merged {summary.shards} shard(s): {summary.slides_ok} slides tiled, {summary.slides_failed} failed, "
          f"{summary.tuples} tuples -> {out / 'manifest.csv'}")
    return 1 if summary.slides_failed else 0
