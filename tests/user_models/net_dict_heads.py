"""A multi-task net whose output is a nested dict with non-tensor leaves::

    {"logits": (N, num_classes),
     "aux": {"boxes": (N, 4), "embedding": [embedding (N, 16)]},
     "name": "dict-heads",
     "extra": None}

One conv trunk (GAP + flatten) feeds an embedding layer; the logits and the boxes are read from
the embedding. Tensors sit in a dict, a dict in a dict and a list in a dict; the string and
``None`` are leaves that are not tensors."""
import torch
import torch.nn as nn


class DictHeads(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(24, 16), nn.ReLU())
        self.classifier = nn.Linear(16, num_classes)
        self.boxes = nn.Linear(16, 4)

    def forward(self, x):
        emb = self.embed(self.trunk(x))
        return {"logits": self.classifier(emb),
                "aux": {"boxes": torch.sigmoid(self.boxes(emb)), "embedding": [emb]},
                "name": "dict-heads",
                "extra": None}


def make(num_classes=10):
    return DictHeads(num_classes)
