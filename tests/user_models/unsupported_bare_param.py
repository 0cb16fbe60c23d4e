"""Bare ``nn.Parameter``s used in ``forward`` outside any module.

``spatial`` (1, 1, 8, 8) is a learned positional bias over the 8x8 map: torch-pruning guesses
that the last dimension > 1 of a bare parameter is its channel dimension, here the width W, and
would cut the wrong axis. ``make_scale`` instead uses a per-channel scale (1, C, 1, 1), whose
guessed dimension is the channel one: that model prunes correctly.
"""
import torch
import torch.nn as nn


class BareParamVGG(nn.Module):
    def __init__(self, num_classes=10, spatial=True):
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                    nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                    nn.MaxPool2d(2))
        shape = (1, 1, 8, 8) if spatial else (1, 16, 1, 1)
        self.extra = nn.Parameter(torch.randn(shape) * 0.1 + (0 if spatial else 1))
        self.spatial = spatial
        self.block2 = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                    nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.block1(x)
        x = x + self.extra if self.spatial else x * self.extra
        return self.fc(self.block2(x))


def make(num_classes=10):
    return BareParamVGG(num_classes, spatial=True)


def make_scale(num_classes=10):
    return BareParamVGG(num_classes, spatial=False)
