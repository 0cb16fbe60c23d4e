"""torchrun / DistributedDataParallel helpers: nccl on CUDA, gloo on CPU.

The library never reads the environment itself: the CLI calls :func:`from_env` with
``os.environ`` and passes the :class:`DistContext` on. One process is ``DistContext()``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist

from tp_vgg.device import resolve_device
from tp_vgg.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None   # set once the process group is up

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Only rank 0 writes files and prints."""
        return self.rank == 0

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over ranks in place (a no-op with one process)."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def all_reduce_max(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BN running statistics)."""
        if self.enabled:
            for b in module.buffers():
                dist.broadcast(b, src=0)

    def share(self, compute: Callable[[], T]) -> T:
        """``compute()`` on rank 0 alone; every rank returns its result, as JSON carries it
        (tuples come back as lists). What a rank measures (a latency, a table of timings) is
        measured once, so that every rank decides from the same figures. One process: just
        ``compute()``. No pickle: a broadcast of the JSON bytes."""
        if not self.enabled:
            return compute()
        dev = (torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl"
               else torch.device("cpu"))  # NCCL broadcasts CUDA tensors only
        payload = json.dumps(compute()).encode() if self.is_main else b""
        size = torch.tensor([len(payload)], dtype=torch.int64, device=dev)
        dist.broadcast(size, src=0)
        buf = (torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(dev) if self.is_main
               else torch.empty(int(size.item()), dtype=torch.uint8, device=dev))
        dist.broadcast(buf, src=0)
        return json.loads(bytes(buf.cpu().tolist()).decode())

    def shared(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` computed on rank 0 and its result given to every rank (:meth:`share`)."""
        return lambda *a, **kw: self.share(lambda: fn(*a, **kw))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def device(self, requested: Optional[str]) -> torch.device:
        """The device this rank trains on: ``requested`` (cuda picks ``cuda:LOCAL_RANK``) or CUDA
        when present, else CPU."""
        dev = resolve_device(requested)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device("cuda", self.local_rank if self.enabled else torch.cuda.current_device())
        return dev


def from_env(env: Mapping[str, str]) -> DistContext:
    """The ranks torchrun describes in ``env`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``)."""
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise UserError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None
    return DistContext(rank=rank, world_size=world, local_rank=local)


def init(ctx: DistContext, device: torch.device) -> DistContext:
    """Join the process group (nccl on CUDA, gloo otherwise); a no-op for one process."""
    if not ctx.enabled:
        return ctx
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=ctx.rank, world_size=ctx.world_size)
    return DistContext(ctx.rank, ctx.world_size, ctx.local_rank, backend)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()
