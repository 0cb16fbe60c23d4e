"""Returns a dict ``{"logits": ..., "features": ...}``; tp-vgg finds "logits" by its name."""
import torch.nn as nn


class DictOutVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        f = self.features(x)
        return {"features": f, "logits": self.head(f)}


def make(num_classes=10):
    return DictOutVGG(num_classes)
