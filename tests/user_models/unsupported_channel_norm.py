"""Normalizations across channels that torch-pruning does not prune with the channels:
``nn.LayerNorm([C, H, W])`` (torch-pruning cuts its last dimension, the width) and
``nn.LocalResponseNorm`` (each channel is divided by its neighbours' energy: with channels gone,
the kept ones have other neighbours). ``nn.GroupNorm`` is pruned instead (vgg_groupnorm.py)."""
import torch
import torch.nn as nn


class ChannelNormVGG(nn.Module):
    def __init__(self, norm, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(),
                                      nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(4))
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.features(x), 1))


def make(num_classes=10):
    return ChannelNormVGG(nn.LayerNorm([8, 32, 32]), num_classes)


def make_lrn(num_classes=10):
    return ChannelNormVGG(nn.LocalResponseNorm(3, alpha=1.0, k=0.5), num_classes)
