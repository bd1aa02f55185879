"""AlexNet as in Krizhevsky, Sutskever & Hinton (2012), Figure 2: a plain nn.Module."""

from typing import Literal

import torch
from torch import nn

from alexnet_pl.errors import UserError
from alexnet_pl.lrn import LocalResponseNorm

# With 227x227 input every layer divides exactly and the last pool gives 6x6x256. The smallest input
# for which every pooling window still fits is 67x67 (it reaches the classifier as 1x1, which the
# adaptive pool spreads to 6x6); anything below that raises in the first layer that no longer fits.
PAPER_INPUT_SIZE = 227
SMALLEST_INPUT_SIZE = 67

Init = Literal["paper", "pytorch"]
Activation = Literal["relu", "tanh"]
Norm = Literal["lrn", "batch", "none"]
Pool = Literal["overlap", "plain"]
# The paper's kernels per convolutional layer (both towers together); model.width scales conv1 to
# conv4. Section 3.2, footnote: its one-GPU comparison net "has the same number of kernels as the
# two-GPU net in the final convolutional layer", so that both have about as many parameters (most
# are in fc6, which reads conv5).
CONV_CHANNELS = (96, 256, 384, 384, 256)
# Section 3.4: pooling windows of z x z pixels every s pixels. Overlapping (z=3, s=2) is the
# paper's; plain (z=2, s=2) is its comparison. Both give 27, 13 and 6 pixels at 227 (and 7, 3, 1
# at 67), so the classifier and the smallest input stay the same.
POOL_WINDOWS = {"overlap": (3, 2), "plain": (2, 2)}


def activation_layer(activation: Activation) -> nn.Module:
    # Section 3.1, Figure 1: ReLUs reach 25% training error on CIFAR-10 six times faster than tanh.
    if activation == "relu":
        return nn.ReLU(inplace=True)
    if activation == "tanh":
        return nn.Tanh()
    raise UserError(f"model.activation={activation!r} is not known: use 'relu' or 'tanh'")


def norm_layer(norm: Norm, channels: int, groups: int) -> nn.Module:
    """What follows the ReLUs of conv1 and conv2: the paper's response normalisation, BatchNorm
    in its place (what later networks use), or nothing (the paper's ablation: +1.4/1.2 points of
    top-1/top-5 error). nn.Identity keeps every later layer at its index in `features`."""
    if norm == "lrn":
        return local_response_norm(groups)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise UserError(f"model.norm={norm!r} is not known: use 'lrn', 'batch' or 'none'")


def pool_layer(pool: Pool) -> nn.MaxPool2d:
    if pool not in POOL_WINDOWS:
        raise UserError(f"model.pool={pool!r} is not known: use 'overlap' or 'plain'")
    size, stride = POOL_WINDOWS[pool]
    return nn.MaxPool2d(kernel_size=size, stride=stride)


def conv_channels(width: float, groups: int) -> list[int]:
    """The kernels of conv1..conv5, conv1..conv4 scaled by `width` (conv5 keeps the paper's 256),
    each divisible by the towers."""
    channels = [round(c * width) for c in CONV_CHANNELS[:4]] + [CONV_CHANNELS[4]]
    if width <= 0 or any(c < groups or c % groups for c in channels):
        raise UserError(
            f"model.width={width} gives {channels} kernels in conv1..conv5, which model.groups="
            f"{groups} towers cannot share evenly; use a width such as 1.0 or 0.5"
        )
    return channels


def local_response_norm(groups: int) -> LocalResponseNorm:
    # Paper, section 3.3: k=2, n=5, alpha=1e-4, beta=0.75. Like nn.LocalResponseNorm this divides
    # alpha by n (as cuda-convnet and Caffe do), so this is the convention the published models were
    # trained with, not the formula as printed in the paper. With two towers each GPU of the paper
    # normalised its own half of the maps: the window of 5 stops at the tower's edge.
    return LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0, groups=groups)


class AlexNet(nn.Module):
    """The 2012 network: five convolutional layers and three fully connected ones.

    groups=1 is one tower (62,378,344 parameters for 1000 classes). groups=2 is the paper's
    two-GPU connectivity: conv2, conv4 and conv5 see only their own tower's half of the previous
    layer, while conv3 and the fully connected layers see both (60,965,224 parameters), and the
    response normalisations after conv1 and conv2 work within each tower's half.

    The paper's ablations, each defaulting to the paper: `activation` (relu, tanh), `norm` (lrn,
    batch, none), `pool` (overlap, plain), `dropout`, and `width`, a factor on the kernels of conv1
    to conv4 (groups=1 with width=0.5 is section 3.2's "net with half as many kernels in each
    convolutional layer trained on one GPU", which kept conv5's 256, as its footnote says; 59.8M
    parameters against the towers' 61.0M). fc_width is the
    number of units of fc6 and fc7 (the paper's 4096, 94% of the parameters); fewer make a
    network for tests.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        groups: int = 1,
        dropout: float = 0.5,
        init: Init = "paper",
        fc_width: int = 4096,
        activation: Activation = "relu",
        norm: Norm = "lrn",
        pool: Pool = "overlap",
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if groups not in (1, 2):
            raise UserError(
                f"model.groups={groups} is not supported: use 1 (one tower) or 2 (the paper's "
                "two-GPU connectivity)"
            )
        if num_classes < 1:
            raise UserError(f"model.num_classes={num_classes} must be at least 1")
        if fc_width < 1:
            raise UserError(f"model.fc_width={fc_width} must be at least 1 (the paper: 4096)")
        c1, c2, c3, c4, c5 = conv_channels(width, groups)
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, kernel_size=11, stride=4),
            activation_layer(activation),
            norm_layer(norm, c1, groups),
            pool_layer(pool),  # the paper's overlapping pooling: z=3, s=2
            nn.Conv2d(c1, c2, kernel_size=5, padding=2, groups=groups),
            activation_layer(activation),
            norm_layer(norm, c2, groups),
            pool_layer(pool),
            nn.Conv2d(c2, c3, kernel_size=3, padding=1),  # the towers talk to each other here
            activation_layer(activation),
            nn.Conv2d(c3, c4, kernel_size=3, padding=1, groups=groups),
            activation_layer(activation),
            nn.Conv2d(c4, c5, kernel_size=3, padding=1, groups=groups),
            activation_layer(activation),
            pool_layer(pool),
        )
        # An identity at 227 px; lets smaller inputs (the demo, the tests) reach the classifier.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # Section 4.2: dropout on the outputs of the first two fully connected layers (Caffe's
        # bvlc_alexnet: fc6, relu6, drop6, fc7, relu7, drop7, fc8). torchvision drops out their
        # inputs instead (before fc6 and fc7), which also masks the 9216 conv features.
        self.classifier = nn.Sequential(
            nn.Linear(c5 * 6 * 6, fc_width),  # fc6
            activation_layer(activation),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),  # fc7
            activation_layer(activation),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, num_classes),  # fc8
        )
        if init == "paper":
            self.init_like_paper()
        elif init != "pytorch":
            raise UserError(f"model.init={init!r} is not known: use 'paper' or 'pytorch'")

    def init_like_paper(self) -> None:
        """Section 5: weights from N(0, 0.01); biases 1 in conv2, conv4, conv5 and the hidden fully
        connected layers (it gives ReLUs positive inputs early on), 0 in the others."""
        convs = [m for m in self.features if isinstance(m, nn.Conv2d)]
        linears = [m for m in self.classifier if isinstance(m, nn.Linear)]
        biased_to_one = {convs[1], convs[3], convs[4], linears[0], linears[1]}
        for layer in convs + linears:
            nn.init.normal_(layer.weight, mean=0.0, std=0.01)
            nn.init.constant_(layer.bias, 1.0 if layer in biased_to_one else 0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.features(images)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)
