"""ResNet-50 (He et al. 2016), written here: torchvision does not import in this project and timm 1.0 imports
torchvision (timm/layers/create_norm.py), so neither can provide it.

The layout and `state_dict()` keys are torchvision's `resnet50` (v1.5: the stride on the 3x3 conv of each
bottleneck): conv1, bn1, layer1..layer4 of Bottleneck blocks (conv1/bn1, conv2/bn2, conv3/bn3, downsample.0/1),
fc. With `width=64` and 1000 classes it has torchvision's 25,557,032 parameters, so torchvision or timm
weights saved elsewhere load with `load_state_dict`. `width` scales every layer (tests and CPU runs use 8-32).
The study's distillation notebook used a ResNet-50 teacher; this is the teacher family for `--teacher`.
"""

from __future__ import annotations

import torch
from torch import nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, width: int = 64):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width
        for i, n in enumerate(blocks):
            channels, stride = width * 2**i, 1 if i == 0 else 2
            layer = []
            for j in range(n):
                layer.append(Bottleneck(in_channels, channels, stride if j == 0 else 1))
                in_channels = channels * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        self.num_blocks = len(blocks)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        for i in range(self.num_blocks):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(num_classes: int, width: int = 64) -> ResNet:
    return ResNet((3, 4, 6, 3), num_classes=num_classes, width=width)
