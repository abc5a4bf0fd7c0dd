"""Report sections about settings and DMSL runs: settings, metrics table, ROC, confusion, data fraction.

Every builder returns a :class:`Section`, present whether or not its inputs exist: without them
its body is a short "not available" note naming the command that makes them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from histomag.dmsl.config import RUNTIME_FIELDS  # what does not change what a run learns
from histomag.report import plots
from histomag.report.markup import code, esc, figure, image, note, table
from histomag.report.runs import DMSL_EVALUATE, DMSL_TRAIN, MAG_TRAIN, DMSLRun, MagRun

LEVELS = ("patch", "patient")


@dataclass
class Section:
    """One ``<section>`` of the report.

    Attributes:
        id: HTML id (the table of contents links to it).
        title: heading text.
        body: HTML inside the section, below the heading.
        available: False when the body is only a "not available" note.
        subsections: ``(id, title)`` of ``<h3>`` headings inside the body, for the table of contents.
    """

    id: str
    title: str
    body: str
    available: bool = True
    subsections: list[tuple[str, str]] = field(default_factory=list)


def h3(id_: str, title: str) -> str:
    """A sub-heading with an id."""
    return f'<h3 id="{esc(id_)}">{esc(title)}</h3>'


def _no_dmsl(section_id: str, title: str, what: str) -> Section:
    return Section(section_id, title, note(f"{esc(what)}: run {code(DMSL_TRAIN.format(run='RUN'))} and pass RUN "
                                           "to the report."), available=False)


# ----- settings ---------------------------------------------------------------------------------
def config_value(value: Any) -> str:
    """A setting as written in the config (floats in ``%g`` form, lists joined, None as ``none``)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(config_value(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={config_value(v)}" for k, v in value.items())
    return str(value)


def _config_table(runs: Sequence[DMSLRun | MagRun], configs: Sequence[dict[str, Any]], *, only_diff: bool = False
                  ) -> str:
    """Settings as rows, runs as columns; rows whose values differ between runs are marked."""
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    rows = []
    for k in keys:
        values = [config_value(c[k]) if k in c else "—" for c in configs]
        differs = len(runs) > 1 and len(set(values)) > 1
        if only_diff and not differs:
            continue
        cls = ' class="diff"' if differs and not only_diff else ""
        rows.append(f'<tr{cls}><th scope="row">{esc(k)}</th>' + "".join(f"<td>{esc(v)}</td>" for v in values)
                    + "</tr>")
    head = "<th>setting</th>" + "".join(f"<th>{esc(r.name)}</th>" for r in runs)
    return (f'<div class="table-wrap"><table class="data settings"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def _settings_block(id_: str, title: str, runs: Sequence[DMSLRun | MagRun], configs: Sequence[dict[str, Any]]
                    ) -> str:
    """Differing settings in the open (several runs), every setting in a collapsible table."""
    body = [h3(id_, title)]
    several = len(runs) > 1
    if several:
        diff = _config_table(runs, configs, only_diff=True)
        if "<tr>" in diff.split("<tbody>", 1)[1]:
            body.append('<p class="hint">Settings that differ between the runs:</p>' + diff)
        else:
            body.append('<p class="hint">The runs have identical settings.</p>')
    n_keys = len({k for c in configs for k in c})
    if several:
        full = _config_table(runs, configs)
    else:  # one run: two half tables side by side instead of one long column
        items = list(configs[0].items())
        half = (len(items) + 1) // 2
        full = '<div class="cols">' + "".join(_config_table(runs, [dict(part)]) for part in
                                              (items[:half], items[half:]) if part) + "</div>"
    body.append(f"<details{'' if several else ' open'}><summary>All {n_keys} settings"
                f"{' (differing rows highlighted)' if several else ''}</summary>{full}</details>")
    return "".join(body)


def settings_section(dmsl: Sequence[DMSLRun], mag: Sequence[MagRun]) -> Section:
    """Each run's folder, data, classes, tuple mode, date and resolved config."""
    if not dmsl and not mag:
        return Section("settings", "Settings", note(
            f"no run folders were given: pass folders made by {code(DMSL_TRAIN.format(run='RUN'))} or "
            f"{code(MAG_TRAIN.format(run='RUN'))}."), available=False)
    overview = [[r.name, "DMSL", str(r.path.resolve()), r.data, ", ".join(r.classes),
                 r.tuple_mode or "n/a", r.date] for r in dmsl]
    overview += [[r.name, r.model_type.replace("-", " "), str(r.path.resolve()), str(r.config.get("data_dir", "")),
                  "levels " + config_value(r.config.get("levels", [])), "n/a", r.date] for r in mag]
    body = [table(["run", "type", "folder", "data folder", "classes", "tuple mode", "date (metrics written)"],
                  overview, css="overview")]
    subsections = []
    if dmsl:
        subsections.append(("settings-dmsl", "DMSL run settings"))
        configs = [{**r.config, **{f"tile.{k}": v for k, v in r.tile_settings.items()}} for r in dmsl]
        body.append(_settings_block("settings-dmsl", "DMSL run settings", dmsl, configs))
    if mag:
        subsections.append(("settings-magnification", "Magnification run settings"))
        body.append(_settings_block("settings-magnification", "Magnification run settings", mag,
                                    [r.config for r in mag]))
    return Section("settings", "Settings", "".join(body), subsections=subsections)


# ----- metrics table ----------------------------------------------------------------------------
def metrics_section(dmsl: Sequence[DMSLRun]) -> Section:
    """Table III of the paper for every DMSL run: mean ± std over folds, patch and patient level."""
    from histomag.dmsl.metrics import TABLE_COLUMNS, TABLE_KEYS, table_rows

    if not dmsl:
        return _no_dmsl("metrics", "Metrics", "no DMSL runs were given")
    fractions = {float(r.config.get("train_fraction", 1.0)) for r in dmsl}
    show_fraction = len(fractions) > 1
    best: dict[tuple[str, str], float] = {}
    for r in dmsl:
        for level in LEVELS:
            for _, key in TABLE_KEYS:
                m = float(r.summary[level][key]["mean"])
                if math.isfinite(m):
                    best[(level, key)] = max(best.get((level, key), -math.inf), m)
    header = ["run", *TABLE_COLUMNS[:4], *(["train %"] if show_fraction else []), *TABLE_COLUMNS[4:]]
    partial = False
    lines = []
    for level in LEVELS:
        for r in dmsl:
            c = r.config
            n_folds = len(r.metrics.get("folds", [])) or int(c.get("folds", 0))
            row = table_rows(r.summary, mode=str(c.get("mode")), magnifications=[float(m) for m in c["magnifications"]],
                             backbone=str(c.get("backbone")))[LEVELS.index(level)]
            cells = [esc(r.name), *(esc(row[k]) for k in TABLE_COLUMNS[:4])]
            if show_fraction:
                cells.append(esc(f"{100 * float(c.get('train_fraction', 1.0)):g}"))
            for col, key in TABLE_KEYS:
                stat = r.summary[level][key]
                strong = len(dmsl) > 1 and math.isfinite(stat["mean"]) and stat["mean"] == best.get((level, key))
                mean_text, _, std_text = row[col].partition(" ± ")
                text = esc(mean_text) + (f' <span class="sd">± {esc(std_text)}</span>' if std_text else "")
                text = f"<strong>{text}</strong>" if strong else text
                if 0 < int(stat.get("folds", n_folds)) < n_folds:  # some fold had no value (a class was missing)
                    text += f'<sup title="{int(stat["folds"])} of {n_folds} folds">†</sup>'
                    partial = True
                cells.append(f'<span data-metric="{key}" data-level="{level}" data-mean="{stat["mean"]!r}" '
                             f'data-std="{stat["std"]!r}">{text}</span>')
            lines.append(cells)
    numeric_from = len(header) - len(TABLE_KEYS)
    folds = sorted({len(r.metrics.get("folds", [])) for r in dmsl})
    body = [table(header, lines, raw=True, numeric_from=numeric_from, css="metrics compact")]
    hint = (f"Mean ± sample standard deviation over the {'/'.join(map(str, folds))} cross-validation folds; "
            "PRE/REC/F1 of the positive class (the second class in sorted order) for two classes, macro averages "
            "otherwise; the patient level averages each patient's tuple probabilities.")
    if partial:
        hint += " †: over fewer folds (some fold's test set lacked a class)."
    if len(dmsl) > 1:
        hint += " The best mean per level is in bold."
    body.append(f'<p class="hint">{esc(hint)}</p>')
    for r in dmsl:
        body.append(_fold_details(r))
    return Section("metrics", "Metrics", "".join(body))


def _fold_details(run: DMSLRun) -> str:
    from histomag.dmsl.metrics import TABLE_KEYS

    rows = []
    for k, fold in enumerate(run.metrics.get("folds", []), start=1):
        for level in LEVELS:
            if level in fold:
                rows.append([k, level, fold[level].get("n", ""), *(fold[level].get(key) for _, key in TABLE_KEYS)])
    if not rows:
        return ""
    return (f"<details><summary>Per-fold metrics of {esc(run.name)}</summary>"
            + table(["fold", "level", "n", *(c for c, _ in TABLE_KEYS)], rows, numeric_from=2) + "</details>")


# ----- ROC and confusion ------------------------------------------------------------------------
def roc_section(dmsl: Sequence[DMSLRun]) -> Section:
    """ROC curves from the folds' ``predictions.csv``: all two-class runs together, then each run."""
    if not dmsl:
        return _no_dmsl("roc", "ROC curves", "no DMSL runs were given")
    body = []
    binary = [r for r in dmsl if len(r.classes) == 2 and r.folds]
    if len(binary) > 1:
        png = plots.roc_compare_png([(r.name, r.folds) for r in binary])
        if png is not None:
            body.append(figure(image(png, "pooled ROC curves of the runs"),
                               "Every fold's test predictions pooled per run (positive class: the second class in "
                               "sorted order). The pooled AUC can differ from the mean of the folds' AUCs in the "
                               "metrics table."))
    per_run = []
    for r in dmsl:
        png = plots.roc_png(r.folds, r.classes, f"{r.name}: {r.label}")
        if png is None:
            per_run.append(f"<h4>{esc(r.name)}</h4>" + note(
                f"{esc(r.name)} has no folds/K/predictions.csv: run {code(DMSL_EVALUATE.format(run=r.path))}."))
            continue
        missing = ""
        if r.missing_predictions:
            missing = (f" Folds {esc(', '.join(map(str, r.missing_predictions)))} have no predictions.csv "
                       f"({code(DMSL_EVALUATE.format(run=r.path))} makes them).")
        fig = figure(image(png, f"ROC curves of {r.name}"),
                     f"<strong>{esc(r.name)}</strong>: test predictions of {len(r.folds)} fold(s), per fold and "
                     f"pooled.{missing}")
        folded = len(binary) > 1 and any(r is b for b in binary)
        per_run.append(f"<details><summary>Per-fold ROC curves of {esc(r.name)}</summary>{fig}</details>" if folded
                       else fig)
    body += per_run
    available = any("<img" in part for part in body)
    return Section("roc", "ROC curves", "".join(body), available=available)


def pooled_confusion(run: DMSLRun) -> dict[str, np.ndarray] | None:
    """Confusion matrices summed over folds per level (from metrics.json, else from predictions)."""
    n = len(run.classes)
    folds = run.metrics.get("folds", [])
    out: dict[str, np.ndarray] = {}
    for level in LEVELS:
        mats = [np.asarray(f[level]["confusion_matrix"]) for f in folds
                if level in f and "confusion_matrix" in f[level]]
        if mats and all(m.shape == (n, n) for m in mats):
            out[level] = np.sum(mats, axis=0)
    if len(out) == len(LEVELS):
        return out
    if not run.folds:
        return None
    sets = plots.level_sets(run.folds)
    out = {}
    for level in LEVELS:
        m = np.zeros((n, n), dtype=int)
        for _, y, p in sets[level]:
            np.add.at(m, (y, p.argmax(axis=1)), 1)
        out[level] = m
    return out


def confusion_section(dmsl: Sequence[DMSLRun]) -> Section:
    """Confusion matrices pooled over folds, patch and patient level."""
    if not dmsl:
        return _no_dmsl("confusion", "Confusion matrices", "no DMSL runs were given")
    body, any_plot = [], False
    for r in dmsl:
        mats = pooled_confusion(r)
        if mats is None:
            body.append(f"<h4>{esc(r.name)}</h4>" + note(
                f"{esc(r.name)} has neither confusion matrices in metrics.json nor predictions: run "
                f"{code(DMSL_EVALUATE.format(run=r.path))}."))
            continue
        any_plot = True
        body.append(figure(image(plots.confusion_png(mats, r.classes, f"{r.name}: {r.label}"),
                                 f"confusion matrices of {r.name}"),
                           f"<strong>{esc(r.name)}</strong>: counts summed over the folds' test sets, and the share "
                           "of each true class (rows)."))
    return Section("confusion", "Confusion matrices", '<div class="grid">' + "".join(body) + "</div>",
                   available=any_plot)


# ----- data fraction ----------------------------------------------------------------------------
def fraction_groups(dmsl: Sequence[DMSLRun]) -> list[list[DMSLRun]]:
    """Runs with the same settings and data except ``train_fraction`` (and runtime fields).

    Returns:
        Groups of two or more distinct fractions, each sorted by fraction (one run per fraction:
        the first given).
    """
    groups: dict[str, list[DMSLRun]] = {}
    for r in dmsl:
        key = {k: v for k, v in r.config.items() if k not in RUNTIME_FIELDS and k != "train_fraction"}
        groups.setdefault(json.dumps({**key, "data": r.data}, sort_keys=True, default=str), []).append(r)
    out = []
    for members in groups.values():
        by_fraction: dict[float, DMSLRun] = {}
        for r in members:
            by_fraction.setdefault(float(r.config.get("train_fraction", 1.0)), r)
        if len(by_fraction) > 1:
            out.append([by_fraction[f] for f in sorted(by_fraction)])
    return out


def data_fraction_section(dmsl: Sequence[DMSLRun]) -> Section:
    """Metrics versus the share of training data used (the paper's Fig. 3)."""
    from histomag.dmsl.metrics import TABLE_KEYS

    title = "Data-fraction curve"
    groups = fraction_groups(dmsl)
    if not groups:
        return Section("data-fraction", title, note(
            "needs two or more DMSL runs that differ only in the training fraction, e.g. "
            f"{code('histomag dmsl train DATA --out RUN_25 --train-fraction 0.25')} next to a run with "
            f"{code('--train-fraction 1')}."), available=False)
    labels = [g[0].label for g in groups]
    labels = [lab if labels.count(lab) == 1 else f"{lab} #{labels[:i + 1].count(lab)}" for i, lab in enumerate(labels)]
    lines, rows = [], []
    for label, group in zip(labels, groups):
        fractions = [float(r.config.get("train_fraction", 1.0)) for r in group]
        values = {level: {key: [(r.summary[level][key]["mean"], r.summary[level][key]["std"]) for r in group]
                          for _, key in TABLE_KEYS} for level in LEVELS}
        lines.append((label, fractions, values))
        for f, r in zip(fractions, group):
            rows.append([label, r.name, f"{100 * f:g}",
                         *(f"{r.summary[lv][k]['mean']:.3f} ± {r.summary[lv][k]['std']:.3f}"
                           for lv in LEVELS for k in ("accuracy", "auc"))])
    body = figure(image(plots.fraction_png(lines), "metrics versus training data fraction"),
                  "Mean ± standard deviation over folds versus the share of each fold's training tuples used.")
    body += table(["settings", "run", "train %", "patch ACC", "patch AUC", "patient ACC", "patient AUC"], rows,
                  numeric_from=2)
    return Section("data-fraction", title, body)


# ----- paired comparisons -----------------------------------------------------------------------
#: bootstrap draws of the report's paired comparisons (the CLI's `dmsl compare` defaults to 2,000)
REPORT_BOOT = 1000


def comparison_section(dmsl: Sequence[DMSLRun]) -> Section:
    """Each run against the first one: paired differences with 95% bootstrap intervals (:mod:`histomag.dmsl.compare`).

    Runs pair when they share (seed, fold) and test tuples (the same data, seed and folds); other
    runs are listed as not comparable, with the reason.
    """
    from histomag.dmsl.compare import compare_runs
    from histomag.errors import HistomagError

    if len(dmsl) < 2:
        return _no_dmsl("comparison", "Paired comparison", "fewer than two DMSL runs were given")
    ref = dmsl[0]
    rows, notes = [], []
    for run in dmsl[1:]:
        try:
            result = compare_runs(run.path, ref.path, level="slide", n_boot=REPORT_BOOT)
        except HistomagError as exc:
            notes.append(f"{run.name}: not comparable with {ref.name} ({exc})")
            continue
        for m in result.metrics:
            rows.append([run.name, m.metric, f"{m.mean_a:.3f}", f"{m.mean_b:.3f}", f"{m.delta:+.3f}",
                         f"[{m.low:+.3f}, {m.high:+.3f}]", f"{m.a_better}/{m.pairs}"])
    body = []
    if rows:
        body.append(table(["run (A)", "metric", "A", f"B: {ref.name}", "Δ (A − B)", "95% interval",
                           "pairs with A better"], rows, numeric_from=2, css="compact"))
        hint = ("Every run against the first, paired by seed and fold at the slide (image) level; the interval "
                "resamples the test patients of every fold with replacement, the same draw for both runs "
                f"({REPORT_BOOT:,} draws). An interval that holds 0 is no evidence of a difference.")
        body.append(f'<p class="hint">{esc(hint)}</p>')
    for note in notes:
        body.append(f'<p class="hint">{esc(note)}</p>')
    if not rows:
        return Section("comparison", "Paired comparison", "".join(body), available=False)
    return Section("comparison", "Paired comparison", "".join(body))
