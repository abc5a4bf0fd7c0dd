"""Physically scaled synthetic H&E tissue and a pyramidal TIFF writer.

* :func:`render_tissue` renders a slide (RGB + label mask) at a given µm/px; nuclei, glands,
  fat and fibres have physical sizes, so the same tissue looks right at every magnification.
* :func:`write_pyramidal_tiff` writes an Aperio-style tiled pyramid that OpenSlide and TiffSlide
  both open with the right mpp and objective power.
* :func:`make_cohort` writes a folder of slides, label masks, overviews and ``cohort.csv``.
"""

from histomag.synth.cohort import SlideRecord, make_cohort, read_cohort_csv
from histomag.synth.layout import MORPHOLOGIES
from histomag.synth.render import SynthTissue, build_scene, render_tissue
from histomag.synth.tiff import area_halve, write_pyramidal_tiff

__all__ = ["MORPHOLOGIES", "SlideRecord", "SynthTissue", "area_halve", "build_scene", "make_cohort",
           "read_cohort_csv", "render_tissue", "write_pyramidal_tiff"]
