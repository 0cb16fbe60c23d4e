"""A VGG with BiT-style weight standardization (Kolesnikov et al. 2020, "Big Transfer"):
``StdConv2d`` is an ``nn.Conv2d`` whose own ``forward`` standardizes each filter over its
(in-channel, kh, kw) weights, ``w = (w - mean) / sqrt(var + 1e-5)``, before ``F.conv2d``; each
conv is followed by ``GroupNorm(2, C)`` and ReLU, with 2x2 max pools, global average pool and a
linear classifier. Output: logits (N, num_classes)."""
import torch
import torch.nn as nn
import torch.nn.functional as F


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, unbiased=False)
        w = (w - mean) / torch.sqrt(var + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def block(cin, cout):
    return [StdConv2d(cin, cout, 3, padding=1), nn.GroupNorm(2, cout), nn.ReLU()]


class WSVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            *block(3, 8), nn.MaxPool2d(2),
            *block(8, 16), nn.MaxPool2d(2),
            *block(16, 32), *block(32, 32),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.features(x))


def make(num_classes=10):
    return WSVGG(num_classes)
