"""A DCGAN-style discriminator for 32x32 RGB images with weight norm (Salimans & Kingma 2016)
on every conv and linear layer and no BatchNorm: 3x3 and 4x4/stride-2 convs with LeakyReLU(0.1)
(32 -> 16 -> 8 -> 4), flatten, one linear layer to ``num_classes`` scores. Output:
(N, num_classes).

``legacy=False`` uses ``torch.nn.utils.parametrizations.weight_norm``
(``conv.parametrizations.weight.original0`` is g, ``original1`` is v); ``legacy=True`` the older
hook-based ``torch.nn.utils.weight_norm`` (``conv.weight_g``, ``conv.weight_v``)."""
import torch
import torch.nn as nn


class WNDiscriminator(nn.Module):
    def __init__(self, num_classes=1, legacy=False, widths=(8, 16, 32)):
        super().__init__()
        wn = torch.nn.utils.weight_norm if legacy else nn.utils.parametrizations.weight_norm
        c1, c2, c3 = widths
        self.main = nn.Sequential(
            wn(nn.Conv2d(3, c1, 3, 1, 1)), nn.LeakyReLU(0.1),
            wn(nn.Conv2d(c1, c1, 4, 2, 1)), nn.LeakyReLU(0.1),       # 16x16
            wn(nn.Conv2d(c1, c2, 3, 1, 1)), nn.LeakyReLU(0.1),
            wn(nn.Conv2d(c2, c2, 4, 2, 1)), nn.LeakyReLU(0.1),       # 8x8
            wn(nn.Conv2d(c2, c3, 3, 1, 1)), nn.LeakyReLU(0.1),
            wn(nn.Conv2d(c3, c3, 4, 2, 1)), nn.LeakyReLU(0.1))       # 4x4
        self.linear = wn(nn.Linear(c3 * 4 * 4, num_classes))

    def forward(self, x):
        return self.linear(torch.flatten(self.main(x), 1))


def make(num_classes=1, legacy=False):
    return WNDiscriminator(num_classes, legacy)
