"""No BatchNorm: plain convs with biases (the biases the old hand-copying tutorial lost), and an
``nn.Flatten()`` module inside the head over a 2x2 map."""
import torch.nn as nn


class PlainVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1, bias=True), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, bias=True), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1, bias=True), nn.ReLU(inplace=True), nn.MaxPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 24), nn.ReLU(),
                                  nn.Linear(24, num_classes))

    def forward(self, x):
        return self.head(self.features(x))


def make(num_classes=10):
    return PlainVGG(num_classes)
