"""Two torchrun ranks simulated in one process, for what rank 0 measures and shares."""

from __future__ import annotations

import json


class SimulatedRank:
    """:class:`tp_vgg.train.distributed.DistContext`'s ``share`` as a broadcast does it: run
    rank 0 first; each of its shared results (as JSON carries them) is queued in ``sent``, and
    rank 1, run after it, receives them in the same order without computing anything."""

    enabled, world_size = True, 2

    def __init__(self, rank: int, sent: list):
        self.rank, self.is_main, self.sent = rank, rank == 0, sent

    def device(self, requested):
        return "cpu"

    def share(self, compute):
        if self.is_main:
            self.sent.append(json.dumps(compute()))
        return json.loads(self.sent.pop(0) if not self.is_main else self.sent[-1])

    def shared(self, fn):
        return lambda *a, **kw: self.share(lambda: fn(*a, **kw))
