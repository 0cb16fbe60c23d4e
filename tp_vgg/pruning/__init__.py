"""Pruning: which channels go, and their removal through torch-pruning's DependencyGraph.

* ``graph`` -- :class:`PruneConfig`, :func:`prune` and :func:`replay` (the DependencyGraph,
  protected layers, torch-pruning fixes);
* ``criteria`` -- the ``IMPORTANCES`` registry (l1, l2, fpgm, taylor, lamp, bn-scale, random,
  and the cross-layer rankings taylor-raw and group-norm);
* ``mapping`` -- torch-pruning's index mappings through flattens and concatenations, corrected
  from the traced shapes;
* ``checks`` -- patterns torch-pruning cannot follow, detected and explained;
* ``diagnosis`` -- the tensor ops of a forward pass recorded, and each cause of a failure
  confirmed against them before it is named;
* ``targets`` -- a MAC or speed-up target solved for a ratio (uniform or global);
* ``iterative`` -- several pruning steps; ``unstructured`` -- weight-level magnitude pruning;
* ``sparsity`` -- training regularizers that prepare a model for pruning; ``recipes`` -- the
  DepGraph and Network Slimming recipes (``--recipe``: sparse learning, then global pruning);
* ``sensitivity`` -- per-layer sensitivity curves and the ratios they recommend.

May import: report, models, data, errors, registry, files, device.
Imported by: checkpoint, train, latency, search, job, cli.
"""
