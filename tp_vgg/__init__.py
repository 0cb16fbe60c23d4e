"""tp-vgg: make a VGG smaller and faster with torch-pruning's DependencyGraph.

Public API (one function per stage)::

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25)
    model = tp_vgg.build_model(spec)
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    counts = tp_vgg.count(model, spec)          # MACs: one multiply-add = 1 (fvcore's "flop")
    tp_vgg.save(path, model, spec, history=result.history)
    model = tp_vgg.load(path)     # a user factory's checkpoint runs code: trust_model_code=True

The whole prune job (what `tp-vgg prune` runs): load -> count -> solve target -> prune ->
fine-tune -> measure -> report -> save::

    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=spec), tp_vgg.PruneConfig(),
                          target=tp_vgg.Target(speedup=3))
    result = tp_vgg.run(job, out_dir="runs/p")   # runs/p/pruned.pt, runs/p/report.json

The code is organized by part of the job, one subpackage each (lowest layer first; a layer
imports only the ones before it): ``data``, ``models``, ``report``, ``pruning``, ``checkpoint``,
``train``, ``export``, ``latency``; ``job`` runs them. ``errors``, ``registry``, ``files`` and
``device`` are the foundation, and ``cli`` only parses. README's "How the code is organized"
says more.
"""

__version__ = "0.1.0"

from tp_vgg.checkpoint.source import ModelSource  # noqa: E402
from tp_vgg.checkpoint.store import Checkpoint, load, load_checkpoint, save  # noqa: E402
from tp_vgg.data.datasets import DataConfig  # noqa: E402
from tp_vgg.errors import UserError  # noqa: E402
from tp_vgg.job import (FinetuneConfig, IterativeConfig, JobResult, PruneJob,  # noqa: E402
                        SensitivityStudy, UnstructuredConfig, run, run_sensitivity, sweep)
from tp_vgg.latency.budget import LatencyBudget  # noqa: E402
from tp_vgg.latency.timing import LatencyConfig  # noqa: E402
from tp_vgg.models.counting import Counts, count  # noqa: E402
from tp_vgg.models.zoo import ModelSpec, build_model, list_models  # noqa: E402
from tp_vgg.pruning.graph import PruneConfig, PruneResult, prune  # noqa: E402
from tp_vgg.pruning.targets import Target  # noqa: E402
from tp_vgg.train.config import TrainConfig, finetuning  # noqa: E402

__all__ = [
    "__version__", "UserError", "ModelSpec", "build_model", "list_models",
    "PruneConfig", "PruneResult", "prune", "Counts", "count",
    "Checkpoint", "save", "load", "load_checkpoint",
    "PruneJob", "ModelSource", "Target", "IterativeConfig", "UnstructuredConfig",
    "FinetuneConfig", "DataConfig", "TrainConfig", "finetuning", "LatencyConfig",
    "LatencyBudget", "JobResult", "run", "sweep", "SensitivityStudy", "run_sensitivity",
]
