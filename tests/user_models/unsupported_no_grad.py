"""Runs its feature extractor under ``torch.no_grad()`` (a frozen backbone): autograd, and so
torch-pruning, sees only the head. Pruning nothing silently would be wrong; tp-vgg says why."""
import torch
import torch.nn as nn


class NoGradVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        with torch.no_grad():
            f = self.backbone(x)
        return self.head(f)


def make(num_classes=10):
    return NoGradVGG(num_classes)
