"""A VGG whose custom modules hold per-channel registered buffers (not parameters), as a frozen
or folded normalization leaves them:

* ``ChannelScale``: a ``(1, C, 1, 1)`` buffer ``scale``, used as ``x * self.scale``;
* ``ChannelShift``: a ``(C,)`` buffer ``shift``, used as ``x + self.shift.view(1, -1, 1, 1)``;
* ``FeatureGain``: after global average pool + flatten, a ``(1, C)`` buffer ``gain``, used as
  ``x * self.gain`` before the final linear layer.

The buffers start at non-trivial values (``torch.linspace``), so a buffer left at its old width
or with the wrong channels kept changes the output. Output: logits (N, num_classes)."""
import torch
import torch.nn as nn


class ChannelScale(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, channels).view(1, channels, 1, 1))

    def forward(self, x):
        return x * self.scale


class ChannelShift(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.register_buffer("shift", torch.linspace(-0.2, 0.3, channels))

    def forward(self, x):
        return x + self.shift.view(1, -1, 1, 1)


class FeatureGain(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.register_buffer("gain", torch.linspace(2.0, 0.5, channels).view(1, channels))

    def forward(self, x):
        return x * self.gain


class BufferVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), ChannelScale(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), ChannelShift(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), ChannelScale(32), ChannelShift(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.gain = FeatureGain(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.fc(self.gain(self.features(x)))


def make(num_classes=10):
    return BufferVGG(num_classes)
