"""The textbook VGG: Sequential features (conv-BN-ReLU, max-pool) and a Linear head on the
flattened 4x4 map, flattened with ``x.view(x.size(0), -1)``."""
import torch.nn as nn


class SeqLinearVGG(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        cfg, layers, c_in = [8, "M", 16, "M", 16, "M"], [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c_in, v, 3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c_in = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(16 * 4 * 4, 32), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(32, 32), nn.ReLU(inplace=True), nn.Dropout(0.5),
            nn.Linear(32, num_classes))

    def forward(self, x):
        x = self.features(x)
        x = x.view(x.size(0), -1)
        return self.classifier(x)


def make(num_classes=10):
    return SeqLinearVGG(num_classes)
