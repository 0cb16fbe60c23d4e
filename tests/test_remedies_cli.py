"""Printed remedies of the command line, checkpoints, models, latency and export (``tp_vgg/cli``,
``checkpoint/``, ``models/``, ``job.py``, ``latency/``, ``export/``), applied to the failing case
(issue 19 item 5; the catalogue and its meta-test: ``tests/test_remedies.py``)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import signal
from pathlib import Path

import pytest
import torch
import torchvision
from methods_util import FAKE, QUIET, TINY, USER_MODEL
from remedies_util import USER_MODELS, Remedy, run_remedy

import tp_vgg
from tp_vgg.cli import main as cli_main
from tp_vgg.models.zoo import ModelSpec, build_model, cached_weights_file

TINY_SPEC = ModelSpec("cifar_vgg11_bn", width=0.125)
FAST_LATENCY = ["--batch-sizes", "1", "--warmup", "1", "--repeats", "2", "--threads", "1"]
OOM_LATENCY = ["--latency", "--batch-sizes", "1,32", "--warmup", "1", "--repeats", "1",
               "--threads", "1"]
ROUND_AUTO = ["--round-to", "auto", "--latency-batch", "2", "--threads", "1", "--device", "cpu"]

# A model that runs out of memory (simulated, as CUDA would) when batch x pixels x width is over
# that of 32 images of 32x32 px at its default width 0.25: a smaller batch, input or width fits.
OOM_MODEL = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes=10, width=0.25):
        super().__init__()
        c = max(2, int(32 * width))
        self.width = width
        self.features = nn.Sequential(nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c),
                                      nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        if x.shape[0] * x.shape[-2] * x.shape[-1] * self.width > 32 * 32 * 32 * 0.25:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.classifier(self.features(x))


def make(num_classes=10, width=0.25):
    return Net(num_classes, width)
'''


def quiet(argv) -> int:
    """The CLI run by a setup, its output kept out of the case's own."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_main([str(a) for a in argv])


def oom_model(c) -> str:
    if "oom" not in c.cache:
        c.cache["oom"] = f"{c.write('oom_net.py', OOM_MODEL)}:make"
    return c.cache["oom"]


def user_file(c):
    if not c.path("user_vgg.py").exists():
        c.write("user_vgg.py", USER_MODEL)
    return c.path("user_vgg.py")


def zoo_ckpt(c) -> None:
    """``zoo.pt``: the tiny zoo model, saved by the library."""
    tp_vgg.save(str(c.path("zoo.pt")), build_model(TINY_SPEC), TINY_SPEC)


def user_ckpt(c) -> None:
    """``user.pt``: a checkpoint of the user model file ``user_vgg.py`` (built from its code)."""
    spec = ModelSpec(f"{user_file(c)}:make")
    tp_vgg.save(str(c.path("user.pt")), build_model(spec), spec)


def changed_user_ckpt(c) -> None:
    user_ckpt(c)
    user_file(c).write_text(USER_MODEL + "\n# a line added after the checkpoint was written\n")


def oom_ckpt(c) -> None:
    spec = ModelSpec(oom_model(c))
    tp_vgg.save(str(c.path("oom.pt")), build_model(spec), spec)


def plain_state_dict(c) -> None:
    torch.save(build_model(TINY_SPEC).state_dict(), c.path("model.pth"))


def nested_state_dict(c) -> None:
    torch.save({"epoch": 3, "ema": build_model(TINY_SPEC).state_dict()}, c.path("ema.pth"))


def prefixed_state_dict(c) -> None:
    """The model's tensors under ``net.``, beside a loss's: only ``--weights-key net`` fits."""
    sd = build_model(TINY_SPEC).state_dict()
    torch.save({"state_dict": {**{"net." + k: v for k, v in sd.items()},
                               "criterion.weight": torch.ones(10)}}, c.path("w.ckpt"))


def other_head_state_dict(c) -> None:
    """58 of the 60 tensors fit: the head is of a 100-class model."""
    sd = build_model(ModelSpec("cifar_vgg11_bn", width=0.125, num_classes=100)).state_dict()
    torch.save(sd, c.path("head100.pt"))


def torchvision_cache(c) -> None:
    """vgg11's IMAGENET1K_V1 file where torch hub caches it ($TORCH_HOME is ``c.path('torch')``,
    set by :func:`test_remedy`): every tensor a broadcast zero, so the file is a few KB."""
    _, path = cached_weights_file("vgg11", "IMAGENET1K_V1")
    assert path.startswith(str(c.path("torch")))
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in torchvision.models.vgg11().state_dict().items()}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: torch.zeros(()).expand(s) for k, s in shapes.items()}, path)


def onnx_files(c) -> None:
    zoo_ckpt(c)
    assert quiet(["export", "--checkpoint", c.path("zoo.pt"), "--onnx", c.path("m.onnx")]) == 0


def interrupted_prune(c) -> None:
    """``job/``: a prune job stopped (SIGINT) in its second fine-tuning epoch, as
    ``prune --resume`` continues it."""
    from tp_vgg.train import interrupt
    from tp_vgg.train import loop as train_loop

    original = train_loop.train_one_epoch

    def stop_in_epoch_2(engine, batches, epoch, *a, **kw):
        if epoch == 1 and not kw.get("skip"):
            interrupt._state.requested = signal.SIGINT
        return original(engine, batches, epoch, *a, **kw)
    train_loop.train_one_epoch = stop_in_epoch_2
    try:
        code = quiet(["prune", *TINY, "--ratio", "0.3", *FAKE, *QUIET, "--finetune-epochs", "2",
                      "--device", "cpu", "--out", c.path("job")])
    finally:
        train_loop.train_one_epoch = original
        interrupt.reset()
    assert code == 130 and c.path("job/resume.json").is_file()


def wrote_pruned(folder):
    def check(c, r):
        assert c.path(folder).joinpath("pruned.pt").is_file(), r.err
    return check


def no_batchnorm_in(name):
    def check(c, r):
        import onnx

        ops = {n.op_type for n in onnx.load(str(c.path(name))).graph.node}
        assert "Conv" in ops and "BatchNormalization" not in ops, ops
        # the folded graph is then timed as exported, the flag left out
        assert quiet(["profile", "--model", c.path(name), "--latency", *FAST_LATENCY]) == 0
    return check


def loaded_tensors(n):
    def check(c, r):
        assert f"loaded {n} of the model's 60 tensors" in r.out, r.out
    return check


REMEDIES = [
    # --- tp_vgg/checkpoint -------------------------------------------------------------------
    Remedy("weights-key-needs-weights",
           "--weights-key picks an entry of a --weights PATH file; give the file with --weights",
           lambda c: ["profile", *TINY, "--weights-key", "ema"],
           lambda c: ["profile", *TINY, "--weights-key", "ema", "--weights", c.path("ema.pth")],
           setup=nested_state_dict),
    Remedy("zoo-checkpoint-other-model", "; leave --model out",
           lambda c: ["profile", "--checkpoint", c.path("zoo.pt"), "--model", "cifar_vgg13"],
           lambda c: ["profile", "--checkpoint", c.path("zoo.pt")],
           setup=zoo_ckpt),
    Remedy("plain-state-dict-as-checkpoint",
           "; weights you trained elsewhere load with --model NAME",
           lambda c: ["profile", "--checkpoint", c.path("model.pth")],
           lambda c: ["profile", *TINY, "--weights", c.path("model.pth")],
           setup=plain_state_dict),
    Remedy("user-checkpoint-trust",
           "if you trust this checkpoint and that code, pass --trust-model-code",
           lambda c: ["profile", "--checkpoint", c.path("user.pt")],
           lambda c: ["profile", "--checkpoint", c.path("user.pt"), "--trust-model-code"],
           setup=user_ckpt),
    Remedy("user-checkpoint-own-factory",
           "or name your own copy of the factory with --model",
           lambda c: ["profile", "--checkpoint", c.path("user.pt")],
           lambda c: ["profile", "--checkpoint", c.path("user.pt"),
                      "--model", f"{c.path('user_vgg.py')}:make"],
           setup=user_ckpt),

    # --- tp_vgg/models -----------------------------------------------------------------------
    Remedy("changed-model-code",
           "pass --allow-changed-model-code (Python: allow_changed_model_code=True) to build "
           "from it anyway",
           lambda c: ["profile", "--checkpoint", c.path("user.pt"), "--trust-model-code"],
           lambda c: ["profile", "--checkpoint", c.path("user.pt"), "--trust-model-code",
                      "--allow-changed-model-code"],
           setup=changed_user_ckpt),
    # the logits are needed for accuracy (with data); pruning alone traces every output
    Remedy("dict-output-needs-output-key", "name the logits with --output-key",
           lambda c: ["prune", "--model", f"{USER_MODELS / 'vgg_dict_named.py'}:make",
                      "--ratio", "0.5", "--data", "digits", "--finetune-epochs", "1",
                      "--out", c.path("o")],
           lambda c: ["prune", "--model", f"{USER_MODELS / 'vgg_dict_named.py'}:make",
                      "--ratio", "0.5", "--data", "digits", "--finetune-epochs", "1",
                      "--output-key", "scores",
                      "--out", c.path("o")],
           check=wrote_pruned("o")),
    Remedy("torchvision-weights-num-classes-left-out", "does not fit them: leave --num-classes out",
           lambda c: ["profile", "--model", "vgg11", "--weights", "IMAGENET1K_V1",
                      "--num-classes", "10", "--input-size", "32"],
           lambda c: ["profile", "--model", "vgg11", "--weights", "IMAGENET1K_V1",
                      "--input-size", "32"],
           setup=torchvision_cache),
    Remedy("torchvision-weights-num-classes-no-weights",
           "(then fine-tune a new head with your own script), or give no --weights",
           lambda c: ["profile", "--model", "vgg11", "--weights", "IMAGENET1K_V1",
                      "--num-classes", "10", "--input-size", "32"],
           lambda c: ["profile", "--model", "vgg11", "--num-classes", "10", "--input-size", "32"],
           setup=torchvision_cache),
    Remedy("torchvision-weights-name-for-a-cifar-vgg",
           "; give a state_dict file you trained (--weights PATH, e.g. model.pth)",
           lambda c: ["profile", *TINY, "--weights", "DEFAULT"],
           lambda c: ["profile", *TINY, "--weights", c.path("model.pth")],
           setup=plain_state_dict),
    Remedy("weights-under-one-prefix", "alone fit the model exactly: pick them with --weights-key",
           lambda c: ["profile", *TINY, "--weights", c.path("w.ckpt")],
           lambda c: ["profile", *TINY, "--weights", c.path("w.ckpt"), "--weights-key", "net"],
           setup=prefixed_state_dict),
    Remedy("most-weights-fit", ", or pass --no-strict-weights to load only the tensors that fit",
           lambda c: ["profile", *TINY, "--weights", c.path("head100.pt")],
           lambda c: ["profile", *TINY, "--weights", c.path("head100.pt"), "--no-strict-weights"],
           setup=other_head_state_dict, check=loaded_tensors(58)),

    # --- tp_vgg/cli/__init__.py: out of memory -----------------------------------------------
    Remedy("oom-at-a-batch-size", "; try --batch-size",
           lambda c: ["eval", "--model", oom_model(c), *FAKE, "--batch-size", "48"],
           lambda c: ["eval", "--model", oom_model(c), *FAKE, "--batch-size", "24"]),
    Remedy("oom-input-size", "try a smaller model (--width), a smaller --input-size",
           lambda c: ["profile", "--model", oom_model(c), "--input-size", "64", *OOM_LATENCY],
           lambda c: ["profile", "--model", oom_model(c), "--input-size", "32", *OOM_LATENCY]),
    Remedy("oom-width", "try a smaller model (--width)",
           lambda c: ["profile", "--model", oom_model(c), "--width", "1", *OOM_LATENCY],
           lambda c: ["profile", "--model", oom_model(c), "--width", "0.25", *OOM_LATENCY]),
    Remedy("oom-at-the-default-batch-size", " or a smaller --batch-size",
           lambda c: ["train", "--model", oom_model(c), *FAKE, "--epochs", "1", "--progress",
                      "none", "--threads", "1", "--out", c.path("t")],
           lambda c: ["train", "--model", oom_model(c), *FAKE, "--epochs", "1", "--progress",
                      "none", "--threads", "1", "--batch-size", "32", "--out", c.path("t")]),
    Remedy("oom-checkpoint-default-batch-size", "; try a smaller --batch-size, or free memory",
           lambda c: ["finetune", "--checkpoint", c.path("oom.pt"), "--trust-model-code", *FAKE,
                      "--epochs", "1", "--progress", "none", "--threads", "1",
                      "--out", c.path("f")],
           lambda c: ["finetune", "--checkpoint", c.path("oom.pt"), "--trust-model-code", *FAKE,
                      "--epochs", "1", "--progress", "none", "--threads", "1",
                      "--batch-size", "32", "--out", c.path("f")],
           setup=oom_ckpt),

    # --- tp_vgg/cli/common.py ----------------------------------------------------------------
    Remedy("model-flag-with-checkpoint",
           "cannot be combined with --checkpoint: the checkpoint already records its model",
           lambda c: ["profile", "--checkpoint", c.path("zoo.pt"), "--width", "0.5"],
           lambda c: ["profile", "--checkpoint", c.path("zoo.pt")],
           setup=zoo_ckpt),

    # --- tp_vgg/cli/latency_args.py, tp_vgg/latency ------------------------------------------
    Remedy("layers-in-onnxruntime",
           "--layers times each PyTorch module with hooks; --runtime",
           lambda c: ["profile", *TINY, "--latency", "--layers", "--runtime", "onnxruntime",
                      *FAST_LATENCY],
           lambda c: ["profile", *TINY, "--latency", "--layers", "--runtime", "torch",
                      *FAST_LATENCY]),
    Remedy("round-to-auto-in-several-runtimes",
           "time in one runtime; give one (several apply to --latency alone)",
           lambda c: ["prune", *TINY, "--ratio", "0.3", *ROUND_AUTO, "--runtime",
                      "torch,onnxruntime", "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--ratio", "0.3", *ROUND_AUTO, "--runtime", "torch",
                      "--out", c.path("p")],
           check=wrote_pruned("p")),
    Remedy("measure-flag-without-latency", " only applies with --latency",
           lambda c: ["profile", *TINY, "--no-fuse-bn", *FAST_LATENCY],
           lambda c: ["profile", *TINY, "--no-fuse-bn", *FAST_LATENCY, "--latency"]),
    Remedy("onnx-measure-flag-without-latency", " only applies with --latency",
           lambda c: ["profile", "--model", c.path("m.onnx"), *FAST_LATENCY],
           lambda c: ["profile", "--model", c.path("m.onnx"), *FAST_LATENCY, "--latency"],
           setup=onnx_files),
    Remedy("latency-table-not-writable",
           "give a writable folder with --latency-cache DIR or $TP_VGG_CACHE",
           lambda c: ["prune", *TINY, "--ratio", "0.3", *ROUND_AUTO,
                      "--latency-cache", c.write("blocked", ""), "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--ratio", "0.3", *ROUND_AUTO,
                      "--latency-cache", c.path("cache"), "--out", c.path("p")],
           check=lambda c, r: next(c.path("cache").rglob("*.json"))),

    # --- tp_vgg/cli/onnx_cmds.py -------------------------------------------------------------
    Remedy("onnx-fuse-bn-at-export", "fold BN at export with tp-vgg export --fuse-bn",
           lambda c: ["profile", "--model", c.path("m.onnx"), "--latency", "--fuse-bn",
                      *FAST_LATENCY],
           lambda c: ["export", "--checkpoint", c.path("zoo.pt"), "--fuse-bn",
                      "--onnx", c.path("fused.onnx")],
           setup=onnx_files, check=no_batchnorm_in("fused.onnx")),

    # --- tp_vgg/cli/methods_cmds.py, tp_vgg/jobs/ -------------------------------------------
    Remedy("latency-with-unstructured",
           "--latency with --unstructured would time the same dense layers: zeroed weights do "
           "not make dense kernels faster",
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--latency",
                      "--out", c.path("u")],
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--out", c.path("u")],
           check=wrote_pruned("u")),
    Remedy("importance-with-unstructured", "single weights by magnitude (leave --importance out)",
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--importance", "l2",
                      "--out", c.path("u")],
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--out", c.path("u")],
           check=wrote_pruned("u")),
    Remedy("no-ratio-or-target",
           "one of --ratio R, --target-speedup X, --target-macs N or --target-latency MS is "
           "required",
           lambda c: ["prune", *TINY, "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--target-speedup", "1.5", "--out", c.path("p")],
           check=wrote_pruned("p")),
    Remedy("rewind-epoch-without-lottery",
           "--rewind-epoch applies to lottery-ticket mode: add --lottery-rounds R with "
           "--finetune-epochs N and --data D",
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--rewind-epoch", "1",
                      "--out", c.path("u")],
           lambda c: ["prune", *TINY, "--unstructured", "--ratio", "0.5", "--rewind-epoch", "1",
                      "--lottery-rounds", "1", "--finetune-epochs", "2", *FAKE, *QUIET,
                      "--out", c.path("u")],
           check=wrote_pruned("u")),
    # (--importance taylor without --data: tests/test_remedies_prune.py)
    Remedy("finetune-per-step-needs-data",
           "--finetune-epochs-per-step fine-tunes on data; pass --data D",
           lambda c: ["prune", *TINY, "--ratio", "0.3", "--iterative-steps", "2",
                      "--finetune-epochs-per-step", "1", "--out", c.path("p")],
           lambda c: ["prune", *TINY, "--ratio", "0.3", "--iterative-steps", "2",
                      "--finetune-epochs-per-step", "1", *FAKE, *QUIET, "--out", c.path("p")],
           check=wrote_pruned("p")),

    # (--search, also its job.py messages: tests/test_remedies_search.py)

    # --- tp_vgg/cli/pruning_cmds.py, tp_vgg/jobs/: prune --out / --resume -------------------
    Remedy("prune-needs-out", "--out DIR is required",
           lambda c: ["prune", *TINY, "--ratio", "0.3"],
           lambda c: ["prune", *TINY, "--ratio", "0.3", "--out", c.path("p")],
           check=wrote_pruned("p")),
    Remedy("prune-needs-out-or-resume", "(or --resume DIR to finish an interrupted job)",
           lambda c: ["prune", *TINY, "--ratio", "0.3"],
           lambda c: ["prune", "--resume", c.path("job")],
           setup=interrupted_prune, check=wrote_pruned("job")),
    Remedy("resume-not-a-folder",
           "is not a folder; give the --out DIR of an interrupted tp-vgg prune",
           lambda c: ["prune", "--resume", c.path("job/resume.json")],
           lambda c: ["prune", "--resume", c.path("job")],
           setup=interrupted_prune, check=wrote_pruned("job")),
    Remedy("resume-refuses-a-setting",
           "cannot be given with --resume: the prune job continues with the settings it was "
           "started with (only ",
           lambda c: ["prune", "--resume", c.path("job"), "--ratio", "0.5"],
           lambda c: ["prune", "--resume", c.path("job"), "--threads", "1"],
           setup=interrupted_prune, check=wrote_pruned("job")),
    Remedy("models-lists-your-own", "or your own: --model package.module:factory | --model "
           "path/to/file.py:factory",
           lambda c: ["models"],
           lambda c: ["profile", "--model", f"{user_file(c)}:make"],
           code=0, stream="out"),

    # --- tp_vgg/export -----------------------------------------------------------------------
    Remedy("export-nothing-to-write", "nothing to write: give --onnx OUT.onnx and/or --pt2 OUT.pt2",
           lambda c: ["export", "--checkpoint", c.path("zoo.pt")],
           lambda c: ["export", "--checkpoint", c.path("zoo.pt"), "--onnx", c.path("m.onnx")],
           setup=zoo_ckpt, check=lambda c, r: c.path("m.onnx").stat()),
]

# Remedies applied in other test files: message fragment -> "tests/file.py::test_name".
ELSEWHERE = {
    # the Python form of the CLI's message (the CLI refuses first): PruneJob.finetune given
    "fine-tunes on data; pass --data D (PruneJob.finetune.data)":
        "tests/test_remedies_cli.py::test_a_job_fine_tuning_per_step_takes_the_data_it_asks_for",
}

# Literals the scan matches that suggest nothing: fragment -> why.
NOT_SUGGESTIONS = {
    "(rerun with --debug for the traceback, and please report it)":
        "an internal error (a bug) asks for its traceback to be reported: --debug prints it, "
        "it does not make the command succeed (test_debug_shows_an_internal_errors_traceback)",
}


@pytest.mark.parametrize("remedy", [pytest.param(r, id=r.id, marks=r.marks) for r in REMEDIES])
def test_remedy(remedy, run_cli, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # torchvision weights: the case's
    run_remedy(remedy, run_cli, tmp_path)


def test_debug_shows_an_internal_errors_traceback(run_cli, monkeypatch):
    import tp_vgg.cli.pruning_cmds

    def broken():
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(tp_vgg.cli.pruning_cmds, "list_models", broken)
    r = run_cli("models")
    assert r.code == 1 and "Traceback" not in r.err
    assert r.err == ("tp-vgg: internal error: ZeroDivisionError: a bug (rerun with --debug for "
                     "the traceback, and please report it)\n")
    r = run_cli("models", "--debug")
    assert r.code == 1 and "Traceback (most recent call last)" in r.err
    assert "ZeroDivisionError: a bug" in r.err  # the line the report needs


def test_a_job_fine_tuning_per_step_takes_the_data_it_asks_for(tmp_path):
    from tp_vgg.checkpoint.source import ModelSource
    from tp_vgg.data.datasets import DataConfig
    from tp_vgg.errors import UserError
    from tp_vgg.jobs import FinetuneConfig, IterativeConfig, PruneJob, run
    from tp_vgg.pruning.graph import PruneConfig
    from tp_vgg.train.config import TrainConfig

    job = PruneJob(ModelSource(spec=TINY_SPEC), PruneConfig(ratio=0.3),
                   iterative=IterativeConfig(2, 1))
    with pytest.raises(UserError, match=r"fine-tunes on data; pass --data D "
                                        r"\(PruneJob.finetune.data\)"):
        job.validate()
    data = DataConfig("fake", kwargs={"train_size": 96, "test_size": 48})
    fixed = dataclasses.replace(job, finetune=FinetuneConfig(data, TrainConfig(batch_size=48,
                                                                             device="cpu")))
    fixed.validate()
    result = run(fixed, str(tmp_path / "p"), log=lambda line: None)
    assert (tmp_path / "p" / "pruned.pt").is_file() and len(result.report["schedule"]["steps"]) == 2
