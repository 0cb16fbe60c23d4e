"""A small U-Net (Ronneberger et al. 2015) for per-pixel classification of 32x32 RGB images.

* Encoder: two conv-BN-ReLU blocks at each of 32x32 and 16x16, a 2x2 max pool after each, then a
  bottleneck block at 8x8.
* Decoder: ``nn.ConvTranspose2d(c, c // 2, 2, stride=2)`` upsampling, ``torch.cat([up, skip], 1)``
  with the encoder map of the same scale (16x16, then 32x32) and a conv block after each concat.
* Output: per-pixel logits from a 1x1 conv, shape (N, num_classes, 32, 32).
"""
import torch
import torch.nn as nn


def double_conv(cin, cout):
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class UNet(nn.Module):
    def __init__(self, num_classes=3, base=8):
        super().__init__()
        c1, c2, c3 = base, base * 2, base * 4
        self.enc1 = double_conv(3, c1)            # 32x32
        self.enc2 = double_conv(c1, c2)           # 16x16
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = double_conv(c2, c3)     # 8x8
        self.up2 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = double_conv(c2 + c2, c2)      # 16x16
        self.up1 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = double_conv(c1 + c1, c1)      # 32x32
        self.head = nn.Conv2d(c1, num_classes, 1)

    def forward(self, x):
        s1 = self.enc1(x)
        s2 = self.enc2(self.pool(s1))
        b = self.bottleneck(self.pool(s2))
        d2 = self.dec2(torch.cat([self.up2(b), s2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], 1))
        return self.head(d1)


def make(num_classes=3, base=8):
    return UNet(num_classes, base)
