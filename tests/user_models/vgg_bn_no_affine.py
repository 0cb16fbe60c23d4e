"""BatchNorm without affine terms (``affine=False``: no gamma, no beta), in the features and in
the head (``BatchNorm1d``)."""
import torch
import torch.nn as nn


class NoAffineVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8, affine=False), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16, affine=False), nn.ReLU(),
            nn.MaxPool2d(4))
        self.classifier = nn.Sequential(nn.Linear(16 * 4 * 4, 24), nn.BatchNorm1d(24, affine=False),
                                        nn.ReLU(), nn.Linear(24, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


def make(num_classes=10):
    return NoAffineVGG(num_classes)
