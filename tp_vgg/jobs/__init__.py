"""The jobs: one module per job, each its config and its run function; the library's top.

* ``prune`` -- :class:`PruneJob` and :func:`run` (`tp-vgg prune`), a straight pipeline of stages;
* ``resume`` -- :func:`resume_run` (`tp-vgg prune --resume DIR`), an interrupted prune job finished;
* ``unstructured`` -- :class:`UnstructuredConfig` and :func:`prune_unstructured` (``--unstructured``);
* ``sweep`` -- :func:`sweep` (`tp-vgg sweep`), the prune job at several ratios;
* ``sensitivity`` -- :class:`SensitivityStudy` and :func:`run_sensitivity` (`tp-vgg sensitivity`);
* ``stages`` -- the stage functions the jobs share (load, solve target, prune, recover, measure,
  report, save).

May import: search, latency, export, train, checkpoint, pruning, report, models, data, errors,
registry, files, device.
Imported by: cli.
"""

from tp_vgg.jobs.prune import FinetuneConfig, IterativeConfig, PruneJob, run
from tp_vgg.jobs.resume import resume_run
from tp_vgg.jobs.sensitivity import SensitivityStudy, run_sensitivity
from tp_vgg.jobs.stages import JobResult, Prepared
from tp_vgg.jobs.sweep import sweep
from tp_vgg.jobs.unstructured import UnstructuredConfig

__all__ = ["FinetuneConfig", "IterativeConfig", "JobResult", "Prepared", "PruneJob",
           "SensitivityStudy", "UnstructuredConfig", "resume_run", "run", "run_sensitivity",
           "sweep"]
