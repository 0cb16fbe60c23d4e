"""Structured channel pruning through torch-pruning's DependencyGraph.

Nothing here copies weights by hand: ``tp.pruner.BasePruner`` removes each channel from every
coupled layer (conv -> BN -> activation -> pool -> flatten -> linear). Importance criteria live in
the ``IMPORTANCES`` registry.

GroupNorm keeps its ``num_groups``: a layer feeding a ``GroupNorm(G, C)`` loses the same channels
of each of the G groups (torch-pruning's channel grouping; the importance is averaged over the
groups), so it keeps ``G * int(C / G * (1 - ratio))`` channels and ``num_channels`` stays a
multiple of ``num_groups`` (:func:`kept_channels`). ``GroupNorm(1, C)`` prunes like any layer.
BatchNorm without affine terms or running statistics and InstanceNorm prune channel by channel.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from tp_vgg.errors import UserError, first_line
from tp_vgg.models import outputs
from tp_vgg.models.zoo import ModelSpec, keep_mode, record_of, spec_of
from tp_vgg.pruning import buffers, checks, diagnosis, mapping, reparam
from tp_vgg.pruning.criteria import IMPORTANCES

PRUNABLE = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)  # the layers whose channels are pruned

class _KeptWhole(tp.pruner.BasePruningFunc):
    """torch-pruning's view of a layer it has no pruner for, here ``nn.GRU``: one node with
    inputs and outputs, so that the graph traces through it (torch-pruning 1.6.1 otherwise
    follows the GRU's gates one op at a time and fails in its split mapping). The layer is kept
    whole (:func:`_recurrent_and_feeders`), so nothing ever calls its pruning functions."""

    def prune_out_channels(self, layer, idxs):
        raise RuntimeError(f"{type(layer).__name__} is kept whole")

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer):
        return layer.hidden_size * (2 if layer.bidirectional else 1)

    def get_in_channels(self, layer):
        return layer.input_size


@contextlib.contextmanager
def _opaque_grus(model: nn.Module):
    """While tracing, each ``nn.GRU`` computes its output without autograd and joins its input's
    graph through one op: torch-pruning then sees one GRU node fed by the features (its gates,
    chunked one op at a time, break torch-pruning 1.6.1's split mapping). The output is the
    GRU's own; only the traced structure is simplified. The GRU is kept whole."""
    grus = [m for m in model.modules() if type(m) is nn.GRU]
    for gru in grus:
        def forward(input, hx=None, _gru=gru):
            with torch.no_grad():
                out, h = nn.GRU.forward(_gru, input, hx)
            data = input.data if isinstance(input, nn.utils.rnn.PackedSequence) else input
            link = data.sum() * 0  # the features -> the GRU, in the traced graph
            if isinstance(out, nn.utils.rnn.PackedSequence):
                return out._replace(data=out.data + link), h
            return out + link, h
        gru.forward = forward
    try:
        yield
    finally:
        for gru in grus:
            del gru.forward


def customized_pruners() -> Dict[type, tp.pruner.BasePruningFunc]:
    """The ``customized_pruners`` of every graph tp-vgg builds."""
    return {nn.GRU: _KeptWhole()}


@dataclass
class PruneConfig:
    """How to prune. ``ratio`` is the fraction of channels removed from every prunable layer."""

    ratio: float = 0.5
    importance: str = "l1"
    global_pruning: bool = False
    max_layer_ratio: Optional[float] = None  # cap per layer; default 0.9 under global ranking
    round_to: Optional[int] = None
    layer_ratios: Dict[str, float] = field(default_factory=dict)
    seed: int = 0
    iterative_steps: int = 1
    output_layer: Optional[str] = None  # name of the logits layer when the graph cannot tell

    def validate(self) -> None:
        check_ratio("--ratio", self.ratio, "PruneConfig.ratio")
        for name, r in self.layer_ratios.items():
            check_ratio(f"--layer-ratios[{name!r}]", r, "PruneConfig.layer_ratios")
        if self.max_layer_ratio is not None:
            check_ratio("--max-layer-ratio", self.max_layer_ratio, "PruneConfig.max_layer_ratio")
        if self.round_to is not None and (not isinstance(self.round_to, int) or self.round_to < 1):
            raise UserError(f"--round-to must be a positive integer, got {self.round_to!r} "
                            "(PruneConfig.round_to)")
        if not isinstance(self.iterative_steps, int) or self.iterative_steps < 1:
            raise UserError(f"--iterative-steps must be a positive integer, got "
                            f"{self.iterative_steps!r} (PruneConfig.iterative_steps)")
        IMPORTANCES.get(self.importance)


def check_ratio(what: str, r: object, field: str) -> None:
    """``r`` in [0, 1); the message names the flag (``what``) and the config ``field``."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
        raise UserError(f"{what} must be a number in [0, 1), got {r!r} ({field})"
                        + percent_hint(r, "the fraction of each layer's channels to remove"))


def percent_hint(r: object, what: str = "a fraction") -> str:
    """For a ratio given as a percentage (1 < r < 100): "; it is WHAT, not a percentage: did
    you mean 0.5 (50 %)?"; "" otherwise."""
    if isinstance(r, bool) or not isinstance(r, (int, float)) or not 1.0 < float(r) <= 100.0:
        return ""
    if float(r) == 100.0:
        return f"; it is {what}, not a percentage (and 1, i.e. 100 %, is not accepted)"
    return f"; it is {what}, not a percentage: did you mean {float(r) / 100:g} ({float(r):g} %)?"


@dataclass
class PruneResult:
    history: List[list]                 # torch-pruning's pruning_history(), as plain lists
    channels_before: Dict[str, int]     # out channels of every Conv2d/Linear
    channels_after: Dict[str, int]
    output_layers: List[str]            # layers that produce the logits (never pruned)
    notes: List[str] = field(default_factory=list)  # what the criterion did not prune, and why


def _forward_fn(spec: ModelSpec):
    """torch-pruning's ``forward_fn``: every tensor the model outputs (on its raw path,
    :mod:`tp_vgg.models.outputs`), so that each is traced and its layers protected."""
    def fn(model, inputs):
        with _opaque_grus(model):
            out = outputs.run(model, inputs)
        traced = [t for t in outputs.require_tensors(out) if t.grad_fn is not None]
        fn.outputs = [t.grad_fn for t in traced]  # read by _graph_output_layers
        if not traced:
            raise UserError(
                "the model's outputs are not connected to its layers in autograd (forward uses "
                ".detach(), .data, torch.no_grad() or NumPy), so torch-pruning cannot trace which "
                "layers produce them; keep forward differentiable")
        return traced
    fn.outputs = []
    return fn


@contextlib.contextmanager
def _traceable(model: nn.Module):
    """torch-pruning traces through autograd: frozen parameters (``requires_grad=False``) would
    hide their layers from the graph and leave them unpruned. Unfreeze while tracing."""
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:
        p.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        for p in frozen:
            p.requires_grad_(False)


def _trace_failed(e: Exception, what: str, model: Optional[nn.Module] = None) -> UserError:
    """A failure inside torch-pruning while tracing or pruning, said in one line."""
    site = diagnosis.user_frame(e)
    at = f" {diagnosis.show_site(site)}" if site else ""
    return UserError(
        f"torch-pruning could not {what}{at} ({type(e).__name__}: {first_line(e)}): the model "
        "uses an operation it cannot follow (e.g. torch.chunk/split or indexing over channels, "
        "sizes written as numbers, parameters outside modules); --debug shows the traceback")


@mapping.scoped
def build_graph(model: nn.Module, spec: ModelSpec, example: torch.Tensor) -> tp.DependencyGraph:
    """torch-pruning's DependencyGraph of ``model``; the model's train/eval mode is kept."""
    with keep_mode(model), _traceable(model), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch-pruning's own ("Maximum recursive depth")
        try:
            fn = _forward_fn(spec)
            graph = tp.DependencyGraph().build_dependency(
                model, example_inputs=example, forward_fn=fn, verbose=False,
                customized_pruners=customized_pruners())
            graph.tp_vgg_outputs = fn.outputs
            return graph
        except UserError:
            raise
        except Exception as e:
            raise _trace_failed(e, "trace the model", model=model) from e


def _graph_output_layers(graph: tp.DependencyGraph) -> List[nn.Module]:
    """The Conv/Linear layers whose outputs reach the model's output without passing another
    Conv/Linear: walk back from the graph's sinks through BN, pooling, flatten and the like."""
    found: List[nn.Module] = []
    seen = set()
    produced = set(getattr(graph, "tp_vgg_outputs", ()))  # every output, not only the sinks:
    # an embedding returned beside the logits it feeds is an output too
    stack = [n for n in graph.module2node.values() if not n.outputs or n.grad_fn in produced]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node.module, PRUNABLE):
            if node.module not in found:
                found.append(node.module)
            continue
        stack.extend(node.inputs)
    return found


@mapping.scoped
def output_layers(model: nn.Module, output_layer: Optional[str] = None,
                  graph: Optional[tp.DependencyGraph] = None, spec: Optional[ModelSpec] = None,
                  check_type: bool = False) -> List[nn.Module]:
    """The layer(s) producing the logits, never pruned: ``output_layer`` by name (--output-layer,
    ``PruneConfig.output_layer``) when given, else found from the dependency graph (``graph``,
    or one traced from ``spec``'s example input). ``check_type``: the named layer must hold a
    Conv2d or Linear."""
    if output_layer is not None:
        modules = dict(model.named_modules())
        if output_layer not in modules:
            raise UserError(f"--output-layer {output_layer!r} is not a module of the model")
        layer = modules[output_layer]
        if check_type and not any(isinstance(m, PRUNABLE) for m in layer.modules()):
            raise UserError(f"--output-layer {output_layer!r} is a {type(layer).__name__}; "
                            "accepted: the Conv2d or Linear that produces the logits")
        return [layer]
    if graph is None:
        graph = build_graph(model, spec, spec.example_input(device=next(model.parameters()).device))
    return _graph_output_layers(graph)


def output_layer_names(model: nn.Module, spec: ModelSpec,
                       output_layer: Optional[str] = None) -> List[str]:
    """:func:`output_layers` by module name."""
    names = {m: n for n, m in model.named_modules()}
    return [names[m] for m in output_layers(model, output_layer, spec=spec)]


def out_channels(model: nn.Module) -> Dict[str, int]:
    return {name: (m.out_features if isinstance(m, nn.Linear) else m.out_channels)
            for name, m in model.named_modules() if isinstance(m, PRUNABLE)}


def _resolve_layer_ratios(model: nn.Module, layer_ratios: Dict[str, float]) -> Dict[nn.Module, float]:
    modules = dict(model.named_modules())
    prunable = [n for n, m in modules.items() if isinstance(m, PRUNABLE)]
    out = {}
    for name, r in layer_ratios.items():
        if name not in modules:
            hint = ", ".join(prunable[:6]) + (", ..." if len(prunable) > 6 else "")
            raise UserError(f"--layer-ratios names {name!r}, which is not a module of the model; "
                            f"prunable layers: {hint}")
        m = modules[name]
        if not any(isinstance(s, PRUNABLE) for s in m.modules()):
            raise UserError(f"--layer-ratios names {name!r}, a {type(m).__name__} with no Conv2d or "
                            f"Linear to prune; prunable layers: {', '.join(prunable[:6])}, ...")
        out[m] = float(r)
    return out


def round_kept(per_group: int, groups: int = 1, round_to: Optional[int] = None) -> int:
    """``groups`` groups of ``per_group`` kept channels, each group lowered alike until the total
    is a multiple of ``round_to`` (0 when no smaller count is)."""
    if round_to:
        while per_group > 0 and per_group * groups % round_to:
            per_group -= 1
    return per_group * groups


def kept_channels(c: int, ratio: float, groups: int = 1, round_to: Optional[int] = None) -> int:
    """The channels a layer of ``c`` keeps at ``ratio``: ``int(C * (1 - r))`` rounded down to a
    multiple of ``round_to``; a layer feeding a GroupNorm of ``groups`` groups keeps the same count
    in each: ``groups * int(C / groups * (1 - r))``, lowered alike per group to a multiple of
    ``round_to``."""
    return round_kept(int(c // groups * (1 - ratio)), groups, round_to)


def channel_groups(pruner: tp.pruner.BasePruner) -> Dict[nn.Module, int]:
    """Root layer -> the number of groups of the GroupNorm it feeds (only those with > 1)."""
    if not pruner.out_channel_groups:
        return {}
    out = {}
    for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                          root_module_types=pruner.root_module_types):
        g = pruner._get_channel_groups(group)
        if g > 1 and pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler):
            out[group[0].dep.target.module] = g
    return out


def _check_kept_channels(model: nn.Module, cfg: PruneConfig, ratios: Dict[nn.Module, float],
                         protected: List[nn.Module],
                         groups: Optional[Dict[nn.Module, int]] = None) -> None:
    """Refuse a ratio that would leave a layer with no channel (torch-pruning would build a
    broken model, or silently leave the layer whole): :func:`kept_channels` must stay >= 1.
    ``groups``: layer -> groups of the GroupNorm it feeds (:func:`channel_groups`)."""
    names = {m: n for n, m in model.named_modules()}
    for m in protected:
        if m in ratios:
            raise UserError(f"--layer-ratios names {names[m]!r}, the layer that produces the "
                            "logits; it never loses outputs")
    if cfg.global_pruning:
        return  # max_pruning_ratio keeps every layer alive
    layer_ratio = {}
    for m, r in ratios.items():  # a ratio given for a block applies to the layers inside it
        for sub in m.modules():
            layer_ratio[sub] = r
    for m, name in names.items():
        if not isinstance(m, PRUNABLE) or m in protected:
            continue
        c = m.out_features if isinstance(m, nn.Linear) else m.out_channels
        r = layer_ratio.get(m, cfg.ratio)
        g = (groups or {}).get(m, 1)
        keep = kept_channels(c, r, g)
        rounded = kept_channels(c, r, g, cfg.round_to)
        if r > 0 and rounded < 1:
            why = (f" after rounding down to a multiple of --round-to {cfg.round_to}"
                   if keep >= 1 else "")
            if g > 1:
                raise UserError(_group_norm_message(name, c, g, r, cfg.round_to))
            raise UserError(f"ratio {r} would leave layer {name!r} with 0 of its {c} channels{why}; "
                            + _at_most(name, 1 - max(1, cfg.round_to or 1) / c))


def _at_most(name: str, most: float) -> str:
    """The remedy for a layer that would keep no channel: its largest ratio (3 decimals, rounded
    down) as the --layer-ratios entry that gives it; 0 keeps the layer whole."""
    import json

    most = max(0.0, math.floor(most * 1000 + 1e-9) / 1000)
    what = f"give it at most {most:g}" if most > 0 else "keep it whole"
    return f"{what} with --layer-ratios '{json.dumps({name: most if most > 0 else 0})}'"


def _group_norm_message(name: str, c: int, g: int, r: float, round_to: Optional[int]) -> str:
    """Why a layer feeding a GroupNorm of ``g`` groups would keep no channel, and what to use."""
    import json

    size = c // g
    head = (f"ratio {r} would leave layer {name!r} with 0 of its {c} channels: it feeds a "
            f"GroupNorm of {g} groups of {size}, which each keep the same number of channels, "
            f"int({size} * (1 - {r})) = {int(size * (1 - r))}")
    least = next((k for k in range(1, size + 1) if round_kept(k, g, round_to)), None)
    if least is None:
        return (f"{head}, and no equal count per group makes a multiple of --round-to {round_to}; "
                f"keep it unpruned with --layer-ratios '{json.dumps({name: 0})}' or use another "
                "--round-to")
    rounded = (f", lowered alike until the total is a multiple of --round-to {round_to}"
               if round_to else "")
    return f"{head}{rounded}; " + _at_most(name, 1 - least / size)


@mapping.scoped
def prune(model: nn.Module, spec: Optional[ModelSpec] = None, cfg: Optional[PruneConfig] = None,
          example: Optional[torch.Tensor] = None,
          between_steps: Optional[Callable[[int, nn.Module], None]] = None,
          gradients: Optional[Callable[[nn.Module], None]] = None,
          check: bool = True) -> PruneResult:
    """Prune ``model`` in place and return what was removed.

    Each step is checked: the pruned model must compute what the model before it computes with
    the removed channels zeroed (:func:`tp_vgg.pruning.checks.check_pruned`). ``check=False``
    skips that (the width search's candidates, of which only the chosen one is kept, and
    pruned again with the check).

    ``prune(model, spec, cfg)``, or ``prune(model, cfg)`` / ``prune(model)`` for a model tp-vgg
    built or loaded (its spec is kept on it; ``cfg`` defaults to :class:`PruneConfig`). The
    history kept on such a model is extended, so that ``tp_vgg.save(path, model)`` records it.

    ``between_steps(step, model)`` is called after each of ``cfg.iterative_steps`` steps but the
    last (e.g. to fine-tune). ``gradients(model)`` fills ``.grad`` for criteria that need it
    (``taylor``; see :class:`tp_vgg.pruning.criteria.GradientBatches`); it runs before every ranking and
    the gradients are cleared afterwards. The model's train/eval mode is kept.
    """
    if isinstance(spec, PruneConfig):
        spec, cfg = None, spec
    spec = spec_of(model, spec, "prune")
    cfg = cfg if cfg is not None else PruneConfig()
    cfg.validate()
    device = next(model.parameters()).device
    if example is None:
        example = spec.example_input(device=device)
    before = out_channels(model)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    protected: List[nn.Module] = (output_layers(model, cfg.output_layer, check_type=True)
                                  if cfg.output_layer is not None else [])
    ratios = _resolve_layer_ratios(model, cfg.layer_ratios)
    max_ratio = cfg.max_layer_ratio
    if max_ratio is None:
        max_ratio = 0.9 if cfg.global_pruning else 1.0
    # spectral / weight norm off while pruning, registered again on leaving (reparam)
    with keep_mode(model), reparam.unwrapped(model) as unwrapped, \
            buffers.as_parameters(model) as taken:
        expect = checks.output_shapes(model, spec, example) if cfg.output_layer is not None else None
        if not protected:
            # Found on a graph of their own, before the pruner is made: torch-pruning groups
            # every layer it is not told to ignore when the pruner is made, and the groups of a
            # detection head (its outputs reshaped per anchor and concatenated) alone took 60 s
            # of SSD300's 62 s (measured); a second trace costs about a second.
            graph = build_graph(model, spec, example)
            protected = output_layers(model, graph=graph)
            if not protected:
                raise UserError(checks.no_output_layer_message(
                    model, checks.bare_parameters(graph), graph))
        pruner = _make_pruner(model, spec, cfg, example, ratios, protected, max_ratio)
        bare = {n: v for n, v in checks.bare_parameters(pruner.DG).items()
                if n not in taken.shapes}  # the buffers say their own note
        whole = _recurrent_and_feeders(model, pruner.DG, protected)
        mixing, mixing_notes = _mixers_and_feeders(model, pruner.DG, protected + whole)
        whole = whole + mixing
        if whole:  # kept whole, automatically: their outputs are not ranked or pruned
            pruner.ignored_layers = list(pruner.ignored_layers) + [
                s for m in whole for s in m.modules()]
        untraced = checks.untraced_layers(pruner.DG, model)
        if untraced:
            prunable = [m for m in model.modules() if isinstance(m, PRUNABLE)
                        and m in pruner.DG.module2node and m not in protected]
            if not prunable and (cfg.ratio > 0 or any(r > 0 for r in ratios.values())):
                raise UserError(checks.untraced_message(untraced) + "; nothing would be pruned: "
                                "keep forward differentiable for the layers to prune")
        _check_kept_channels(model, cfg, ratios, protected, channel_groups(pruner))
        notes = _criterion_hook(pruner, "check", model, gradients) or []
        if any(isinstance(m, nn.RNNBase) for m in whole):
            notes = list(notes) + [_recurrent_note(model, [m for m in whole
                                                           if m not in mixing])]
        notes = list(notes) + mixing_notes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            ranked = False
            if cfg.global_pruning:
                _criterion_hook(pruner, "prepare", model, gradients)
                ranked = True
                # torch-pruning 1.6.1 checks max_pruning_ratio only *before* a step, so one global
                # step can take a layer far past it. Rank globally here, cap each layer, and let
                # torch-pruning remove exactly those per-layer counts.
                fixed = {s for m in ratios for s in m.modules()}  # a block's layers too
                ratios = {**_global_allocation(pruner, cfg, fixed, max_ratio), **ratios}
                pruner = _make_pruner(model, spec, dataclasses.replace(cfg, global_pruning=False),
                                      example, ratios, protected + whole, 1.0)
            coupled = lambda: checks.coupled_bare_parameters(  # noqa: E731
                pruner.DG, model, protected + whole)
            for step in range(cfg.iterative_steps):
                if not ranked:
                    _criterion_hook(pruner, "prepare", model, gradients)
                ranked = False
                # the masked-equivalence check of every step, on the model itself (no copy)
                masked = checks.MaskedOriginal(model, pruner.DG, spec, example) if check else None
                _step(pruner, model, spec, example, masked.take if check else None, unwrapped)
                if check:
                    checks.check_pruned(model, spec, example, masked, expect, bare, coupled,
                                        checks.feeders(pruner.DG, model))
                if between_steps is not None and step + 1 < cfg.iterative_steps:
                    between_steps(step, model)
        history = [[name, bool(is_out), [int(i) for i in idxs]]
                   for name, is_out, idxs in pruner.pruning_history()]
        if untraced:
            notes = list(notes) + [checks.untraced_message(untraced) + "; they keep all channels"]
        if bare:
            notes = list(notes) + checks.bare_parameter_notes(
                model, bare, checks.coupled_bare_parameters(pruner.DG, model, protected + whole),
                before,
                out_channels(model))
    notes = list(notes) + unwrapped.notes() + taken.notes(model)
    if outputs.label(model):  # a detector: what was traced, counted and timed
        notes.append(f"{type(model).__name__}: pruned, checked, counted and timed on its "
                     f"{outputs.label(model)}; the saved model is the whole {type(model).__name__}")
    skipped = _skipped_outputs(model, example)
    if skipped:
        notes.append(f"output leaves that are not tensors are not traced or checked: "
                     f"{', '.join(skipped)}")
    if gradients is not None:
        model.zero_grad(set_to_none=True)
    for n, p in model.named_parameters():  # torch-pruning's new Parameters require grad
        if n in frozen:
            p.requires_grad_(False)
    names = {m: n for n, m in model.named_modules()}
    rec = record_of(model)
    if rec is not None:
        rec.history = list(rec.history) + list(history)
    return PruneResult(history=history, channels_before=before,
                       channels_after=out_channels(model),
                       output_layers=[names[m] for m in protected], notes=list(notes))


def _skipped_outputs(model: nn.Module, example: torch.Tensor) -> List[str]:
    with keep_mode(model), torch.no_grad():
        model.eval()
        return outputs.skipped_leaves(outputs.run(model, example))


def _recurrent_and_feeders(model: nn.Module, graph: tp.DependencyGraph,
                           protected: List[nn.Module]) -> List[nn.Module]:
    """Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) and the layers whose output channels
    feed them. torch-pruning 1.6.1 cannot prune a recurrent layer's input features or hidden size
    exactly (its LSTM pruner fails on bidirectional and stacked layers, and has no GRU/RNN pruner),
    so these are kept whole and everything before them is pruned."""
    rnns = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    if not rnns:
        return []
    feeders = []
    for m in model.modules():
        if isinstance(m, PRUNABLE) and m in graph.module2node and m not in protected:
            try:
                group = graph.get_pruning_group(
                    m, graph.get_pruner_of_module(m).prune_out_channels, [0])
            except Exception:
                continue
            if any(isinstance(dep.target.module, nn.RNNBase) for dep, _ in group):
                feeders.append(m)
    return rnns + feeders


def _own_forward(m: nn.Module) -> bool:
    """A Conv/Linear subclass with a forward of its own (weight standardization, a scaled or
    masked weight): it may compute each output from all its inputs together."""
    for base in PRUNABLE:
        if isinstance(m, base):
            return type(m).forward is not base.forward
    return False


def _mixers_and_feeders(model: nn.Module, graph: tp.DependencyGraph,
                        protected: List[nn.Module]) -> tuple:
    """Layers whose outputs cannot lose channels exactly because what they feed mixes its input
    channels -- an ``nn.LayerNorm`` (it normalizes over the channels, channels-last or over
    (C, H, W)), or a Conv/Linear subclass with its own ``forward`` (weight standardization
    normalizes each filter over all its inputs) -- found all at once, in one pass over the
    graph: ``(feeders, notes)``. The feeders are kept whole; the mixers' own outputs are pruned
    where that stays exact (the masked-equivalence check proves it)."""
    mixers = [m for m in model.modules()
              if m in graph.module2node and (isinstance(m, nn.LayerNorm) or _own_forward(m))]
    if not mixers:
        return [], []
    names = {m: n for n, m in model.named_modules()}
    feeds: Dict[nn.Module, List[nn.Module]] = {}
    for m in model.modules():
        if not isinstance(m, PRUNABLE) or m not in graph.module2node or m in protected:
            continue
        try:
            group = graph.get_pruning_group(m, graph.get_pruner_of_module(m).prune_out_channels,
                                            [0])
        except Exception:
            continue
        for dep, _ in group:
            t = dep.target.module
            if t in mixers and t is not m and (isinstance(t, nn.LayerNorm)
                                              or graph.is_in_channel_pruning_fn(dep.handler)):
                feeds.setdefault(t, []).append(m)
    feeders = list(dict.fromkeys(f for fs in feeds.values() for f in fs))
    notes = []
    for kind, why in (
            ("LayerNorm", "normalizes across the channels, so removing some would change what "
                          "the kept ones compute"),
            ("own forward", "computes from all its input channels together (a forward of its "
                            "own, e.g. weight standardization over each filter's inputs), so "
                            "it keeps its inputs and only its outputs are pruned")):
        hit = [t for t in feeds if (kind == "LayerNorm") == isinstance(t, nn.LayerNorm)]
        if not hit:
            continue
        fed = list(dict.fromkeys(f for t in hit for f in feeds[t]))
        shown = ", ".join(f"{names[t]!r} ({type(t).__name__})" for t in hit[:4])
        more = f" and {len(hit) - 4} more" if len(hit) > 4 else ""
        notes.append(f"{shown}{more}: each {why}; the {len(fed)} "
                     f"layer{'s' if len(fed) != 1 else ''} feeding "
                     f"{'them' if len(hit) != 1 else 'it'} "
                     f"({', '.join(repr(names[f]) for f in fed[:6])}"
                     f"{', ...' if len(fed) > 6 else ''}) keep their output channels"
                     + ("; a LayerNorm over (C, H, W) written as nn.GroupNorm(1, C), the same "
                        "normalization with per-channel affine terms, prunes with the channels"
                        if any(isinstance(t, nn.LayerNorm) and len(t.normalized_shape) >= 3
                               for t in hit) else ""))
    return feeders, notes


def _recurrent_note(model: nn.Module, whole: List[nn.Module]) -> str:
    names = {m: n for n, m in model.named_modules()}
    rnns = [f"{names[m]!r} ({type(m).__name__}{', bidirectional' if m.bidirectional else ''})"
            for m in whole if isinstance(m, nn.RNNBase)]
    feeders = [repr(names[m]) for m in whole if not isinstance(m, nn.RNNBase)]
    fed = ""
    if feeders:
        one = len(feeders) == 1
        fed = (f", and {', '.join(feeders)}, which feed{'s' if one else ''} it, "
               f"keep{'s its' if one else ' their'} output channels")
    return (f"recurrent layer {', '.join(rnns)} kept whole{fed}: torch-pruning cannot prune a "
            "recurrent layer's inputs or hidden size exactly; every layer before is pruned")


def _criterion_hook(pruner: tp.pruner.BasePruner, hook: str, model: nn.Module, gradients):
    """Call the criterion's optional ``check(pruner, model, gradients)`` or
    ``prepare(model, gradients)`` hook (see :mod:`tp_vgg.pruning.criteria`)."""
    fn = getattr(pruner.importance, hook, None)
    if fn is None:
        return None
    return fn(pruner, model, gradients) if hook == "check" else fn(model, gradients)


class _Pruner(tp.pruner.BasePruner):
    """``BasePruner`` whose ``round_to`` keeps a GroupNorm's groups equal. torch-pruning 1.6.1
    rounds the count removed from *each group* as if it were the whole layer's, which removes
    every channel (and then leaves the layer whole): here each group loses alike until the kept
    total is a multiple of ``round_to`` (:func:`round_kept`)."""

    _ranking = None  # the group being pruned: the loop asks _is_atten_group right before _round_to

    def _is_atten_group(self, group):
        self._ranking = group
        return super()._is_atten_group(group)

    def _round_to(self, n_pruned, current_channels, round_to):
        g = self._get_channel_groups(self._ranking) if self._ranking is not None else 1
        if g == 1:
            return super()._round_to(n_pruned, current_channels, round_to)
        per_group = current_channels // g
        return per_group - round_kept(per_group - n_pruned, g, round_to) // g


def _make_pruner(model, spec, cfg, example, ratios, protected, max_ratio) -> tp.pruner.BasePruner:
    importance = IMPORTANCES.get(cfg.importance)(cfg)
    with warnings.catch_warnings(), _traceable(model):
        warnings.simplefilter("ignore")
        try:
            fn = _forward_fn(spec)
            pruner = _Pruner(
                model, example, importance=importance,
                global_pruning=cfg.global_pruning, pruning_ratio=cfg.ratio,
                pruning_ratio_dict=ratios or None, max_pruning_ratio=max_ratio,
                iterative_steps=cfg.iterative_steps, ignored_layers=protected,
                round_to=cfg.round_to, forward_fn=fn,
                customized_pruners=customized_pruners())
            pruner.DG.tp_vgg_outputs = fn.outputs
            return pruner
        except UserError:
            raise
        except Exception as e:
            raise _trace_failed(e, "trace the model", model=model) from e


# --------------------------------------------------------------------------------------------
# Feature maps flattened in another order than (C, H, W). torch-pruning 1.6.1 maps a channel to
# the linear layer's input columns as if the map were flattened channel-major (columns c*HW ...
# (c+1)*HW - 1); through a transpose or permute first (VGGish's NHWC flatten:
# transpose(1, 3), transpose(1, 2), view(n, -1)) a channel's columns are elsewhere. Where the
# traced graph holds a transpose or permute, the order is read off the model itself: the map
# feeding the linear layer is replaced by its own channel-major indices, and the columns show
# where each index lands. The planned groups then remove the right columns.

_PERMUTES = ("TransposeBackward", "PermuteBackward")


def _permutes(graph: tp.DependencyGraph) -> bool:
    return any(isinstance(m, tp.ops._ElementWiseOp) and str(m._grad_fn).startswith(_PERMUTES)
               for m in graph.module2node)


@torch.no_grad()
def _column_of(model: nn.Module, spec: ModelSpec, example: torch.Tensor, linear: nn.Linear
               ) -> Optional[torch.Tensor]:
    """For ``linear`` fed by a flattened feature map: the column each channel-major index of the
    map lands in, when that is a permutation other than the identity; else None."""
    leaves = [m for m in model.modules() if not list(m.children()) and m is not linear]
    last: List[Optional[nn.Module]] = [None]
    fed: List[Optional[nn.Module]] = [None]

    def seen(m, args, out):
        if (isinstance(out, torch.Tensor) and out.dim() == 4
                and out[0].numel() == linear.in_features):
            last[0] = m

    def reached(m, args):
        if fed[0] is None:
            fed[0] = last[0]
        raise _Stop

    handles = [m.register_forward_hook(seen) for m in leaves]
    handles.append(linear.register_forward_pre_hook(reached))
    try:
        _run_until_stop(model, example)
    finally:
        for h in handles:
            h.remove()
    source = fed[0]
    if source is None:
        return None
    captured: List[torch.Tensor] = []

    def code(m, args, out):
        index = torch.arange(out[0].numel(), dtype=out.dtype, device=out.device)
        return index.reshape(out[0].shape).expand_as(out).contiguous()

    def grab(m, args):
        captured.append(args[0][0].detach().flatten())
        raise _Stop

    handles = [source.register_forward_hook(code), linear.register_forward_pre_hook(grab)]
    try:
        _run_until_stop(model, example)
    finally:
        for h in handles:
            h.remove()
    if not captured or captured[0].numel() != linear.in_features:
        return None
    index = captured[0].round().long().cpu()
    n = linear.in_features
    if not torch.equal(index.sort().values, torch.arange(n)) or torch.equal(index, torch.arange(n)):
        return None
    column = torch.empty(n, dtype=torch.long)
    column[index] = torch.arange(n)
    return column


class _Stop(Exception):
    """Ends a probing forward pass once the linear layer's input is known."""


def _run_until_stop(model: nn.Module, example: torch.Tensor) -> None:
    with keep_mode(model):
        model.eval()
        try:
            model(example)
        except _Stop:
            pass


def _follow_flatten_order(groups: list, model: nn.Module, spec: ModelSpec,
                          example: torch.Tensor, graph: tp.DependencyGraph) -> None:
    """Move each planned group's input columns of a linear layer to where the channels really
    land (see above); a no-op unless the traced graph holds a transpose or permute."""
    if not _permutes(graph):
        return
    columns: Dict[nn.Module, Optional[torch.Tensor]] = {}
    for group in groups:
        for i, (dep, idxs) in enumerate(list(group)):
            layer = dep.target.module
            if dep.handler != tp.prune_linear_in_channels or not isinstance(layer, nn.Linear):
                continue
            if layer not in columns:
                columns[layer] = _column_of(model, spec, example, layer)
            column = columns[layer]
            if column is not None:
                group[i] = (dep, [tp._helpers._HybridIndex(idx=int(column[int(h.idx)]),
                                                           root_idx=h.root_idx)
                                  if isinstance(h, tp._helpers._HybridIndex) else int(column[int(h)])
                                  for h in idxs])


def _step(pruner: tp.pruner.BasePruner, model: nn.Module, spec: ModelSpec, example: torch.Tensor,
          planned: Optional[Callable[[list], None]] = None,
          unwrapped: Optional[reparam.Unwrapped] = None) -> None:
    """``pruner.step()``: the groups of the step are planned first, all on the unpruned model (so
    every criterion scores the model as it is), handed to ``planned`` (the masked-equivalence
    check takes the original's output there), then pruned one by one, so that a failure names
    the layer being ranked or pruned.

    A planned group's indices are in the numbering of the unpruned model. That stays right for
    its root layer, whose outputs no other group touches, but not for a layer that several groups
    reach: a convolution after ``torch.cat([up, skip], 1)`` (a U-Net's decoder) loses inputs to
    the group of ``up`` and to the group of ``skip``, and once the first is pruned the second's
    offsets are stale. So each group is derived again from its root, right before it is pruned,
    on the graph as it is then -- as torch-pruning's own ``step()`` does."""
    names = {m: n for n, m in model.named_modules()}
    try:
        groups = list(pruner.step(interactive=True))
    except UserError:
        raise
    except Exception as e:
        raise _trace_failed(e, "rank the channels") from e
    _follow_flatten_order(groups, model, spec, example, pruner.DG)
    if planned is not None:
        planned(groups)
    with unwrapped.tracking() if unwrapped is not None else contextlib.nullcontext():
        for group in groups:
            dep, idxs = group[0]
            try:
                group = pruner.DG.get_pruning_group(dep.target.module, dep.handler,
                                                    tp._helpers.to_plain_idxs(idxs))
                _follow_flatten_order([group], model, spec, example, pruner.DG)
                group.prune()
            except Exception as e:
                root = names.get(dep.target.module, "?")
                raise _trace_failed(e, f"prune layer {root!r}") from e


def _global_allocation(pruner: tp.pruner.BasePruner, cfg: PruneConfig, fixed: set,
                       max_ratio: float) -> Dict[nn.Module, float]:
    """Per-layer ratios from one global ranking of all channels (importances normalized per
    layer), removing the lowest-ranked channels until ``cfg.ratio`` of all channels are gone,
    while no layer loses more than ``int(C * max_ratio)`` channels or its last channel."""
    return GlobalRanking(pruner, fixed).allocate(cfg.ratio, max_ratio)


class GlobalRanking:
    """One global ranking of every channel of the rankable layers (scored once); ``allocate``
    turns a total ratio into per-layer ratios. A larger ratio only removes more channels.

    A layer feeding a GroupNorm of G groups is ranked by channel position within a group (the
    importance averaged over the groups, as torch-pruning does): each entry stands for G channels,
    one per group, which go together."""

    def __init__(self, pruner: tp.pruner.BasePruner, fixed: set):
        roots, scores, groups = [], [], []
        for group in pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers,
                                              root_module_types=pruner.root_module_types):
            root = group[0].dep.target.module
            if root in fixed or not pruner.DG.is_out_channel_pruning_fn(group[0].dep.handler):
                continue
            imp = pruner.estimate_importance(group)
            if imp is None:
                continue
            g = pruner._get_channel_groups(group)
            imp = imp.detach().float().cpu()
            roots.append(root)
            scores.append(imp.view(g, -1).mean(0) if g > 1 else imp)
            groups.append(g)
        self.roots = roots
        self.scores = scores  # per root: one score per entry
        self.groups = groups  # channels per entry: the GroupNorm's groups, else 1
        self.sizes = [len(s) * g for s, g in zip(scores, groups)]  # channels
        self.owner = (torch.cat([torch.full((len(s),), i) for i, s in enumerate(scores)]).tolist()
                      if scores else [])
        self.order = torch.cat(scores).argsort(stable=True).tolist() if scores else []

    def removed(self, ratio: float, max_ratio: float) -> List[int]:
        """Channels each root loses: the lowest-ranked go first until ``ratio`` of all ranked
        channels are gone, while no layer loses more than ``int(C * max_ratio)`` or its last
        (per group, for a layer feeding a GroupNorm: its G channels go together, so up to G - 1
        more may go)."""
        units = [c // g for c, g in zip(self.sizes, self.groups)]
        caps = [min(int(u * max_ratio), u - 1) for u in units]
        total = sum(self.sizes)
        target = total - int(total * (1 - ratio))
        removed = [0] * len(self.roots)
        n = 0
        for j in self.order:
            if n >= target:
                break
            i = self.owner[j]
            if removed[i] < caps[i]:
                removed[i] += 1
                n += self.groups[i]
        return [k * g for k, g in zip(removed, self.groups)]

    def allocate(self, ratio: float, max_ratio: float) -> Dict[nn.Module, float]:
        removed = self.removed(ratio, max_ratio)
        # torch-pruning keeps int(C * (1 - r)); r = (k - 0.5) / C makes that exactly C - k (per
        # group of a GroupNorm: C / G channels, k / G of them removed)
        return {root: ((k // g - 0.5) / (c // g) if k else 0.0)
                for root, k, c, g in zip(self.roots, removed, self.sizes, self.groups)}


def _load_history(graph: tp.DependencyGraph, model: nn.Module, spec: ModelSpec,
                  example: torch.Tensor, history: List[list]) -> None:
    """``graph.load_pruning_history``, with each group's flatten order followed as when it was
    pruned (:func:`_follow_flatten_order`)."""
    graph._pruning_history = [[n, bool(o), list(i)] for n, o, i in history]
    for name, is_out, idxs in graph._pruning_history:
        module = model.get_submodule(name)
        pruner = graph.get_pruner_of_module(module)
        fn = pruner.prune_out_channels if is_out else pruner.prune_in_channels
        group = graph.get_pruning_group(module, fn, idxs)
        _follow_flatten_order([group], model, spec, example, graph)
        group.prune(record_history=False)


@mapping.scoped
def replay(model: nn.Module, spec: ModelSpec, history: List[list],
           example: Optional[torch.Tensor] = None) -> nn.Module:
    """Apply a saved pruning history to a freshly built model (architecture only)."""
    if not history:
        return model
    if example is None:
        example = spec.example_input(device=next(model.parameters()).device)
    with keep_mode(model), reparam.unwrapped(model) as unwrapped, buffers.as_parameters(model):
        graph = build_graph(model, spec, example)
        try:
            with unwrapped.tracking():
                _load_history(graph, model, spec, example, history)
        except Exception as e:
            raise UserError(
                f"the saved pruning history does not fit the model {spec.name} builds now "
                f"({type(e).__name__}: {str(e).strip()[:120]}): its code or arguments changed "
                "since the checkpoint was written") from e
    rec = record_of(model)
    if rec is not None:
        rec.history = list(rec.history) + list(history)
    return model

