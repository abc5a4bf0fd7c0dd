"""DMSL: multi-magnification similarity learning (Diao et al., IEEE JBHI 2023) and its baselines.

- :mod:`~histomag.dmsl.network` — ``MultiMagNet``, one branch per magnification;
  :mod:`~histomag.dmsl.similarity` — the SIM loss; :mod:`~histomag.dmsl.modes` — the mode registry.
- :mod:`~histomag.dmsl.config` — ``DMSLConfig``, the training settings and their defaults (no torch);
  :mod:`~histomag.dmsl.fit` — one fold's Lightning fit; :mod:`~histomag.dmsl.cv` —
  patient-grouped cross-validation and evaluation; :mod:`~histomag.dmsl.predict` — prediction of
  dataset folders, slides and images; :mod:`~histomag.dmsl.metrics` — tuple- and patient-level metrics.
- :mod:`~histomag.dmsl.runfolder` — ``RunFolder``, the run folder's owner (no torch).
- :mod:`histomag.dmsl.explain` — Grad-CAM per branch and similarity statistics.

Importing this package is cheap: no torch until a module that needs it is imported.
"""
