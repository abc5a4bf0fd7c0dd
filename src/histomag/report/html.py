"""The self-contained HTML report of DMSL runs, explain outputs and magnification runs.

One file: inline CSS, images as base64 PNG data URIs, no scripts, fonts or stylesheets from
elsewhere, so it opens offline and can be mailed or archived as is.

Example:
    >>> write_report(["runs/sim", "runs/mm", "runs/mag"], "report.html")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from histomag.data.atomic import atomic_write_text
from histomag.dmsl.slides import PREDICT_SLIDE_API, SIDECAR_SUFFIX
from histomag.errors import ConfigError
from histomag.report.explain import CAM_API, SIMILARITY_API, check_folder, gradcam_section, similarity_section
from histomag.report.magnification import magnification_section
from histomag.report.markup import esc
from histomag.report.runs import DMSLRun, MagRun, load_run, unique_names
from histomag.report.slides import slides_section
from histomag.report.sections import (
    Section,
    comparison_section,
    confusion_section,
    data_fraction_section,
    metrics_section,
    roc_section,
    settings_section,
)

#: ids of the report's sections, in page order
SECTION_IDS: tuple[str, ...] = ("settings", "metrics", "comparison", "roc", "confusion", "data-fraction", "gradcam", "similarity",
                                "slides", "magnification")

CSS = """
:root{--fg:#1d2430;--muted:#5b6574;--line:#d9dee6;--zebra:#f4f6f9;--head:#e6ebf2;--accent:#1f5fa8;
--note:#fff8e1;--note-line:#e0b84a}
*{box-sizing:border-box}
body{margin:0;background:#eceff3;color:var(--fg);
font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",
sans-serif}
main{max-width:1100px;margin:0 auto;padding:28px 36px 40px;background:#fff;min-height:100vh;
box-shadow:0 0 0 1px var(--line)}
h1{font-size:1.75rem;margin:.1em 0 .2em;line-height:1.25}
h2{font-size:1.35rem;margin:2.2em 0 .6em;padding-bottom:.25em;border-bottom:2px solid var(--line)}
h3{font-size:1.1rem;margin:1.6em 0 .5em}
h4{font-size:1rem;margin:1.3em 0 .4em}
a{color:var(--accent);text-decoration:none}a:hover{text-decoration:underline}
.meta,.muted,.hint{color:var(--muted)}.hint{font-size:.87rem;margin:.3em 0 1em}
code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"Liberation Mono",monospace;font-size:.86em;
background:#eff2f6;padding:.05em .35em;border-radius:3px;overflow-wrap:anywhere}
.note{background:var(--note);border-left:4px solid var(--note-line);padding:.55em .9em;border-radius:3px;margin:.6em 0}
nav.toc{background:#f7f9fb;border:1px solid var(--line);border-radius:6px;padding:.5em 1.3em .7em;margin:1.2em 0 .5em;
font-size:.93rem;columns:2;column-gap:2.5em}
nav.toc h2{font-size:1rem;border:0;margin:.3em 0;padding:0;column-span:all}
nav.toc ol{margin:.1em 0;padding-left:1.5em}nav.toc>ol>li{break-inside:avoid}nav.toc ol ol{list-style:lower-alpha}
nav.toc .off,nav.toc .off a{color:var(--muted)}
.table-wrap{overflow-x:auto;margin:.5em 0 1em}
table.data{border-collapse:collapse;font-size:.86rem}
table.data caption{text-align:left;color:var(--muted);padding-bottom:.3em}
table.data th,table.data td{padding:5px 10px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
table.data thead th{background:var(--head);border-bottom:2px solid #c3ccd9;white-space:nowrap}
table.data tbody tr:nth-child(even){background:var(--zebra)}
table.data tbody tr:hover{background:#e9f1fb}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
table.compact th,table.compact td{padding:4px 7px;white-space:nowrap}
.sd{font-size:.84em;color:var(--muted)}
.cols{display:flex;flex-wrap:wrap;gap:0 28px;align-items:flex-start}
table.settings th[scope=row]{font-family:ui-monospace,Menlo,Consolas,monospace;font-weight:500;font-size:.95em}
table.settings tr.diff td,table.settings tr.diff th{background:#fff1c2}
figure{margin:1em 0 1.4em}
figure img{display:block;max-width:100%;height:auto;border:1px solid var(--line);border-radius:4px}
figcaption{font-size:.87rem;color:var(--muted);margin-top:.35em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:0 24px;align-items:start}
details{margin:.3em 0}summary{cursor:pointer;color:var(--accent);font-size:.92rem}
.ok{color:#2e7d32;font-weight:600}.bad{color:#c62828;font-weight:600}
footer{margin-top:3em;padding-top:.6em;border-top:1px solid var(--line);font-size:.83rem;color:var(--muted)}
@media (max-width:760px){main{padding:16px}nav.toc{columns:1}.grid{grid-template-columns:1fr}}
@media print{body{background:#fff}main{box-shadow:none;max-width:none}details{display:block}}
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("histomag")
    except PackageNotFoundError:  # a source checkout that is not installed
        return "unknown"


def _toc(sections: Sequence[Section]) -> str:
    items = []
    for s in sections:
        off = ' class="off"' if not s.available else ""
        flag = ' <span class="muted">(not available)</span>' if not s.available else ""
        subs = "".join(f'<li><a href="#{esc(i)}">{esc(t)}</a></li>' for i, t in s.subsections) if s.available else ""
        items.append(f'<li{off}><a href="#{esc(s.id)}">{esc(s.title)}</a>{flag}'
                     + (f"<ol>{subs}</ol>" if subs else "") + "</li>")
    return f'<nav class="toc" aria-label="Contents"><h2>Contents</h2><ol>{"".join(items)}</ol></nav>'


def page(title: str, sections: Sequence[Section], *, subtitle: str = "", generated: datetime | None = None) -> str:
    """The whole HTML document of a report."""
    when = (generated or datetime.now()).strftime("%Y-%m-%d %H:%M")
    body = []
    for n, s in enumerate(sections, start=1):
        cls = "section" if s.available else "section unavailable"
        body.append(f'<section id="{esc(s.id)}" class="{cls}"><h2>{n}. {esc(s.title)}</h2>{s.body}</section>')
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta name="generator" content="histomag {esc(_version())}">\n'
        f"<title>{esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<header><h1>{esc(title)}</h1><p class="meta">{esc(subtitle)}{" · " if subtitle else ""}'
        f"generated {esc(when)} by histomag {esc(_version())}</p></header>\n"
        f"{_toc(sections)}\n" + "\n".join(body)
        + '\n<footer>Self-contained report: every figure is embedded; no network access is needed to view it.'
        "</footer>\n</main>\n</body>\n</html>\n")


def _explain_folders(given: Sequence[str | Path], parameter: str, make: str, dmsl: Sequence[DMSLRun],
                     sub: str) -> list[tuple[str, Path]]:
    """Explicit folders (which must exist), then ``RUN/<sub>*`` folders of each DMSL run, without repeats."""
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for d in given:
        folder = check_folder(Path(d), parameter, make)
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append((f"--{parameter} {folder.name or folder}", folder))  # the page's label, as the CLI says it
    for r in dmsl:
        for folder in sorted(p for p in r.path.iterdir() if p.is_dir() and p.name.startswith(sub)):
            if folder.resolve() not in seen:
                seen.add(folder.resolve())
                out.append((f"{r.name}/{folder.name}", folder))
    return out


def _is_prediction_folder(path: Path) -> bool:
    """A folder of slide predictions (``S.prediction.json``) that is not itself a run folder."""
    return path.is_dir() and not (path / "config.json").exists() and any(path.glob(f"*{SIDECAR_SUFFIX}"))


def _prediction_folders(given: Sequence[Path], dmsl: Sequence[DMSLRun]) -> list[tuple[str, Path]]:
    """Explicit prediction folders (which must exist), then ``RUN/predict*`` folders holding slide predictions."""
    out: list[tuple[str, Path]] = []
    seen: set[Path] = set()
    for folder in given:
        folder = check_folder(Path(folder), "predictions", PREDICT_SLIDE_API)
        if folder.resolve() not in seen:
            seen.add(folder.resolve())
            out.append((folder.name or str(folder), folder))
    for r in dmsl:
        for folder in sorted(p for p in r.path.iterdir() if p.is_dir() and p.name.startswith("predict")):
            if folder.resolve() not in seen and any(folder.glob(f"*{SIDECAR_SUFFIX}")):
                seen.add(folder.resolve())
                out.append((f"{r.name}/{folder.name}", folder))
    return out


def report_sections(runs: Sequence[str | Path], *, cams: Sequence[str | Path] = (),
                    similarity: Sequence[str | Path] = (), predictions: Sequence[str | Path] = (),
                    ) -> tuple[list[Section], list[DMSLRun], list[MagRun]]:
    """Read the inputs and build every section (see :data:`SECTION_IDS`).

    Prediction folders (of :func:`histomag.dmsl.slides.predict_slide`) may be given in ``runs`` too.

    Raises:
        ConfigError: nothing to report on.
        CheckpointError: a run folder of unknown type or with missing files.
        InputPathError: a ``cams``, ``similarity`` or ``predictions`` folder that does not exist.
    """
    if not runs and not cams and not similarity and not predictions:
        raise ConfigError("nothing to report on: give run folders (RUN...), cams=DIR, similarity=DIR or "
                          "predictions=DIR")
    given = [Path(r) for r in runs]
    pred_paths = [p for p in given if _is_prediction_folder(p)] + [Path(p) for p in predictions]
    paths = [p for p in given if not _is_prediction_folder(p)]
    loaded = [load_run(p, name) for p, name in zip(paths, unique_names(paths))]
    dmsl = [r for r in loaded if isinstance(r, DMSLRun)]
    mag = [r for r in loaded if isinstance(r, MagRun)]
    cam_dirs = _explain_folders(cams, "cams", CAM_API, dmsl, "cams")
    sim_dirs = _explain_folders(similarity, "similarity", SIMILARITY_API, dmsl, "similarity")
    pred_dirs = _prediction_folders(pred_paths, dmsl)
    sections = [settings_section(dmsl, mag), metrics_section(dmsl), comparison_section(dmsl), roc_section(dmsl),
                confusion_section(dmsl),
                data_fraction_section(dmsl), gradcam_section(cam_dirs), similarity_section(sim_dirs),
                slides_section(pred_dirs), magnification_section(mag)]
    return sections, dmsl, mag


def render_report(runs: Sequence[str | Path], *, title: str | None = None, cams: Sequence[str | Path] = (),
                  similarity: Sequence[str | Path] = (), predictions: Sequence[str | Path] = (),
                  generated: datetime | None = None) -> str:
    """The report's HTML text.

    Args:
        runs: DMSL run folders (``histomag dmsl train``) and magnification run folders
            (``histomag magnification train`` + ``evaluate``), in any order.
        title: page title (default names the runs).
        cams: Grad-CAM folders (``histomag dmsl cam``) besides any ``RUN/cams*`` folders.
        similarity: similarity folders (``histomag dmsl similarity``) besides any ``RUN/similarity*``.
        predictions: slide prediction folders (``histomag dmsl predict RUN SLIDE``) besides any
            ``RUN/predict*`` holding them (they may also be given in ``runs``).
        generated: the time stamp shown (default: now).

    Raises:
        ConfigError, CheckpointError, InputPathError: see :func:`report_sections`.
    """
    sections, dmsl, mag = report_sections(runs, cams=cams, similarity=similarity, predictions=predictions)
    names = [r.name for r in [*dmsl, *mag]]
    if title is None:
        title = "histomag report" + (f": {', '.join(names[:4])}{' …' if len(names) > 4 else ''}" if names else "")
    parts = []
    if dmsl:
        parts.append(f"{len(dmsl)} DMSL run{'s' if len(dmsl) > 1 else ''}")
    if mag:
        parts.append(f"{len(mag)} magnification run{'s' if len(mag) > 1 else ''}")
    slides = next(s for s in sections if s.id == "slides")
    if slides.available:
        parts.append(f"{len(slides.subsections)} slide{'s' if len(slides.subsections) > 1 else ''}")
    return page(title, sections, subtitle=", ".join(parts), generated=generated)


def write_report(runs: Sequence[str | Path], out: str | Path, *, title: str | None = None,
                 cams: Sequence[str | Path] = (), similarity: Sequence[str | Path] = (),
                 predictions: Sequence[str | Path] = ()) -> Path:
    """Write the report to ``out`` atomically (see :func:`render_report`); returns ``out``."""
    out = Path(out)
    text = render_report(runs, title=title, cams=cams, similarity=similarity, predictions=predictions)
    atomic_write_text(out, text)
    return out
