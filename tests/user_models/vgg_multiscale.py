"""A VGG whose classifier reads the pooled maps of all four depths, concatenated: multi-scale
features, as detection backbones feed their heads.

* Each depth is reduced over space in its own way: global average pool + flatten, a 2x2 max pool
  + flatten, a mean over H and W, a 2x2 average pool + flatten.
* The second depth is scaled by a bare per-channel ``nn.Parameter`` held outside any layer
  (``w.view(1, -1, 1, 1) * x``).
* The head is one linear layer over 16 + 32*4 + 64 + 128*4 = 720 columns.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                         nn.MaxPool2d(2))


class MultiScaleVGG(nn.Module):
    def __init__(self, num_classes=10, widths=(16, 32, 64, 128)):
        super().__init__()
        cins = (3,) + tuple(widths[:-1])
        self.blocks = nn.ModuleList(_block(i, o) for i, o in zip(cins, widths))
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(widths[1]))
        w = widths
        self.fc = nn.Linear(w[0] + 4 * w[1] + w[2] + 4 * w[3], num_classes)

    def forward(self, x):
        x1 = self.blocks[0](x)
        x2 = self.blocks[1](x1)
        x3 = self.blocks[2](x2)
        x4 = self.blocks[3](x3)
        feats = [torch.flatten(F.adaptive_avg_pool2d(x1, 1), 1),
                 torch.flatten(F.adaptive_max_pool2d(self.scale.view(1, -1, 1, 1) * x2, 2), 1),
                 x3.mean((2, 3)),
                 torch.flatten(F.adaptive_avg_pool2d(x4, 2), 1)]
        return self.fc(torch.cat(feats, 1))


def make(num_classes=10):
    return MultiScaleVGG(num_classes)
