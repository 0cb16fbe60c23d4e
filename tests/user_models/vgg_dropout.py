"""Dropout2d between the conv blocks and Dropout in the head."""
import torch.nn as nn


class DropoutVGG(nn.Module):
    def __init__(self, num_classes=10, p=0.3):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout2d(p),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Dropout2d(p),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Dropout(p), nn.Linear(16 * 16, 32), nn.ReLU(),
                                        nn.Dropout(p), nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


def make(num_classes=10, p=0.3):
    return DropoutVGG(num_classes, p)
