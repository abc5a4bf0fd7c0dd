"""Report section of magnification runs: ACC_N tables, scatter plots, regressor vs classifier."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from histomag.report import plots
from histomag.report.markup import code, esc, figure, image, note, table
from histomag.report.runs import MAG_EVALUATE, MAG_TRAIN, MagRun
from histomag.report.sections import Section, h3

#: (column title, metrics key) of the ACC_N tables
COLUMNS: tuple[tuple[str, str], ...] = (("n", "n"), ("ACC_0.5", "acc_0.5"), ("ACC_1", "acc_1"), ("ACC_5", "acc_5"),
                                        ("MAE", "mae"), ("rel. error", "mre"), ("within 10%", "within_10pct"))


def _cells(summary: dict[str, Any]) -> list[Any]:
    return [summary.get(key) for _, key in COLUMNS]


def _mag_sort(key: str) -> float:
    try:
        return float(key)
    except ValueError:
        return float("inf")


def comparison(runs: Sequence[MagRun]) -> tuple[list[str], list[list[Any]], list[tuple[str, list[Any]]]] | None:
    """Per-level accuracy of every run when a regressor and a classifier are both given.

    Returns:
        ``(header, rows, bar series)`` or None. Rows: one per level, then ``all``; each run
        contributes its accuracy at the nearest level on the rows near a level.
    """
    kinds = {r.kind for r in runs if isinstance(r.metrics.get("levels"), dict)}
    if not {"regressor", "classifier"} <= kinds:
        return None
    used = [r for r in runs if isinstance(r.metrics.get("levels"), dict)]
    levels: list[str] = []
    for r in used:
        levels += [k for k in r.metrics["levels"].get("per_level", {}) if k not in levels]
    levels.sort(key=_mag_sort)
    header = ["level"] + [h for r in used for h in (f"{r.name} ({r.kind}) n", f"{r.name} ({r.kind}) accuracy")]
    rows, series = [], []
    for level in levels:
        row: list[Any] = [f"{level}x"]
        for r in used:
            entry = r.metrics["levels"].get("per_level", {}).get(level, {})
            row += [entry.get("n"), entry.get("accuracy")]
        rows.append(row)
    overall: list[Any] = ["all"]
    for r in used:
        overall += [r.metrics["levels"].get("n"), r.metrics["levels"].get("accuracy")]
    rows.append(overall)
    for r in used:
        per = r.metrics["levels"].get("per_level", {})
        series.append((f"{r.name} ({r.kind})", [per.get(lv, {}).get("accuracy") for lv in levels]))
    return header, rows, series


def magnification_section(runs: Sequence[MagRun]) -> Section:
    """ACC_N overall and per magnification, true-vs-predicted scatter, and the level comparison."""
    title = "Magnification model"
    if not runs:
        return Section("magnification", title, note(
            f"no magnification runs were given: run {code(MAG_TRAIN.format(run='RUN'))} and "
            f"{code(MAG_EVALUATE.format(run='RUN'))}, then pass RUN to the report."), available=False,
            subsections=[("mag-comparison", "Regressor vs classifier")])
    header = ["run", "type", "backbone", "split", *(c for c, _ in COLUMNS)]
    overall = []
    for r in runs:
        info = r.metrics.get("run", {})
        overall.append([r.name, r.kind, info.get("backbone", r.config.get("backbone", "")), info.get("split", ""),
                        *_cells(r.metrics["overall"])])
    body = [h3("mag-overall", "Overall"), table(header, overall, numeric_from=4, css="mag-overall"),
            ('<p class="hint">ACC_N: share of images with |predicted − true| ≤ N (Hagnifinder); MAE in '
             "magnification units; relative error: mean |predicted − true| / true.</p>")]
    per = []
    for r in runs:
        for mag in sorted(r.metrics.get("per_magnification", {}), key=_mag_sort):
            per.append([r.name, f"{mag}x", *_cells(r.metrics["per_magnification"][mag])])
    body += [h3("mag-per-magnification", "Per magnification"),
             table(["run", "true magnification", *(c for c, _ in COLUMNS)], per, numeric_from=2, css="mag-per")]
    body.append(h3("mag-scatter", "True vs predicted"))
    figs = []
    for r in runs:
        if r.scatter is not None:
            png = r.scatter.read_bytes()
        elif r.true is not None and r.pred is not None and len(r.true):
            png = plots.scatter_png(r.true, r.pred, f"{r.kind} (n = {len(r.true)})")
        else:
            missing = (f"{esc(r.name)} has no eval/scatter.png or eval/predictions.csv: run "
                       f"{code(MAG_EVALUATE.format(run=r.path))}.")
            figs.append(f"<div>{note(missing)}</div>")
            continue
        figs.append(figure(image(png, f"true vs predicted magnification of {r.name}", max_width=600),
                           f"<strong>{esc(r.name)}</strong> ({esc(r.model_type)})"))
    body.append('<div class="grid">' + "".join(figs) + "</div>")
    body.append(h3("mag-comparison", "Regressor vs classifier"))
    comp = comparison(runs)
    if comp is None:
        body.append(note("needs a regressor run and a classifier run evaluated on the same set: "
                         f"{code('histomag magnification train DATA --out RUN_C --model classifier')} and "
                         f"{code(MAG_EVALUATE.format(run='RUN_C'))}."))
    else:
        head, rows, series = comp
        sets = {(str(r.metrics.get("run", {}).get("data_dir")), str(r.metrics.get("run", {}).get("split")))
                for r in runs}
        body.append(figure(image(plots.level_bars_png([str(row[0]) for row in rows[:-1]], series),
                                 "per-level accuracy of regressor and classifier", max_width=800),
                           "Accuracy after mapping true and predicted magnifications to the nearest level, on the "
                           "images whose true magnification is within the level tolerance of a level."))
        body.append(table(head, rows, numeric_from=1, css="mag-comparison"))
        if len(sets) > 1:
            body.append(f'<p class="hint">The runs were evaluated on different sets or splits '
                        f"({esc('; '.join(f'{d} [{s}]' for d, s in sorted(sets)))}): compare with care.</p>")
    subsections = [("mag-overall", "Overall"), ("mag-per-magnification", "Per magnification"),
                   ("mag-scatter", "True vs predicted"), ("mag-comparison", "Regressor vs classifier")]
    return Section("magnification", title, "".join(body), subsections=subsections)

