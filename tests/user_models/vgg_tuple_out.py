"""Returns a tuple ``(logits, embedding)``; the logits come first."""
import torch
import torch.nn as nn


class TupleVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1))
        self.embed = nn.Sequential(nn.Linear(16, 24), nn.ReLU())
        self.fc = nn.Linear(24, num_classes)

    def forward(self, x):
        emb = self.embed(torch.flatten(self.features(x), 1))
        return self.fc(emb), emb


def make(num_classes=10):
    return TupleVGG(num_classes)
