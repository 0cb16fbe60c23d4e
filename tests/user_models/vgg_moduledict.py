"""Stages and heads in ``nn.ModuleDict``s, blocks nested two levels deep."""
import torch.nn as nn


class Stage(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out),
                                  nn.ReLU())
        self.down = nn.MaxPool2d(2)

    def forward(self, x):
        return self.down(self.body(x))


class DictVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.stages = nn.ModuleDict({"s1": Stage(3, 8), "s2": Stage(8, 16), "s3": Stage(16, 16)})
        self.heads = nn.ModuleDict({"pool": nn.AdaptiveAvgPool2d(1), "flat": nn.Flatten(),
                                    "fc": nn.Linear(16, num_classes)})

    def forward(self, x):
        for name in ("s1", "s2", "s3"):
            x = self.stages[name](x)
        for name in ("pool", "flat", "fc"):
            x = self.heads[name](x)
        return x


def make(num_classes=10):
    return DictVGG(num_classes)
