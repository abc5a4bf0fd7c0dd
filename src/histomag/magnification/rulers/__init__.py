"""Rulers: structures of known physical size that state an image's resolution.

Each ruler reads one field into a :class:`~histomag.magnification.rulers.base.RulerReading` and is
registered by name in :data:`~histomag.magnification.rulers.base.RULERS`: ``nuclei`` (the nuclear
population's size) and ``lymphocytes`` (small dense round nuclei). The estimator
(:mod:`~histomag.magnification.rulers.estimator`) pools their readings by the evidence each gives,
with the calibration leave-groups-out CV chose (:mod:`~histomag.magnification.rulers.cv`).
"""

from histomag.magnification.rulers import lymphocytes, nuclei  # noqa: F401  (registers the rulers)
