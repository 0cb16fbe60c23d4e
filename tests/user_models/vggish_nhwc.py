"""The published VGGish layout (AudioSet's VGGish, as torchvggish writes it): 1x96x64 log-mel
patches, four conv stages (96x64 -> 6x4), then the feature map flattened in NHWC order --
``torch.transpose(x, 1, 3)``, ``torch.transpose(x, 1, 2)``, ``.contiguous().view(n, -1)`` --
so the channel is the fastest index of the flattened features: 512*6*4 -> 4096 -> 4096 -> 128,
then a classifier. ``--in-channels 1 --input-size 96x64``. ``width`` scales every layer
(1.0: VGGish itself, 72M parameters; the tests use 0.125)."""
import torch
import torch.nn as nn


def _stage(c_in, widths):
    layers = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class VGGishNHWC(nn.Module):
    def __init__(self, num_classes=10, width=0.125):
        super().__init__()
        c = [max(1, int(v * width)) for v in (64, 128, 256, 512)]
        hidden = max(1, int(4096 * width))
        self.features = nn.Sequential(_stage(1, [c[0]]), _stage(c[0], [c[1]]),
                                      _stage(c[1], [c[2], c[2]]), _stage(c[2], [c[3], c[3]]))
        self.embeddings = nn.Sequential(
            nn.Linear(c[3] * 6 * 4, hidden), nn.ReLU(True),
            nn.Linear(hidden, hidden), nn.ReLU(True),
            nn.Linear(hidden, 128), nn.ReLU(True))
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = torch.transpose(x, 1, 3)
        x = torch.transpose(x, 1, 2)
        x = x.contiguous()
        x = x.view(x.size(0), -1)  # NHWC order: (h, w, c), the channel fastest
        return self.classifier(self.embeddings(x))


def make(num_classes=10, width=0.125):
    return VGGishNHWC(num_classes, width)
