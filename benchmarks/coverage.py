"""Which model structures prune correctly: raw torch-pruning against tp-vgg, one row per structure.

For each structure (the ``tests/user_models/net_*`` models, a CRNN with a GRU, the multi-scale
VGG, torchvision's vgg16_bn at 32x32 and SSD300):

* ``raw``    -- :func:`tp_vgg.pruning.raw.raw_prune`: torch-pruning's MagnitudePruner as a new
  user runs it (L1 magnitude, the layers nearest to the outputs protected), checked against the
  unpruned model with the removed channels zeroed: ``exact`` (outputs match to 1e-4 relative),
  ``wrong`` (they differ: a shape or the values) or ``error`` (building, pruning or running the
  pruned model raised). It imports nothing else of tp-vgg, so it is an independent reference.
* ``tp_vgg`` -- :func:`tp_vgg_row`: ``tp_vgg.prune(model, spec, PruneConfig(ratio=...))``;
  ``exact`` when it returns, ``refused`` on a ``tp_vgg.UserError`` (with its message), ``error``
  on any other exception. ``--raw-only`` leaves it out.

Each model is built from a fixed seed on the CPU and pruned once at ``--ratio`` with
``--threads`` torch threads, each side in a forked child process that is killed after
``--timeout`` seconds (torch-pruning 1.6.1 does not finish building the groups of
vgg_multiscale in minutes); seconds are wall time of the prune (for raw: its output-layer
graph, pruner and pruning; not the check). "nothing pruned" marks a row whose parameter count
did not change (a model without output tensors: torch-pruning traces no graph).

    python benchmarks/coverage.py [--out benchmarks/results/coverage.json] [--ratio 0.5]
                                  [--threads 1] [--timeout 30] [--raw-only] [--only NAME ...]

Writes the JSON rows and a CSV next to it, and prints a markdown table.
"""

from __future__ import annotations

import argparse
import csv
import importlib
import importlib.util
import json
import multiprocessing
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

from tp_vgg.pruning.raw import raw_prune  # noqa: E402


def _ssd_head(model, x):
    """SSD's raw head outputs (box regression and class logits), without the anchors, decoding
    and NMS of its eval-mode forward."""
    return model.head(list(model.backbone(x).values()))


def _user(name: str) -> str:
    return f"tests/user_models/{name}.py:make"


# structure, target, num_classes, kwargs, in_channels, input_size ([H, W]), raw forward_fn
STRUCTURES: List[Dict[str, Any]] = [
    dict(structure="U-Net (ConvTranspose2d + concat skips)", target=_user("net_unet")),
    dict(structure="TernausNet11 (vgg11 encoder)", target=_user("net_ternaus")),
    dict(structure="FCN-8s (bilinear score fusion)", target=_user("net_fcn")),
    dict(structure="two heads (tuple: logits, boxes)", target=_user("net_two_heads")),
    dict(structure="nested dict output + str/None leaves", target=_user("net_dict_heads")),
    dict(structure="spectral norm (parametrizations)", target=_user("net_sn_disc"),
         kwargs={"legacy": False}),
    dict(structure="spectral norm (legacy hooks)", target=_user("net_sn_disc"),
         kwargs={"legacy": True}),
    dict(structure="weight norm (parametrizations)", target=_user("net_wn_disc"),
         kwargs={"legacy": False}),
    dict(structure="weight norm (legacy hooks)", target=_user("net_wn_disc"),
         kwargs={"legacy": True}),
    dict(structure="per-channel registered buffers", target=_user("net_buffer_scale")),
    dict(structure="weight standardization + GroupNorm", target=_user("net_weight_std")),
    dict(structure="channels-last LayerNorm (permute)", target=_user("net_layernorm_cl")),
    dict(structure="forward returns None", target=_user("unsupported_output_none")),
    dict(structure="forward returns a str", target=_user("unsupported_output_str")),
    dict(structure="CRNN with a GRU (1x32x128)", target=_user("crnn"), kwargs={"rnn": "gru"},
         in_channels=1, input_size=[32, 128]),
    dict(structure="multi-scale VGG (bare Parameter, 4 poolings)", target=_user("vgg_multiscale")),
    dict(structure="torchvision vgg16_bn at 32x32", target="vgg16_bn", num_classes=10,
         input_size=[32, 32]),
    dict(structure="SSD300-VGG16 (head of backbone)",
         target="torchvision.models.detection:ssd300_vgg16", num_classes=21,
         kwargs={"weights_backbone": None}, input_size=[300, 300], raw_forward=_ssd_head),
]


def _factory(target: str) -> Callable[..., torch.nn.Module]:
    """The callable a target names, without tp-vgg: ``path.py:fn`` (relative to the repository),
    ``package.module:fn``, or a ``torchvision.models`` name."""
    if ":" not in target:
        import torchvision
        return getattr(torchvision.models, target)
    where, attr = target.rsplit(":", 1)
    if where.endswith(".py"):
        path = where if os.path.isabs(where) else os.path.join(ROOT, where)
        spec = importlib.util.spec_from_file_location(
            "coverage_" + os.path.splitext(os.path.basename(path))[0], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    return getattr(module, attr)


def build_raw(row: Dict[str, Any]) -> torch.nn.Module:
    kwargs = dict(row.get("kwargs") or {})
    if row.get("num_classes") is not None:
        kwargs["num_classes"] = row["num_classes"]
    if ":" not in row["target"]:
        kwargs.setdefault("weights", None)      # torchvision: never download
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _factory(row["target"])(**kwargs)


def example_of(row: Dict[str, Any]) -> torch.Tensor:
    h, w = row.get("input_size") or [32, 32]
    torch.manual_seed(1)
    return torch.randn(1, row.get("in_channels") or 3, h, w)


def raw_row(row: Dict[str, Any], ratio: float) -> Dict[str, Any]:
    try:
        model = build_raw(row)
    except Exception as e:  # noqa: BLE001
        return {"status": "error", "rel_err": None, "seconds": 0.0,
                "params": {"before": None, "after": None},
                "error": f"build: {type(e).__name__}: {str(e).strip().splitlines()[0][:200]}"}
    r = raw_prune(model, example_of(row), ratio=ratio, forward_fn=row.get("raw_forward"))
    return {"status": r.status, "rel_err": r.rel_err, "seconds": round(r.seconds, 4),
            "params": {"before": r.params_before, "after": r.params_after}, "error": r.error}


# ------------------------------------------------------------------------------------------
# tp-vgg's side (to be filled in by the tp-vgg library's owner): what tp_vgg.prune does with
# the same structure. For now: "exact" when prune returns, "refused" on a UserError.
# ------------------------------------------------------------------------------------------
def tp_vgg_row(target: str, kwargs: Optional[Dict[str, Any]], num_classes: Optional[int] = None,
               input_size: Optional[List[int]] = None, in_channels: Optional[int] = None,
               ratio: float = 0.5) -> Dict[str, Any]:
    import tp_vgg
    from tp_vgg.models import zoo

    name = target
    if ":" in target and target.split(":", 1)[0].endswith(".py") and not os.path.isabs(target):
        name = os.path.join(ROOT, target)
    t0 = time.perf_counter()
    out: Dict[str, Any] = {"status": None, "seconds": None, "params": None, "error": None}
    try:
        spec = zoo.ModelSpec(name, num_classes=num_classes, input_size=input_size,
                             in_channels=in_channels, kwargs=dict(kwargs or {})).resolved()
        torch.manual_seed(0)
        model = zoo.build_model(spec)
        before = sum(p.numel() for p in model.parameters())
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = tp_vgg.prune(model, spec, tp_vgg.PruneConfig(ratio=ratio))
        # tp-vgg's masked-equivalence check raises unless the model is exact; where exact is
        # impossible (spectral norm) it says so and checks what still holds
        notes = " ".join(result.notes)
        status = ("said" if "not the masked original" in notes else
                  "exact, limited" if ("keep their output channels" in notes
                                       or "kept whole" in notes) else "exact")
        out.update(status=status, params={"before": before,
                                          "after": sum(p.numel() for p in model.parameters())},
                   notes=list(result.notes))
    except tp_vgg.UserError as e:
        out.update(status="refused", error=str(e).strip().splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001
        out.update(status="error",
                   error=f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
                   if str(e).strip() else type(e).__name__)
    out["seconds"] = round(time.perf_counter() - t0, 4)
    return out


def run_limited(fn: Callable[..., Dict[str, Any]], args: tuple, timeout: float) -> Dict[str, Any]:
    """``fn(*args)`` in a forked child process, given up after ``timeout`` seconds (torch-pruning
    can loop for good while it builds the groups of some graphs): then the child is killed and
    the row is an ``error`` saying so."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)

    def child():
        try:
            send.send(fn(*args))
        except BaseException as e:  # noqa: BLE001
            send.send({"status": "error", "rel_err": None, "seconds": None,
                       "params": {"before": None, "after": None},
                       "error": f"{type(e).__name__}: {e}"[:300]})
        finally:
            send.close()

    proc = ctx.Process(target=child, daemon=True)
    proc.start()
    send.close()
    result = None
    if recv.poll(timeout):
        try:
            result = recv.recv()
        except EOFError:            # the child died without a word (killed for memory?)
            pass
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if result is None:
        result = {"status": "error", "rel_err": None, "seconds": float(timeout),
                  "params": {"before": None, "after": None},
                  "error": (f"Timeout: no result in {timeout:g} s, killed" if proc.exitcode in
                            (-9, None) else f"the child process died (exit code {proc.exitcode})")}
    return result


def _fmt_err(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1e}"


def _fmt_params(p: Optional[Dict[str, Any]]) -> str:
    if not p or p.get("before") is None:
        return "-"
    after = "-" if p.get("after") is None else f"{p['after']:,}"
    return f"{p['before']:,} -> {after}"


def markdown(rows: List[Dict[str, Any]]) -> str:
    tp_col = any("tp_vgg" in r for r in rows)
    head = ["structure", "target", "raw", "rel_err", "s", "params"]
    if tp_col:
        head += ["tp-vgg", "tp-vgg s"]
    head.append("note")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        raw = r["raw"]
        target = r["target"] + (f" {json.dumps(r['kwargs'])}" if r["kwargs"] else "")
        cells = [r["structure"], f"`{target}`", raw["status"], _fmt_err(raw["rel_err"]),
                 f"{raw['seconds']:.2f}", _fmt_params(raw["params"])]
        notes = [f"raw: {raw['error']}"] if raw.get("error") else []
        p = raw["params"]
        if p.get("before") is not None and p.get("before") == p.get("after"):
            notes.append("raw: nothing pruned")
        if tp_col:
            t = r.get("tp_vgg") or {}
            cells += [t.get("status") or "-",
                      "-" if t.get("seconds") is None else f"{t['seconds']:.2f}"]
            if t.get("error"):
                notes.append(f"tp-vgg: {t['error']}")
        cells.append("; ".join(notes).replace("|", "/"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_csv(path: str, rows: List[Dict[str, Any]]) -> None:
    fields = ["structure", "target", "kwargs", "raw_status", "raw_rel_err", "raw_seconds",
              "raw_params_before", "raw_params_after", "raw_error",
              "tp_vgg_status", "tp_vgg_seconds", "tp_vgg_error"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            raw, t = r["raw"], r.get("tp_vgg") or {}
            w.writerow({"structure": r["structure"], "target": r["target"],
                        "kwargs": json.dumps(r["kwargs"]), "raw_status": raw["status"],
                        "raw_rel_err": raw["rel_err"], "raw_seconds": raw["seconds"],
                        "raw_params_before": raw["params"]["before"],
                        "raw_params_after": raw["params"]["after"], "raw_error": raw["error"],
                        "tp_vgg_status": t.get("status"), "tp_vgg_seconds": t.get("seconds"),
                        "tp_vgg_error": t.get("error")})


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "results", "coverage.json"))
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0,
                    help="seconds one prune (build, prune, check) may take, per side")
    ap.add_argument("--raw-only", action="store_true", help="leave out tp-vgg's side")
    ap.add_argument("--only", nargs="*", default=None,
                    help="structures whose target contains one of these strings")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    todo = [s for s in STRUCTURES
            if not args.only or any(k in s["target"] for k in args.only)]
    rows = []
    for s in todo:
        row = {"structure": s["structure"], "target": s["target"], "kwargs": s.get("kwargs") or {},
               "num_classes": s.get("num_classes"), "in_channels": s.get("in_channels"),
               "input_size": s.get("input_size"),
               "raw": run_limited(raw_row, (s, args.ratio), args.timeout)}
        if not args.raw_only:
            row["tp_vgg"] = run_limited(
                tp_vgg_row, (s["target"], s.get("kwargs"), s.get("num_classes"),
                             s.get("input_size"), s.get("in_channels"), args.ratio), args.timeout)
        rows.append(row)
        print(f"{s['structure']}: raw {row['raw']['status']}"
              + (f", tp-vgg {row['tp_vgg']['status']}" if "tp_vgg" in row else ""),
              file=sys.stderr, flush=True)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    meta = {"ratio": args.ratio, "threads": args.threads, "timeout_s": args.timeout,
            "torch": torch.__version__, "torch_pruning": _tp_version()}
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    write_csv(os.path.splitext(args.out)[0] + ".csv", rows)
    print(markdown(rows))
    return 0


def _tp_version() -> str:
    try:
        from importlib.metadata import version
        return version("torch-pruning")
    except Exception:  # noqa: BLE001
        import torch_pruning
        return getattr(torch_pruning, "__version__", "?")


if __name__ == "__main__":
    sys.exit(main())
