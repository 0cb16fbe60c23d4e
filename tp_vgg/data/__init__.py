"""Data: what a model is fed.

* ``preprocessing`` -- what a model expects of its input (size, channels, mean/std, class names);
* ``declared`` -- what the user declares (``--mean``/``--std``, ``--allow-class-mismatch``), the
  choice of normalization, and the check of the data's class names against a model's;
* ``datasets`` -- the ``DATASETS`` registry, in-memory uint8 datasets and :func:`load_data`;
* ``stream`` -- image folders read from disk batch by batch (sets larger than memory);
* ``batches`` -- seeded batching and augmentation on the device.

May import: errors, registry, files, device.
Imported by: models, pruning, checkpoint, train, export, latency, search, jobs, cli.
"""
