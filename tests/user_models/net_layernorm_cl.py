"""A VGG with ConvNeXt-style channels-last LayerNorm: each block is a 3x3 conv, then
``x.permute(0, 2, 3, 1)`` (N, H, W, C), ``nn.LayerNorm(C)`` over the channels,
``x.permute(0, 3, 1, 2)`` back to (N, C, H, W), and ReLU; 2x2 max pools between blocks, global
average pool, a linear classifier. Output: logits (N, num_classes)."""
import torch
import torch.nn as nn


class ConvLNBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm = nn.LayerNorm(cout, eps=1e-6)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.conv(x)
        x = x.permute(0, 2, 3, 1)
        x = self.norm(x)
        x = x.permute(0, 3, 1, 2)
        return self.act(x)


class LNVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.features = nn.Sequential(
            ConvLNBlock(3, 8), nn.MaxPool2d(2),
            ConvLNBlock(8, 16), nn.MaxPool2d(2),
            ConvLNBlock(16, 32), ConvLNBlock(32, 32))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = self.features(x)
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def make(num_classes=10):
    return LNVGG(num_classes)
