"""Searching the per-layer widths under a budget (``--search N``).

* ``widths`` -- EagleEye-style search: candidate width vectors within 1 % of a MAC or latency
  budget (uniform first, then perturbations of it, then an evolutionary refinement of the best),
  each scored after adaptive BN on a held-out slice of the training data, the best few
  fine-tuned briefly to choose.

May import: latency, export, train, checkpoint, pruning, report, models, data, errors, registry,
files, device.
Imported by: jobs, cli.
"""
