"""A CRNN-style text-line recognizer (Shi et al. 2015): 1x32x128 grey line images, VGG features
that bring the height to 1, the height squeezed out, a two-layer bidirectional LSTM over the 32
columns and a per-column linear layer (logits of shape (N, 32, classes), as CTC takes them
time-major after a transpose). ``--in-channels 1 --input-size 32x128``. ``rnn``: ``lstm``,
``gru`` or ``rnn``; ``batch_first`` and ``bidirectional`` as in torch.nn."""
import torch.nn as nn

_RNN = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class CRNN(nn.Module):
    def __init__(self, num_classes=37, width=0.125, rnn="lstm", bidirectional=True,
                 batch_first=True, hidden=32):
        super().__init__()
        c = [max(1, int(v * width)) for v in (64, 128, 256, 256, 512, 512)]
        self.cnn = nn.Sequential(
            nn.Conv2d(1, c[0], 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),          # 16x64
            nn.Conv2d(c[0], c[1], 3, padding=1), nn.ReLU(True), nn.MaxPool2d(2),       # 8x32
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.BatchNorm2d(c[2]), nn.ReLU(True),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(True), nn.MaxPool2d((2, 1)),  # 4x32
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.BatchNorm2d(c[4]), nn.ReLU(True),
            nn.Conv2d(c[4], c[5], 3, padding=1), nn.ReLU(True), nn.MaxPool2d((4, 1)))  # 1x32
        self.batch_first = batch_first
        self.rnn = _RNN[rnn](c[5], hidden, num_layers=2, bidirectional=bidirectional,
                             batch_first=batch_first)
        self.fc = nn.Linear(hidden * (2 if bidirectional else 1), num_classes)

    def forward(self, x):
        x = self.cnn(x).squeeze(2)                        # N x C x W
        x = x.permute(0, 2, 1) if self.batch_first else x.permute(2, 0, 1)
        x, _ = self.rnn(x)
        x = self.fc(x)                                    # per column
        return x if self.batch_first else x.transpose(0, 1)


def make(num_classes=37, width=0.125, rnn="lstm", bidirectional=True, batch_first=True):
    return CRNN(num_classes, width, rnn, bidirectional, batch_first)
