"""Training and fine-tuning.

* ``config`` -- :class:`TrainConfig`, optimizer and LR-schedule registries, mixed precision;
* ``loop`` -- :func:`fit`, the epoch loop (``last.pt`` every epoch, resume);
* ``finetune`` -- :func:`finetune`, fine-tuning in one call with the fine-tuning defaults;
* ``steps`` -- one training epoch and the distillation loss;
* ``evaluation`` -- evaluation and BatchNorm recalibration;
* ``progress``, ``rng``, ``distributed`` -- progress bars, seeding, torchrun/DDP;
* ``interrupt`` -- Ctrl-C and SIGTERM: stop at the next step, resumably.

May import: checkpoint, pruning, models, data, errors, registry, files, device.
Imported by: export, search, jobs, cli.
"""
