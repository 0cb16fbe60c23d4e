"""VGG-16 for CIFAR-10 as pruned in Li et al. 2017, "Pruning Filters for Efficient ConvNets"
(section 4.1, table 2): thirteen 3x3 conv-BN-ReLU layers (64, 64, M, 128, 128, M, 256, 256, 256,
M, 512, 512, 512, M, 512, 512, 512, M) and a classifier Linear(512, 512)-BatchNorm1d-ReLU-
Linear(512, 10). Its convolutions are named conv1 ... conv13, so that "VGG-16-pruned-A" (conv1
and conv8-conv13 lose half their filters) reads as ``--layer-ratios``::

    tp-vgg prune --model tests/li2017_vgg16.py:vgg16 --ratio 0 --out DIR --layer-ratios \\
      '{"features.conv1": 0.5, "features.conv8": 0.5, ..., "features.conv13": 0.5}'

A user model file: tp-vgg loads it as ``path/to/li2017_vgg16.py:vgg16``.
"""

from collections import OrderedDict

import torch.nn as nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
PRUNED_A = ["conv1"] + [f"conv{i}" for i in range(8, 14)]   # lose 50 % of their filters


class LiVGG16(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        layers = OrderedDict()
        c_in, n_conv, n_pool = 3, 0, 0
        for v in CFG:
            if v == "M":
                n_pool += 1
                layers[f"pool{n_pool}"] = nn.MaxPool2d(2, 2)
                continue
            n_conv += 1
            layers[f"conv{n_conv}"] = nn.Conv2d(c_in, v, 3, padding=1)
            layers[f"bn{n_conv}"] = nn.BatchNorm2d(v)
            layers[f"relu{n_conv}"] = nn.ReLU(inplace=True)
            c_in = v
        self.features = nn.Sequential(layers)
        self.classifier = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True),
            nn.Linear(512, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def vgg16(num_classes: int = 10) -> nn.Module:
    return LiVGG16(num_classes)


def pruned_a_ratios() -> dict:
    """``--layer-ratios`` of VGG-16-pruned-A."""
    return {f"features.{name}": 0.5 for name in PRUNED_A}
