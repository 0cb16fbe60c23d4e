"""Shared bits of the pruning-methods tests (criteria, targets, iterative, sparsity,
unstructured, sensitivity): a tiny user model file, tiny data flags, a CLI-run check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

FAKE = ["--data", "fake", "--data-kwargs", '{"train_size": 96, "test_size": 48}']
TINY = ["--model", "cifar_vgg11_bn", "--width", "0.125"]
QUIET = ["--progress", "none", "--threads", "1", "--batch-size", "48"]

# A small VGG-like user model: conv-(BN)-ReLU blocks, pools, a two-layer classifier.
USER_MODEL = '''
import torch.nn as nn


def make(num_classes=10, bn=True):
    def block(i, o):
        return [nn.Conv2d(i, o, 3, padding=1)] + ([nn.BatchNorm2d(o)] if bn else []) + [nn.ReLU()]
    return nn.Sequential(*block(3, 16), nn.MaxPool2d(2), *block(16, 32), nn.MaxPool2d(2),
                         *block(32, 32), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, num_classes))
'''


def user_model(tmp_path: Path, bn: bool = True) -> List[str]:
    """``--model path/to/file.py:make`` flags for the user model (written under tmp_path)."""
    f = tmp_path / "user_vgg.py"
    f.write_text(USER_MODEL)
    return ["--model", f"{f}:make"] + ([] if bn else ["--model-kwargs", '{"bn": false}'])


def models(tmp_path: Path) -> dict:
    return {"zoo": TINY, "user": user_model(tmp_path)}


# A checkpoint of a user model names its factory: building it runs that file, so commands that
# read one need consent; a zoo checkpoint needs none.
TRUST = {"zoo": [], "user": ["--trust-model-code"]}


def read_report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def assert_one_line_error(r, message: str, out: Path) -> None:
    assert r.code == 2, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], r.err
    assert "Traceback" not in r.err
    assert not out.exists() or not any(out.iterdir())
