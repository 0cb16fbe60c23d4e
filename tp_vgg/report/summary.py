"""Report dicts (written as report.json) and the text tables printed by the CLI."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence

from tp_vgg.models.counting import Counts, human
from tp_vgg.models.zoo import ModelSpec

MAC_NOTE = "MACs: multiply-adds of conv and linear layers; fvcore's 'flop' = one multiply-add"


def format_ms(ms: Optional[float]) -> str:
    """A latency in ms to 3 significant digits, at least 2 decimals (0.0123, 0.987, 12.35,
    1234.50): enough that a speed-up printed beside two latencies is their ratio within
    rounding."""
    if ms is None or not math.isfinite(ms):
        return ""
    if ms <= 0:
        return f"{ms:.2f}"
    return f"{ms:.{max(2, 2 - math.floor(math.log10(ms)))}f}"


def plural(n: int, noun: str) -> str:
    """1 -> '1 epoch', 2 -> '2 epochs'."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def counts_summary(c: Counts) -> Dict[str, Any]:
    return {"macs": c.macs, "params": c.params}


def layer_rows(before: Counts, after: Optional[Counts] = None) -> List[Dict[str, Any]]:
    """One row per Conv/Linear/BN layer, before (and after) pruning."""
    after_by_name = {l.name: l for l in after.layers} if after else {}
    rows = []
    for b in before.layers:
        row = {"name": b.name, "type": b.type,
               "in_channels_before": b.in_channels, "out_channels_before": b.out_channels,
               "macs_before": b.macs, "params_before": b.params}
        a = after_by_name.get(b.name)
        if after is not None and a is not None:
            row.update({"in_channels_after": a.in_channels, "out_channels_after": a.out_channels,
                        "macs_after": a.macs, "params_after": a.params})
        rows.append(row)
    return rows


def removed_channels(history: Sequence[Sequence[Any]],
                     channels_before: Optional[Dict[str, int]] = None) -> Dict[str, List[int]]:
    """The output channels each layer lost, in the numbering of the model before the pruning
    that ``history`` records: ``{layer: sorted indices}``.

    ``history`` is torch-pruning's ``pruning_history()`` as plain lists (``PruneResult.history``):
    ``[root_module_name, is_out_channel_pruning, idxs]`` per pruned group, in order. The indices
    of a later entry for the same layer (an iterative step) count the channels left after the
    earlier ones, and are mapped back here: index ``i`` of a step is the ``i``-th channel not
    removed before it. Only out-channel entries are read (a group's root layer; the layers
    coupled with it -- its BatchNorm, the next layer's inputs -- lose the same channels and are
    not listed). ``channels_before`` (the layers' out channels before, e.g.
    ``PruneResult.channels_before``) checks every index is in range and orders the layers as it
    does (the model's order); layers it does not name come last.
    """
    removed: Dict[str, List[int]] = {}
    for name, is_out, idxs in history:
        if not is_out:
            continue
        gone = sorted(removed.setdefault(str(name), []))
        mapped = []
        for i in sorted(int(i) for i in idxs):
            orig = i
            for g in gone:  # the i-th channel left: skip every one removed at or before it
                if g <= orig:
                    orig += 1
                else:
                    break
            mapped.append(orig)
        removed[str(name)] = sorted(set(gone) | set(mapped))
        size = (channels_before or {}).get(str(name))
        if size is not None and removed[str(name)] and (removed[str(name)][-1] >= size or len(
                removed[str(name)]) != len(gone) + len(mapped)):
            raise ValueError(f"pruning history of {name!r} does not fit its {size} channels")
    order = list(channels_before or {})
    return dict(sorted(removed.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order
                       else len(order)))


def prune_report(spec: ModelSpec, config: Any, before: Counts, after: Counts,
                 output_layers: List[str], history_len: int,
                 removed: Optional[Dict[str, List[int]]] = None, **extra: Any) -> Dict[str, Any]:
    """report.json of a prune job. Its keys: the version, the MAC units, ``model``, ``config``,
    the counts ``before``/``after`` and their reductions, ``output_layers`` (never pruned),
    ``pruning_steps`` (history entries), ``unsupported_ops``, ``layers`` (one row per
    Conv/Linear/BN layer: channels, MACs, params before and after), then with ``removed`` (a
    structured prune) ``removed_channels``: ``{layer: [index, ...]}``, the output channels each
    pruned layer lost, in the numbering of the model before this job (:func:`removed_channels`),
    then ``extra``."""
    from tp_vgg import __version__

    removed_block = {} if removed is None else {"removed_channels": removed}
    return {
        "tp_vgg_version": __version__,
        "units": MAC_NOTE + "; counted at batch 1, eval mode",
        "model": spec.to_dict(),
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config,
        "before": counts_summary(before),
        "after": counts_summary(after),
        "macs_reduction": before.macs / max(after.macs, 1),
        "params_reduction": before.params / max(after.params, 1),
        "output_layers": output_layers,
        "pruning_steps": history_len,
        "unsupported_ops": after.unsupported_ops,
        "layers": layer_rows(before, after),
        **removed_block,
        **extra,
    }


def table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def format_prune_table(report: Dict[str, Any]) -> str:
    rows = []
    for r in report["layers"]:
        if r["type"] not in ("Conv2d", "Linear"):
            continue
        rows.append([r["name"], r["type"],
                     f"{r['out_channels_before']} -> {r.get('out_channels_after', '?')}",
                     f"{human(r['macs_before'])} -> {human(r.get('macs_after', 0))}"])
    b, a = report["before"], report["after"]
    rows.append(["total", "", "",
                 f"{human(b['macs'])} -> {human(a['macs'])} ({report['macs_reduction']:.2f}x fewer)"])
    text = table(["layer", "type", "out channels", "MACs"], rows)
    text += (f"\nparams: {human(b['params'])} -> {human(a['params'])} "
             f"({report['params_reduction']:.2f}x fewer)")
    acc = report.get("accuracy")
    if acc:
        text += "\ntop-1: " + ", ".join(f"{k} {v * 100:.2f}%" for k, v in acc.items() if v is not None)
    text += f"\n({MAC_NOTE}.)"
    return text


def format_profile_table(c: Counts) -> str:
    rows = [[l.name, l.type,
             f"{l.in_channels} -> {l.out_channels}", human(l.macs), human(l.params)]
            for l in c.layers]
    rows.append(["total", "", "", human(c.macs), human(c.params)])
    text = table(["layer", "type", "channels in -> out", "MACs", "params"], rows)
    if c.unsupported_ops:
        text += "\nops fvcore does not count (0 MACs): " + ", ".join(
            f"{k} x{v}" for k, v in c.unsupported_ops.items())
    return text + f"\n({MAC_NOTE}.)"


def format_sparsity_table(sparse: Dict[str, Any]) -> str:
    rows = [[l["name"], l["type"], str(l["weights"]), f"{100 * l['sparsity']:.1f}%",
             human(l["macs_dense"]), human(l["macs_nonzero"])] for l in sparse["layers"]]
    rows.append(["total", "", str(sparse["weights"]), f"{100 * sparse['sparsity']:.1f}%",
                 human(sparse["macs_dense"]), human(sparse["macs_nonzero"])])
    return table(["layer", "type", "weights", "zero", "dense MACs", "nonzero MACs"], rows)
