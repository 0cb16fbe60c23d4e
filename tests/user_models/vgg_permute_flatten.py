"""A CIFAR-style VGG whose head flattens channels-last: ``x.permute(0, 2, 3, 1).reshape(n, -1)``
(as code ported from TensorFlow/Keras does), so a channel's features are every C-th column."""
import torch.nn as nn


class PermuteFlattenVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
            nn.MaxPool2d(2), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Linear(16 * 2 * 2, 24), nn.ReLU(inplace=True),
                                        nn.Linear(24, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.permute(0, 2, 3, 1).reshape(x.size(0), -1)
        return self.classifier(x)


def make(num_classes=10):
    return PermuteFlattenVGG(num_classes)
