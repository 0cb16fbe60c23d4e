"""BatchNorm after the activation (conv -> ReLU -> BN), as some Keras ports write it."""
import torch
import torch.nn as nn


def block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(c_out))


class BnAfterReluVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(block(3, 8), nn.MaxPool2d(2), block(8, 16), nn.MaxPool2d(2),
                                      block(16, 16), nn.AdaptiveAvgPool2d(2))
        self.classifier = nn.Linear(16 * 4, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def make(num_classes=10):
    return BnAfterReluVGG(num_classes)
