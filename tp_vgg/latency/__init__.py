"""Latency: measured time on the user's device and runtime, and pruning to a time budget.

* ``timing`` -- interleaved measurement of models in their deployment form;
* ``runtimes`` -- the ``RUNTIMES`` registry (torch, onnxruntime);
* ``table`` -- the per-layer latency table, cached on disk;
* ``budget`` -- ``--target-latency``: rank channels by importance per predicted ms, measure;
* ``layers`` -- where a model's time goes, layer by layer.

May import: export, pruning, report, models, data, errors, registry, files, device.
Imported by: search, jobs, cli.
"""
