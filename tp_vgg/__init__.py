"""tp-vgg: make a VGG smaller and faster with torch-pruning's DependencyGraph.

Public API (one function per stage)::

    model, spec = tp_vgg.build_model(tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25))
    result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=0.5))
    counts = tp_vgg.count(model, spec)          # MACs: one multiply-add = 1 (fvcore's "flop")
    tp_vgg.save(path, model, spec, history=result.history)
    model = tp_vgg.load(path)     # a user factory's checkpoint runs code: trust_model_code=True

The whole prune job (what `tp-vgg prune` runs): load -> count -> solve target -> prune ->
fine-tune -> measure -> report -> save::

    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=spec), tp_vgg.PruneConfig(),
                          target=tp_vgg.Target(speedup=3))
    result = tp_vgg.run(job, out_dir="runs/p")   # runs/p/pruned.pt, runs/p/report.json
"""

__version__ = "0.1.0"

from tp_vgg.errors import UserError  # noqa: E402
from tp_vgg.models import ModelSpec, build_model, list_models  # noqa: E402
from tp_vgg.pruning import PruneConfig, PruneResult, prune  # noqa: E402
from tp_vgg.counting import Counts, count  # noqa: E402
from tp_vgg.checkpoint import Checkpoint, save, load, load_checkpoint  # noqa: E402
from tp_vgg.data import DataConfig  # noqa: E402
from tp_vgg.latency import LatencyConfig  # noqa: E402
from tp_vgg.targets import Target  # noqa: E402
from tp_vgg.latency_target import LatencyBudget  # noqa: E402
from tp_vgg.train_config import TrainConfig, finetuning  # noqa: E402
from tp_vgg.source import ModelSource  # noqa: E402
from tp_vgg.job import (FinetuneConfig, IterativeConfig, JobResult, PruneJob,  # noqa: E402
                        UnstructuredConfig, run, sweep)

__all__ = [
    "__version__", "UserError", "ModelSpec", "build_model", "list_models",
    "PruneConfig", "PruneResult", "prune", "Counts", "count",
    "Checkpoint", "save", "load", "load_checkpoint",
    "PruneJob", "ModelSource", "Target", "IterativeConfig", "UnstructuredConfig",
    "FinetuneConfig", "DataConfig", "TrainConfig", "finetuning", "LatencyConfig", "LatencyBudget", "JobResult", "run", "sweep",
]
