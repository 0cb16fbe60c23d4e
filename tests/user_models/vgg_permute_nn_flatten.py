"""A CIFAR-style VGG whose head is ``nn.Flatten()`` after a channels-last permute: the flatten
module reads (N, H, W, C)."""
import torch.nn as nn


class PermuteFlattenModuleVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 20), nn.ReLU(inplace=True),
                                  nn.Linear(20, num_classes))

    def forward(self, x):
        return self.head(self.features(x).permute(0, 2, 3, 1))


def make(num_classes=10):
    return PermuteFlattenModuleVGG(num_classes)
