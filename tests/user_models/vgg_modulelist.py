"""Nested block modules kept in an ``nn.ModuleList`` and looped over in ``forward``."""
import torch
import torch.nn as nn


class ConvBlock(nn.Module):
    def __init__(self, c_in, c_out, convs=2):
        super().__init__()
        self.convs = nn.ModuleList()
        for i in range(convs):
            self.convs.append(nn.Sequential(
                nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)))
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x)
        return self.pool(x)


class ListVGG(nn.Module):
    def __init__(self, num_classes=10, widths=(8, 16, 16)):
        super().__init__()
        self.blocks = nn.ModuleList()
        c_in = 3
        for w in widths:
            self.blocks.append(ConvBlock(c_in, w))
            c_in = w
        self.fc = nn.Linear(c_in * 4 * 4, num_classes)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.fc(torch.flatten(x, 1))


def make(num_classes=10, widths=(8, 16, 16)):
    return ListVGG(num_classes, tuple(widths))
