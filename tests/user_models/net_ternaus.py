"""A TernausNet11-style U-Net (Iglovikov & Shvets 2018): the encoder is torchvision's
``vgg11(weights=None).features`` sliced into stages as TernausNet11 slices it (conv1, conv2,
conv3s, conv4s, conv5s, a shared 2x2 max pool between them), the decoder is TernausNet's
``DecoderBlock`` (conv-ReLU then ``nn.ConvTranspose2d(…, 3, stride=2, padding=1,
output_padding=1)``-ReLU) with ``torch.cat`` of the encoder features of the same scale before
each block. ``num_filters`` sets the decoder widths (4 here, TernausNet uses 32); the encoder
keeps vgg11's widths (64 to 512): about 10.3M parameters, 9.2M of them in the encoder.

A 32x32 RGB input goes down to 1x1 at the centre; the output is per-pixel logits of shape
(N, num_classes, 32, 32).
"""
import torch
import torch.nn as nn
import torchvision


def conv_relu(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    def __init__(self, cin, cmid, cout):
        super().__init__()
        self.block = nn.Sequential(
            conv_relu(cin, cmid),
            nn.ConvTranspose2d(cmid, cout, 3, stride=2, padding=1, output_padding=1),
            nn.ReLU(inplace=True))

    def forward(self, x):
        return self.block(x)


class TernausNet11(nn.Module):
    def __init__(self, num_classes=1, num_filters=4):
        super().__init__()
        nf = num_filters
        self.pool = nn.MaxPool2d(2, 2)
        self.encoder = torchvision.models.vgg11(weights=None).features
        self.relu = self.encoder[1]
        self.conv1 = self.encoder[0]                                    # 64
        self.conv2 = self.encoder[3]                                    # 128
        self.conv3s = self.encoder[6]                                   # 256
        self.conv3 = self.encoder[8]
        self.conv4s = self.encoder[11]                                  # 512
        self.conv4 = self.encoder[13]
        self.conv5s = self.encoder[16]                                  # 512
        self.conv5 = self.encoder[18]

        e1, e2, e3, e4, e5 = 64, 128, 256, 512, 512   # vgg11's widths (nf=32: nf * 2 ... nf * 16)
        self.center = DecoderBlock(e5, nf * 8 * 2, nf * 8)
        self.dec5 = DecoderBlock(e5 + nf * 8, nf * 8 * 2, nf * 8)
        self.dec4 = DecoderBlock(e4 + nf * 8, nf * 8 * 2, nf * 4)
        self.dec3 = DecoderBlock(e3 + nf * 4, nf * 4 * 2, nf * 2)
        self.dec2 = DecoderBlock(e2 + nf * 2, nf * 2 * 2, nf)
        self.dec1 = conv_relu(e1 + nf, nf)
        self.final = nn.Conv2d(nf, num_classes, 1)

    def forward(self, x):
        conv1 = self.relu(self.conv1(x))                                # 32
        conv2 = self.relu(self.conv2(self.pool(conv1)))                 # 16
        conv3s = self.relu(self.conv3s(self.pool(conv2)))               # 8
        conv3 = self.relu(self.conv3(conv3s))
        conv4s = self.relu(self.conv4s(self.pool(conv3)))               # 4
        conv4 = self.relu(self.conv4(conv4s))
        conv5s = self.relu(self.conv5s(self.pool(conv4)))               # 2
        conv5 = self.relu(self.conv5(conv5s))

        center = self.center(self.pool(conv5))                          # 1 -> 2
        dec5 = self.dec5(torch.cat([center, conv5], 1))                 # 2 -> 4
        dec4 = self.dec4(torch.cat([dec5, conv4], 1))                   # 4 -> 8
        dec3 = self.dec3(torch.cat([dec4, conv3], 1))                   # 8 -> 16
        dec2 = self.dec2(torch.cat([dec3, conv2], 1))                   # 16 -> 32
        dec1 = self.dec1(torch.cat([dec2, conv1], 1))                   # 32
        return self.final(dec1)


def make(num_classes=1, num_filters=4):
    return TernausNet11(num_classes, num_filters)
