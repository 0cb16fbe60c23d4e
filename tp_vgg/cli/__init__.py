"""The ``tp-vgg`` command line: parses arguments, builds dataclass configs and calls one library
function per stage. User mistakes exit with code 2 and one line; Ctrl-C with 130."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
import traceback
from typing import List, Optional

from tp_vgg.errors import UserError

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
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # argparse: --help, --version, or a one-line usage error
            return int(e.code or 0) if not isinstance(e.code, str) else 2
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        from tp_vgg.device import set_threads

        set_threads(getattr(args, "threads", None))  # --threads: set once, for the whole command
        return int(args.func(args) or 0)
    except UserError as e:
        if debug:
            traceback.print_exc()
        print(f"tp-vgg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"tp-vgg: interrupted{_kept(args, started)}", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as e:  # an internal error: one line unless --debug
        if debug:
            traceback.print_exc()
        if _out_of_memory(e):
            print(f"tp-vgg: error: {_oom_message(e, args)}{_kept(args, started)}", file=sys.stderr)
            return 2
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"tp-vgg: internal error: {type(e).__name__}: {msg} (rerun with --debug for the "
              "traceback, and please report it)", file=sys.stderr)
        return 1


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
    return (f"out of memory ({what}); try a smaller model (--width), a smaller --input-size"
            + (" or --batch-size" if batch else "") + ", or free memory")


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
    return f"; {path} (the last finished epoch) is kept: continue with tp-vgg {cmd} --resume {path}"
