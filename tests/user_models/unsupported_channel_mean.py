"""A spatial-attention step that averages over the channel dimension, ``x.mean(1)``: the pruned
model still runs, but averages over fewer channels, so it computes something else. Only the
masked-equivalence check can see this; tp-vgg names the first layer whose output differs."""
import torch
import torch.nn as nn


class ChannelMeanVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(2))
        self.body = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        attention = torch.sigmoid(x.mean(1, keepdim=True))  # mixes all channels
        return self.fc(self.body(x * attention))


def make(num_classes=10):
    return ChannelMeanVGG(num_classes)
