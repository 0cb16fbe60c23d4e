"""Unstructured (weight-level) magnitude pruning, and lottery tickets.

:func:`magnitude_prune` zeroes the smallest-magnitude weights of every Conv2d and Linear with
``torch.nn.utils.prune`` (``l1_unstructured`` per layer, or ``global_unstructured`` across layers)
and makes the masks permanent (``prune.remove``): the state_dict keeps its plain keys and the
zeros are the mask, so the checkpoint loads like any other. :class:`ZeroMask` keeps the pruned
weights at zero while fine-tuning (called after every optimizer step).

The cost stays honest: the layers are as dense as before, so dense MACs do not change; the
report gives, beside them, the MACs of the nonzero weights only (what sparse kernels could skip).

:func:`lottery` is iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et
al. 2020): train, prune a share of the remaining weights, rewind the survivors to their values
at the end of epoch ``rewind_epoch`` (0: the starting weights), retrain, repeat.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.nn.utils import prune as torch_prune

from tp_vgg.errors import UserError
from tp_vgg.models.counting import Counts

LAYERS = (nn.Conv2d, nn.Linear)


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> List[Tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LAYERS) and n not in exclude]


class ZeroMask:
    """The pruned weights of a model; calling it sets them to zero again (after an optimizer
    step, where momentum or weight decay would move them)."""

    def __init__(self, model: nn.Module, masks: Dict[str, torch.Tensor]):
        modules = dict(model.named_modules())
        self.masks = {name: mask.detach().bool().cpu() for name, mask in masks.items()}
        self._pairs = [(modules[name].weight, mask) for name, mask in self.masks.items()]

    @classmethod
    def from_zeros(cls, model: nn.Module) -> "ZeroMask":
        """Masks from the weights that are exactly zero (a checkpoint of a pruned model)."""
        return cls(model, {n: m.weight.detach() != 0 for n, m in prunable_layers(model)})

    @torch.no_grad()
    def __call__(self, *_: Any) -> None:
        for i, (weight, mask) in enumerate(self._pairs):
            if mask.device != weight.device:
                mask = mask.to(weight.device)
                self._pairs[i] = (weight, mask)
            weight.masked_fill_(~mask, 0.0)

    def sparsity(self) -> float:
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(m.sum()) for m in self.masks.values()) / max(total, 1)


def magnitude_prune(model: nn.Module, sparsity: float, global_ranking: bool = False,
                    exclude: Sequence[str] = ()) -> ZeroMask:
    """Zero the smallest |w| so that ``sparsity`` of each layer's weights (or, with
    ``global_ranking``, of all conv/linear weights together) are zero; layers named in
    ``exclude`` (the logits layer) keep theirs. Weights already zero have the smallest magnitude
    and go first, so a larger sparsity extends an earlier mask."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
        raise UserError(f"--ratio must be a number in [0, 1), got {sparsity!r}")
    layers = prunable_layers(model, exclude)
    if not layers:
        raise UserError("the model has no Conv2d or Linear weights to prune")
    if global_ranking:
        torch_prune.global_unstructured([(m, "weight") for _, m in layers],
                                        pruning_method=torch_prune.L1Unstructured,
                                        amount=float(sparsity))
    else:
        for _, m in layers:
            torch_prune.l1_unstructured(m, "weight", amount=float(sparsity))
    masks = {}
    for name, m in layers:
        masks[name] = m.weight_mask.detach().clone()
        torch_prune.remove(m, "weight")   # permanent: weight = weight_orig * mask, plain keys
    return ZeroMask(model, masks)


def sparsity_report(model: nn.Module, counts: Counts) -> Dict[str, Any]:
    """Per-layer and total sparsity of the conv/linear weights; dense MACs (unchanged by
    unstructured pruning) and the MACs of the nonzero weights only. Layers left entirely zero
    (global ranking can empty a layer of small weights) are named in ``empty_layers``."""
    macs = {l.name: l.macs for l in counts.layers}
    rows, weights, zeros, skipped = [], 0, 0, 0.0
    for name, m in prunable_layers(model):
        w = m.weight.detach()
        n, z = w.numel(), int((w == 0).sum())
        dense = int(macs.get(name, 0))
        nonzero = int(round(dense * (n - z) / max(n, 1)))
        rows.append({"name": name, "type": type(m).__name__, "weights": n, "zeros": z,
                     "sparsity": z / max(n, 1), "macs_dense": dense, "macs_nonzero": nonzero})
        weights, zeros, skipped = weights + n, zeros + z, skipped + (dense - nonzero)
    all_params = sum(p.numel() for p in model.parameters())
    nonzero_params = sum(int((p != 0).sum()) for p in model.parameters())
    return {
        "sparsity": zeros / max(weights, 1),          # of the conv/linear weights
        "weights": weights, "zeros": zeros,
        "params": all_params, "params_nonzero": nonzero_params,
        "macs_dense": counts.macs,                    # what a dense kernel computes: unchanged
        "macs_nonzero": counts.macs - int(skipped),   # multiply-adds with a nonzero weight
        "layers": rows,
        "empty_layers": [r["name"] for r in rows if r["weights"] and r["zeros"] == r["weights"]],
    }


@dataclass
class LotteryConfig:
    sparsity: float            # final fraction of conv/linear weights at zero
    rounds: int                # pruning rounds; each removes the same share of what is left
    epochs: int                # training epochs of the dense run
    rewind_epoch: int = 0      # rewind to the weights at the end of this epoch (0: the start)
    global_ranking: bool = False
    exclude: List[str] = field(default_factory=list)   # layers never pruned (the logits layer)

    def validate(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise UserError(f"--lottery-rounds must be a positive integer, got {self.rounds!r}")
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise UserError("lottery-ticket mode trains: give --finetune-epochs N (epochs per round)")
        if not isinstance(self.rewind_epoch, int) or not 0 <= self.rewind_epoch < self.epochs:
            raise UserError(f"--rewind-epoch must be in 0..{self.epochs - 1} (below --finetune-epochs "
                            f"{self.epochs}), got {self.rewind_epoch!r}")
        if not 0 < self.sparsity < 1:
            raise UserError(f"--ratio must be in (0, 1) for lottery tickets, got {self.sparsity!r}")

    def round_sparsities(self) -> List[float]:
        """Cumulative sparsity after each round: 1 - (1 - s)^(r / rounds)."""
        return [1 - (1 - self.sparsity) ** (r / self.rounds) for r in range(1, self.rounds + 1)]


# train(model, epochs, after_step, on_epoch_end) trains ``model`` in place and returns its top-1.
TrainFn = Callable[[nn.Module, int, Optional[Callable[[], None]],
                    Optional[Callable[[int, nn.Module], None]]], Optional[float]]


def lottery(model: nn.Module, cfg: LotteryConfig, train: TrainFn,
            log: Callable[[str], None] = print) -> Tuple[ZeroMask, List[Dict[str, Any]]]:
    """Iterative magnitude pruning with rewinding; ``model`` ends pruned and retrained.

    Round 0 trains the dense model ``cfg.epochs`` epochs, keeping its weights (and BN statistics)
    at the end of epoch ``cfg.rewind_epoch``. Each round then zeroes the smallest weights up to
    its cumulative sparsity, rewinds every surviving weight to the kept values and retrains
    ``cfg.epochs - cfg.rewind_epoch`` epochs (a fresh schedule over those epochs) with the pruned
    weights held at zero.
    """
    cfg.validate()
    kept: Dict[str, Dict[str, torch.Tensor]] = {}

    def snapshot(m: nn.Module) -> Dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in m.state_dict().items()}

    if cfg.rewind_epoch == 0:
        kept["state"] = snapshot(model)

    def capture(epoch: int, m: nn.Module) -> None:
        if epoch == cfg.rewind_epoch:
            kept["state"] = snapshot(m)

    log(f"lottery round 0: dense training, {cfg.epochs} epochs "
        f"(rewind point: end of epoch {cfg.rewind_epoch})")
    top1 = train(model, cfg.epochs, None, capture)
    records = [{"round": 0, "sparsity": 0.0, "epochs": cfg.epochs, "top1": top1}]
    mask: Optional[ZeroMask] = None
    retrain = cfg.epochs - cfg.rewind_epoch
    for r, s in enumerate(cfg.round_sparsities(), 1):
        mask = magnitude_prune(model, s, cfg.global_ranking, cfg.exclude)
        model.load_state_dict(kept["state"])
        mask()
        log(f"lottery round {r}/{cfg.rounds}: {100 * mask.sparsity():.1f}% of the weights zero, "
            f"rewound to epoch {cfg.rewind_epoch}, retraining {retrain} epochs")
        top1 = train(model, retrain, mask, None)
        records.append({"round": r, "sparsity": mask.sparsity(), "epochs": retrain, "top1": top1})
    assert mask is not None
    return mask, records


def describe(rep: Dict[str, Any]) -> str:
    from tp_vgg.models.counting import human

    empty = rep.get("empty_layers") or []
    warn = (f"; WARNING: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} entirely zero "
            "(the global ranking took all its weights; their outputs are constant)" if empty else "")
    return (f"unstructured: {100 * rep['sparsity']:.1f}% of the conv/linear weights are zero; "
            f"dense MACs unchanged at {human(rep['macs_dense'])} (a dense kernel still computes "
            f"them); nonzero-weight MACs {human(rep['macs_nonzero'])} "
            f"({rep['macs_dense'] / max(rep['macs_nonzero'], 1):.2f}x fewer, needs sparse kernels); "
            f"nonzero params {human(rep['params_nonzero'])} of {human(rep['params'])}{warn}")


def config_dict(cfg: LotteryConfig) -> Dict[str, Any]:
    d = asdict(cfg)
    d["round_sparsities"] = cfg.round_sparsities()
    return d

