"""An FCN-8s-style segmenter (Long et al. 2015) on a small VGG-like encoder, for 32x32 RGB images.

* Encoder: five conv-BN-ReLU stages, each ending in a 2x2 max pool (pool3 at 4x4, pool4 at 2x2,
  pool5 at 1x1), then a 1x1 "fc6/fc7" conv pair.
* Score fusion: 1x1 score convs on pool3, pool4 and the fc7 features;
  ``F.interpolate(..., mode="bilinear", align_corners=False)`` brings the coarser score up to
  the next one's size and they are added (fc7 -> pool4 -> pool3), and the sum is upsampled 8x.
* Output: per-pixel logits of shape (N, num_classes, 32, 32).
"""
import torch.nn as nn
import torch.nn.functional as F


def stage(cin, cout, convs=1):
    layers = []
    for i in range(convs):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1), nn.BatchNorm2d(cout),
                   nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2))


class FCN8s(nn.Module):
    def __init__(self, num_classes=5):
        super().__init__()
        self.stage1 = stage(3, 8)            # 16x16
        self.stage2 = stage(8, 16)           # 8x8
        self.stage3 = stage(16, 24, 2)       # 4x4   pool3
        self.stage4 = stage(24, 32, 2)       # 2x2   pool4
        self.stage5 = stage(32, 32, 2)       # 1x1   pool5
        self.fc = nn.Sequential(nn.Conv2d(32, 32, 1), nn.ReLU(inplace=True), nn.Dropout2d(),
                                nn.Conv2d(32, 32, 1), nn.ReLU(inplace=True), nn.Dropout2d())
        self.score_fr = nn.Conv2d(32, num_classes, 1)
        self.score_pool4 = nn.Conv2d(32, num_classes, 1)
        self.score_pool3 = nn.Conv2d(24, num_classes, 1)

    def forward(self, x):
        size = x.shape[-2:]
        pool3 = self.stage3(self.stage2(self.stage1(x)))
        pool4 = self.stage4(pool3)
        fc7 = self.fc(self.stage5(pool4))
        score = self.score_fr(fc7)
        score = F.interpolate(score, size=pool4.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool4(pool4)
        score = F.interpolate(score, size=pool3.shape[-2:], mode="bilinear", align_corners=False)
        score = score + self.score_pool3(pool3)
        return F.interpolate(score, size=size, mode="bilinear", align_corners=False)


def make(num_classes=5):
    return FCN8s(num_classes)
