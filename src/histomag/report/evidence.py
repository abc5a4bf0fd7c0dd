"""The evidence behind a resolution estimate as a picture: the field the rulers measured with every
object they took outlined (one colour per ruler), and the objects' sizes in µm at the estimated
resolution against each ruler's prior (:class:`~histomag.magnification.rulers.estimator.Evidence`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from histomag.report.plots import new_figure, to_png

CUE_COLOURS = {"nuclei": "#00e5ff", "lymphocytes": "#ffd400", "erythrocytes": "#ff3df5"}
#: the field is shown at most this wide (px)
MAX_SIDE = 700


def evidence_png(evidence: Any) -> bytes:
    """Render one :class:`Evidence` as a PNG: field with objects (left), size histograms (right)."""
    from matplotlib.patches import Circle

    field = evidence.field
    est = evidence.estimate
    fig = new_figure(12.0, 5.6)
    ax = fig.add_axes([0.01, 0.08, 0.5, 0.84])
    ax.imshow(field)
    ax.set_axis_off()
    for cue, reading in evidence.readings.items():
        colour = CUE_COLOURS.get(cue, "#ffffff")
        for y, x, d in reading.objects:
            ax.add_patch(Circle((x, y), d / 2, fill=False, lw=0.8, ec=colour))
    h, w = field.shape[:2]
    ax.set_title(f"{evidence.name}: {w}x{h} px field", fontsize=10)
    hist = fig.add_axes([0.58, 0.14, 0.39, 0.72])
    mpp = est.mpp
    lines = []
    for cue, reading in evidence.readings.items():
        colour = CUE_COLOURS.get(cue, "#444444")
        if len(reading.objects):
            um = reading.objects[:, 2] * mpp
            bins = np.geomspace(max(um.min() * 0.8, 0.5), um.max() * 1.25, 30)
            hist.hist(um, bins=bins, color=colour, alpha=0.55, label=f"{cue}: {len(um)} objects")
        prior = evidence.priors_um.get(cue)
        if prior:
            hist.axvline(prior, color=colour, lw=2, ls="--")
            lines.append(f"{cue} prior {prior:.2f} µm")
        if reading.size_px is None:
            lines.append(f"{cue}: nothing to measure ({reading.reason})")
    hist.set_xscale("log")
    from matplotlib.ticker import FormatStrFormatter

    hist.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    hist.xaxis.set_minor_formatter(FormatStrFormatter("%g"))
    hist.set_xlabel(f"object diameter in µm at the estimated {mpp:.3g} µm/px")
    hist.set_ylabel("objects")
    if hist.get_legend_handles_labels()[0]:
        hist.legend(fontsize=8, loc="upper right")
    import textwrap

    hist.set_title("\n".join(textwrap.wrap(est.describe(), 80)), fontsize=8)
    fig.text(0.58, 0.02, "; ".join(lines) + "  (dashed: the calibrated prior)", fontsize=8)
    return to_png(fig)
