"""Models: what is pruned, and what it costs.

* ``zoo`` -- :class:`ModelSpec` and :func:`build_model`: the ``MODELS`` registry (torchvision,
  CIFAR-form and timm VGGs) and user factories (``package.module:factory``, ``file.py:factory``);
* ``weights`` -- a user's own ``state_dict`` files (``--weights``), read as data only;
* ``counting`` -- MACs and parameters with fvcore (one multiply-add = one fvcore "flop");
* ``outputs`` -- every tensor a model outputs (tuples, dicts, nested), and the ``PATHS``
  registry of raw paths that are traced, counted and timed (torchvision's detectors:
  ``head(backbone(x))``).

May import: data, errors, registry, files, device.
Imported by: report, pruning, checkpoint, train, export, latency, search, jobs, cli.
"""
