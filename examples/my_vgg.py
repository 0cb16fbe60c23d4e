"""A user's own VGG, as it would sit in their project: a small CIFAR-style VGG with BatchNorm.

Not an example to run: examples/own_vgg.py names it as ``tp_vgg.ModelSpec("examples/my_vgg.py:my_vgg")``
(``path/to/file.py:factory``; on the command line ``tp-vgg prune --model examples/my_vgg.py:my_vgg``).
tp-vgg calls the factory with ``num_classes`` (and ``width`` when one is given), so it takes them as
keyword arguments with defaults.
"""

import torch.nn as nn

CFG = [32, "M", 64, "M", 128, 128, "M", 256, 256, "M"]  # channels, "M": 2x2 max-pool


class MyVGG(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, c_in = [], 3
        for v in CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                c_out = max(1, int(v * width))
                layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                           nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(c_in, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def my_vgg(num_classes: int = 10, width: float = 1.0) -> nn.Module:
    return MyVGG(num_classes=num_classes, width=width)
