"""Magnification recovery: what resolution an image or slide was scanned at, from its pixels.

- :mod:`~histomag.magnification.network` — the magnifier networks (Hagnifinder regressor, level classifier);
  :mod:`~histomag.magnification.config` — ``MagnifierConfig`` and the registered presets.
- :mod:`~histomag.magnification.sources` — sources of known resolution; :mod:`~histomag.magnification.magset` —
  the magnification-set builder; :mod:`~histomag.magnification.acquisition` — acquisition randomisation.
- :mod:`~histomag.magnification.fit` — the Lightning fit; :mod:`~histomag.magnification.data` — its datasets;
  :mod:`~histomag.magnification.cv` — training and leave-groups-out CV on real sources;
  :mod:`~histomag.magnification.metrics` — evaluation; :mod:`~histomag.magnification.infer` — loading a model,
  prediction and the estimator; :mod:`~histomag.magnification.runfolder` — the run folder's owner.
- :mod:`histomag.magnification.rulers` — physical rulers (nuclei); :mod:`~histomag.magnification.estimate` —
  estimates with intervals; :mod:`~histomag.magnification.audit` — the cohort resolution audit.
- ``weights/`` — the shipped model (``magnifier-small.pt``) and its card.

Importing this package is cheap: no torch until a module that needs it is imported.
"""
