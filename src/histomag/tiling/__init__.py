"""Tiling: where a tuple's fields lie and how they are read (:mod:`~histomag.tiling.fields`), and tiling
slides into a dataset folder (:mod:`~histomag.tiling.jobs`)."""
