"""VGGish-style audio model (AudioSet's VGGish: 1x96x64 log-mel patches, 96 frames x 64 mel bands):
``--in-channels 1 --input-size 96x64``. Four conv stages (96x64 -> 6x4), flatten, two hidden
layers and the embedding, then a classifier. The stages come from a sibling file
(``vggish_blocks.py``). ``width`` scales the channels (1.0: VGGish's 64-128-256-512, 4096-wide
hidden layers; the tests use 0.125)."""
import torch
import torch.nn as nn
from vggish_blocks import conv_stage


class VGGish(nn.Module):
    def __init__(self, num_classes=10, width=0.125, embedding=128):
        super().__init__()
        c = [max(1, int(v * width)) for v in (64, 128, 256, 512)]
        hidden = max(1, int(4096 * width / 8))
        self.features = nn.Sequential(conv_stage(1, [c[0]]), conv_stage(c[0], [c[1]]),
                                      conv_stage(c[1], [c[2], c[2]]), conv_stage(c[2], [c[3], c[3]]))
        self.embeddings = nn.Sequential(
            nn.Linear(c[3] * 6 * 4, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, embedding), nn.ReLU(inplace=True))
        self.classifier = nn.Linear(embedding, num_classes)

    def forward(self, x):
        x = self.features(x)
        x = torch.flatten(x, 1)  # NCHW order (torchvggish's TF-order flatten: see README)
        return self.classifier(self.embeddings(x))


def make(num_classes=10, width=0.125):
    return VGGish(num_classes, width)
