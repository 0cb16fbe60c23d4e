"""Reports: what a run hands back to a person.

* ``summary`` -- the report dicts written as report.json, and the text tables the CLI prints;
* ``markdown`` -- report.md for a run folder, from the files the other commands wrote;
* ``plots`` -- headless PNG plots;
* ``compare`` -- prune runs side by side (``tp-vgg compare``): accuracy, MACs, latency and the
  overlap of the channels each removed.

May import: models, data, errors, registry, files, device.
Imported by: pruning, latency, jobs, cli.
"""
