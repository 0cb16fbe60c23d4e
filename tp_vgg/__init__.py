"""tp-vgg: make a VGG smaller and faster with torch-pruning's DependencyGraph.

Public API (one function per stage)::

    spec = tp_vgg.ModelSpec("cifar_vgg11_bn", width=0.25)
    model = tp_vgg.build_model(spec)
    result = tp_vgg.prune(model, tp_vgg.PruneConfig(ratio=0.5))
    counts = tp_vgg.count(model)                # MACs: one multiply-add = 1 (fvcore's "flop")
    tp_vgg.finetune(model, "digits", epochs=2)  # fine-tuning defaults: no warm-up
    tp_vgg.save(path, model)                    # spec and pruning history kept on the model
    model = tp_vgg.load(path)     # a user factory's checkpoint runs code: trust_model_code=True

A model tp-vgg built or loaded keeps its spec, pruning history, preprocessing and meta
(``model.tp_vgg_record``, :class:`ModelRecord`), so ``count``, ``prune``, ``finetune`` and
``save`` need no spec; pass one for a model built elsewhere.

The whole prune job (what `tp-vgg prune` runs): load -> count -> solve target -> prune ->
fine-tune -> measure -> report -> save::

    job = tp_vgg.PruneJob(tp_vgg.ModelSource(spec=spec), tp_vgg.PruneConfig(),
                          target=tp_vgg.Target(speedup=3))
    result = tp_vgg.run(job, out_dir="runs/p")   # runs/p/pruned.pt, runs/p/report.json

The code is organized by part of the job, one subpackage each (lowest layer first; a layer
imports only the ones before it): ``data``, ``models``, ``report``, ``pruning``, ``checkpoint``,
``train``, ``export``, ``latency``, ``search``; ``jobs`` runs them, one module per job.
``errors``, ``registry``, ``files`` and ``device`` are the foundation, and ``cli`` only parses.
docs/architecture.md says more.
"""

__version__ = "0.1.0"

# The public names, imported on first use (PEP 562): `import tp_vgg` (and so the `tp-vgg`
# command's first line) stays cheap, so that the command line can take over Ctrl-C before torch
# and the library load. `from tp_vgg import X` and `tp_vgg.X` import X's module then.
_PUBLIC = {
    "ModelSource": "tp_vgg.checkpoint.source",
    "Checkpoint": "tp_vgg.checkpoint.store", "load": "tp_vgg.checkpoint.store",
    "load_checkpoint": "tp_vgg.checkpoint.store", "save": "tp_vgg.checkpoint.store",
    "DataConfig": "tp_vgg.data.datasets",
    "UserError": "tp_vgg.errors",
    **{name: "tp_vgg.jobs" for name in (
        "FinetuneConfig", "IterativeConfig", "JobResult", "PruneJob", "SensitivityStudy",
        "UnstructuredConfig", "run", "run_sensitivity", "sweep")},
    "LatencyBudget": "tp_vgg.latency.budget",
    "LatencyConfig": "tp_vgg.latency.timing",
    "Counts": "tp_vgg.models.counting", "count": "tp_vgg.models.counting",
    "ModelSpec": "tp_vgg.models.zoo", "build_model": "tp_vgg.models.zoo",
    "list_models": "tp_vgg.models.zoo",
    "PruneConfig": "tp_vgg.pruning.graph", "PruneResult": "tp_vgg.pruning.graph",
    "prune": "tp_vgg.pruning.graph",
    "Target": "tp_vgg.pruning.targets",
    "TrainConfig": "tp_vgg.train.config", "finetuning": "tp_vgg.train.config",
    "finetune": "tp_vgg.train.finetune", "ModelRecord": "tp_vgg.models.zoo",
}


_SUBMODULES = ("data", "models", "report", "pruning", "checkpoint", "train", "export", "latency",
               "jobs", "errors", "registry", "files", "device")


def __getattr__(name: str):
    import importlib

    module = _PUBLIC.get(name)
    if module is None:
        if name in _SUBMODULES:  # `import tp_vgg` then `tp_vgg.jobs.run`
            return importlib.import_module(f"tp_vgg.{name}")
        raise AttributeError(f"module 'tp_vgg' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))


__all__ = [
    "__version__", "UserError", "ModelSpec", "build_model", "list_models",
    "PruneConfig", "PruneResult", "prune", "Counts", "count",
    "Checkpoint", "save", "load", "load_checkpoint",
    "PruneJob", "ModelSource", "Target", "IterativeConfig", "UnstructuredConfig",
    "FinetuneConfig", "DataConfig", "TrainConfig", "finetuning", "LatencyConfig",
    "LatencyBudget", "JobResult", "run", "sweep", "SensitivityStudy", "run_sensitivity",
    "finetune", "ModelRecord",
]
