"""Pruning: which channels go, and their removal through torch-pruning's DependencyGraph.

* ``graph`` -- :class:`PruneConfig`, :func:`prune` and :func:`replay` (the DependencyGraph,
  protected layers, torch-pruning fixes);
* ``criteria`` -- the ``IMPORTANCES`` registry (l1, l2, fpgm, taylor, lamp, bn-scale, random,
  and the cross-layer rankings taylor-raw and group-norm);
* ``mapping`` -- torch-pruning's index mappings through flattens and concatenations, corrected
  from the traced shapes, inside tp-vgg's own calls only (``scope``);
* ``reparam`` -- spectral-norm and weight-norm layers, unwrapped for pruning and registered
  again on the kept rows and columns;
* ``buffers`` -- per-channel registered buffers of the user's modules, pruned with their
  channels;
* ``raw`` -- raw torch-pruning as a new user runs it, with its own masked-equivalence check:
  the reference tp-vgg is compared with (the parity test, benchmarks/coverage.py);
* ``checks`` -- patterns torch-pruning cannot follow, detected and explained;
* ``diagnosis`` -- the tensor ops of a forward pass recorded, and each cause of a failure
  confirmed against them before it is named;
* ``targets`` -- a MAC or speed-up target solved for a ratio (uniform or global);
* ``iterative`` -- several pruning steps; ``unstructured`` -- weight-level magnitude pruning;
* ``sparsity`` -- training regularizers that prepare a model for pruning; ``recipes`` -- the
  DepGraph and Network Slimming recipes (``--recipe``: sparse learning, then global pruning);
* ``sensitivity`` -- per-layer sensitivity curves and the ratios they recommend.

May import: report, models, data, errors, registry, files, device.
Imported by: checkpoint, train, latency, search, jobs, cli.
"""
