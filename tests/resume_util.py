"""The shape every exact-resume test shares: one run whole, one cut by its own log line after an
epoch, the cut run resumed from its last.pt; then the two last.pt weights are compared."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict

import pytest
import torch

from tp_vgg.checkpoint import store as checkpoint
from tp_vgg.train.loop import ResumePoint, resume


class Stop(Exception):
    pass


def cut_and_resume(run: Callable[..., object], tmp_path: Path, data, epoch: int = 2,
                   before_resume: Callable[[Path], None] = lambda cut: None
                   ) -> Dict[str, Dict[str, torch.Tensor]]:
    """``run(out)`` / ``run(out, log)`` trains into ``out``. Returns the state dicts of
    ``full/last.pt`` and of the resumed ``cut/last.pt``; ``before_resume(cut_dir)`` may check
    the interrupted run first."""
    run(tmp_path / "full")

    def stop(line: str) -> None:
        if line.startswith(f"epoch {epoch}/"):  # printed once that epoch's last.pt is written
            raise Stop
    with pytest.raises(Stop):
        run(tmp_path / "cut", stop)
    before_resume(tmp_path / "cut")
    resume(ResumePoint.read(str(tmp_path / "cut" / "last.pt")), data)
    return {name: checkpoint.load_checkpoint(str(tmp_path / name / "last.pt")).state_dict
            for name in ("full", "cut")}


def assert_same_weights(a: Dict[str, torch.Tensor], b: Dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs (largest difference " \
            f"{(a[k].double() - b[k].double()).abs().max().item():.3g})"
