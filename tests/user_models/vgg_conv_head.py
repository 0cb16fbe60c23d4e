"""A fully convolutional VGG: the classifier is a 1x1 conv, then global average pooling and
``nn.Flatten()``; no Linear at all."""
import torch.nn as nn


def make(num_classes=10):
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, num_classes, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten())
