"""A classifier-plus-box-regressor: one shared conv trunk (three conv-BN-ReLU-pool stages, global
average pool, flatten) feeding two heads. Returns a tuple ``(class_logits, boxes)``:
class logits (N, num_classes) from one linear layer, and boxes (N, 4) from a two-layer MLP
(hidden Linear, ReLU, Linear) with a sigmoid, as normalized (cx, cy, w, h)."""
import torch
import torch.nn as nn


class TwoHeads(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.cls_head = nn.Linear(32, num_classes)
        self.box_head = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        feats = self.trunk(x)
        return self.cls_head(feats), torch.sigmoid(self.box_head(feats))


def make(num_classes=10):
    return TwoHeads(num_classes)
