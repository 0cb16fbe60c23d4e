"""The ``tp-vgg`` command line: parses arguments, builds dataclass configs and calls one library
function per stage. User mistakes exit with code 2 and one line. SIGINT (Ctrl-C) exits with 130
and SIGTERM with 143, one line, at any moment (:mod:`tp_vgg.train.interrupt`): during the imports
at once; while training after the current step, with the resumable checkpoint and the command
that continues it."""

from __future__ import annotations

import sys

from tp_vgg.train import interrupt  # stdlib only: installed before the heavy imports below


def _run_as_command() -> bool:
    """Whether this process is the ``tp-vgg`` command (the console script, ``python -m tp_vgg``,
    torchrun of the script), not a program that imports the package."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None) == "tp_vgg.__main__":
        return True
    import os

    return os.path.basename(getattr(main, "__file__", None) or "").startswith("tp-vgg")


if _run_as_command():
    interrupt.install("exit")
    import gc

    # No garbage collection during the imports: a full pass over torch's millions of new objects
    # runs in C for seconds on a loaded machine, and no signal handler runs meanwhile. (main()
    # freezes what the imports made and turns collection back on.)
    gc.disable()

import argparse  # noqa: E402
import importlib  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from typing import List, Optional  # noqa: E402

from tp_vgg.errors import UserError  # noqa: E402

# Each module registers its subcommands with ``register(subparsers, parent)``.
COMMAND_MODULES = ["tp_vgg.cli.pruning_cmds", "tp_vgg.cli.train_cmds", "tp_vgg.cli.report_cmds",
                   "tp_vgg.cli.methods_cmds",
                   "tp_vgg.cli.onnx_cmds"]  # last: hands eval/profile an exported .onnx file


# A parser default naming options of which one must be given, checked after parsing (so that
# `--model` may also come with `--checkpoint`, as consent to run the user's own copy of its factory).
REQUIRE_ONE_OF = "_require_one_of"


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block)."""

    def error(self, message: str):  # noqa: D102
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):  # noqa: D102
        ns, rest = self.parse_known_args(args, namespace)
        if rest:  # one line from the command's parser, with "did you mean --ratio?"
            from tp_vgg.cli.common import unrecognized

            parser, message = unrecognized(self, ns, rest)
            parser.error(message)
        return ns

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102
        ns, rest = super().parse_known_args(args, namespace)
        one_of = getattr(ns, REQUIRE_ONE_OF, None)  # e.g. --model or --checkpoint
        if one_of and not any(getattr(ns, dest, None) for dest in one_of):
            self.error("one of the arguments " + " ".join(
                "--" + d.replace("_", "-") for d in one_of) + " is required")
        return ns, rest


def build_parser() -> argparse.ArgumentParser:
    from tp_vgg import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = Parser(prog="tp-vgg", description="Prune VGG networks with torch-pruning's "
                    "DependencyGraph; count MACs with fvcore (1 MAC = one multiply-add = fvcore's 'flop').")
    parser.add_argument("--version", action="version", version=f"tp-vgg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub, common)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    started = time.time()
    args = None
    try:
        parser = build_parser()
        if _installed():
            import gc

            gc.freeze()  # the imported modules: never traversed by later collections
            gc.enable()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: --help, --version, or a one-line usage error
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        from tp_vgg.device import set_threads

        set_threads(getattr(args, "threads", None))  # --threads: set once, for the whole command
        if interrupt.requested() is None and _installed():
            interrupt.set_mode("raise")  # the command runs: a signal stops it where it is
        code = int(args.func(args) or 0)
        interrupt.check()  # a signal that a library swallowed
        return code
    except UserError as e:
        if interrupt.requested() is not None:
            return _interrupted(None, args, started, debug)
        if debug:
            traceback.print_exc()
        print(f"tp-vgg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(e, args, started, debug)
    except BrokenPipeError:
        return 1
    except Exception as e:  # an internal error: one line unless --debug
        if interrupt.requested() is not None:  # e.g. a half-imported module after a signal
            return _interrupted(None, args, started, debug)
        if debug:
            traceback.print_exc()
        if _out_of_memory(e):
            print(f"tp-vgg: error: {_oom_message(e, args)}{_kept(args, started)}", file=sys.stderr)
            return 2
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"tp-vgg: internal error: {type(e).__name__}: {msg} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1


def _installed() -> bool:
    return interrupt.installed()


def _interrupted(e: Optional[BaseException], args: Optional[argparse.Namespace], since: float,
                 debug: bool) -> int:
    """One line: interrupted, and what is kept and how to continue; 130 (SIGINT) or 143."""
    if debug and e is not None:
        traceback.print_exc()
    signum = getattr(e, "signum", None) or interrupt.requested()
    if _installed():
        interrupt.set_mode("exit")  # a second signal while we finish: exit at once
    hint = None
    if isinstance(e, interrupt.Interrupted) and e.resume:
        # the command that continues it is this one's own (a sweep's run is not the sweep)
        own = e.resume.command == getattr(args, "command", None)
        hint = _resume_hint(e) if own else (f"; {e.kept} is kept" if e.kept else "")
    print(f"tp-vgg: interrupted{hint or _kept(args, since)}", file=sys.stderr, flush=True)
    if not _installed():
        interrupt.reset()  # in-process callers (tests) start the next command clean
    return interrupt.exit_code(signum)


def resume_command(r: "interrupt.Resume") -> str:
    """The command that continues an interrupted run, as it can be pasted."""
    flags = [" --trust-model-code"] if r.trust_model_code else []
    if r.allow_changed_model_code:
        flags.append(" --allow-changed-model-code")
    return f"tp-vgg {r.command} --resume {shlex.quote(r.path)}" + "".join(flags)


def _resume_hint(e: "interrupt.Interrupted") -> str:
    where = f" (stopped at {e.where})" if e.where else ""
    kept = e.kept or e.resume.path
    return f"; {kept}{where} is kept: continue with {resume_command(e.resume)}"


def _out_of_memory(e: BaseException) -> bool:
    if isinstance(e, MemoryError):
        return True
    import torch

    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and any(
        s in str(e) for s in ("out of memory", "can't allocate memory", "Cannot allocate memory"))


def _oom_message(e: BaseException, args: Optional[argparse.Namespace]) -> str:
    text = str(e).strip().splitlines()
    what = text[0][:160] if text else type(e).__name__
    batch = getattr(args, "batch_size", None)
    if isinstance(batch, int) and batch > 1:
        return (f"out of memory at --batch-size {batch} ({what}); try --batch-size {batch // 2}")
    # only what the command takes: a checkpoint (or a resumed run) fixes the model's shape, and
    # --resume its batch size; a command run at its default batch size may be given a smaller one
    resumed = bool(getattr(args, "resume", None))
    lower = batch is None and hasattr(args, "batch_size") and not resumed
    if not (resumed or getattr(args, "checkpoint", None)):
        return (f"out of memory ({what}); try a smaller model (--width), a smaller --input-size"
                + (" or a smaller --batch-size" if lower else "") + ", or free memory")
    if lower:
        return f"out of memory ({what}); try a smaller --batch-size, or free memory"
    return f"out of memory ({what}); free memory or run it on a device with more"


def _kept(args: Optional[argparse.Namespace], since: float) -> str:
    """After an interrupted or failed training run: where its last checkpoint is kept."""
    out = getattr(args, "out", None)
    resume = getattr(args, "resume", None)
    if not out and resume:
        out = os.path.dirname(os.path.abspath(resume))
    if not out:
        return ""
    found = [p for p in (os.path.join(out, "last.pt"), os.path.join(out, "finetune", "last.pt"))
             if os.path.isfile(p) and os.path.getmtime(p) >= since]
    if not found:
        return ""
    path = max(found, key=os.path.getmtime)
    cmd = "train" if getattr(args, "command", None) == "train" else "finetune"
    model = getattr(args, "model", None) or ""
    trust = bool(getattr(args, "trust_model_code", False)) or ":" in model
    target = path
    if getattr(args, "command", None) == "prune" and os.path.isfile(os.path.join(out, "resume.json")):
        cmd, target = "prune", out
    return (f"; {path} (the last finished epoch) is kept: continue with "
            + resume_command(interrupt.Resume(cmd, target, trust)))
