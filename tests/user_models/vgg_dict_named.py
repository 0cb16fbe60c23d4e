"""Returns a dict with two tensors and no "logits" key: name them with ``--output-key scores``.
The embedding comes from a hidden Linear; the scores from the last one."""
import torch.nn as nn


class NamedOutVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embedding = nn.Linear(16, 24)
        self.scores = nn.Linear(24, num_classes)

    def forward(self, x):
        e = self.embedding(self.features(x))
        return {"embedding": e, "scores": self.scores(e.relu())}


def make(num_classes=10):
    return NamedOutVGG(num_classes)
