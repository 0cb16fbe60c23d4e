"""Checkpoints: where a job's model comes from and where it goes.

* ``store`` -- the checkpoint format (a dict of tensors and plain values, loaded with
  ``weights_only=True``; a pruned model is its spec, its pruning history and its weights);
* ``source`` -- :class:`ModelSource`: a model to build (with ``--weights``) or a checkpoint to
  rebuild (a user factory's only with consent).

May import: pruning, models, data, errors, registry, files, device.
Imported by: train, jobs, cli.
"""
