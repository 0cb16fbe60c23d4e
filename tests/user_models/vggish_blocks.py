"""Building blocks of vggish.py, a sibling module it imports as ``from vggish_blocks import ...``
(the way research code is laid out): tp-vgg makes a model file's folder importable while it runs."""
import torch.nn as nn


def conv_stage(c_in, widths):
    """3x3 conv + ReLU for each width, then a 2x2 max-pool (VGGish has no BatchNorm)."""
    layers = []
    for c_out in widths:
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(inplace=True)]
        c_in = c_out
    return nn.Sequential(*layers, nn.MaxPool2d(2))
