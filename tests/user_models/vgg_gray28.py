"""Grayscale 28x28 (MNIST-like, ``--in-channels 1 --input-size 28``): 28 -> 14 -> 7, then the
7x7 map is flattened with the tensor method ``x.flatten(1)``."""
import torch.nn as nn


class GrayVGG(nn.Module):
    def __init__(self, num_classes=10, in_channels=1):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.fc1 = nn.Linear(8 * 7 * 7, 16)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.features(x).flatten(1)
        return self.fc2(self.act(self.fc1(x)))


def make(num_classes=10, in_channels=1):
    return GrayVGG(num_classes, in_channels)
