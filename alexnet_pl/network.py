"""AlexNet as in Krizhevsky, Sutskever & Hinton (2012), Figure 2: a plain nn.Module."""

from typing import Literal

import torch
from torch import nn

from alexnet_pl.lrn import LocalResponseNorm

# With 227x227 input every layer divides exactly and the last pool gives 6x6x256. The smallest input
# for which every pooling window still fits is 67x67 (it reaches the classifier as 1x1, which the
# adaptive pool spreads to 6x6); anything below that raises in the first layer that no longer fits.
PAPER_INPUT_SIZE = 227
SMALLEST_INPUT_SIZE = 67

Init = Literal["paper", "pytorch"]


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

    fc_width is the number of units of fc6 and fc7 (the paper's 4096, 94% of the parameters);
    fewer make a network for ablations and for tests that need a whole run, not its size.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        groups: int = 1,
        dropout: float = 0.5,
        init: Init = "paper",
        fc_width: int = 4096,
    ) -> None:
        super().__init__()
        if groups not in (1, 2):
            raise ValueError(
                f"model.groups={groups} is not supported: use 1 (one tower) or 2 (the paper's "
                "two-GPU connectivity)"
            )
        if num_classes < 1:
            raise ValueError(f"model.num_classes={num_classes} must be at least 1")
        if fc_width < 1:
            raise ValueError(f"model.fc_width={fc_width} must be at least 1 (the paper: 4096)")
        self.features = nn.Sequential(
            nn.Conv2d(3, 96, kernel_size=11, stride=4),
            nn.ReLU(inplace=True),
            local_response_norm(groups),
            nn.MaxPool2d(kernel_size=3, stride=2),  # overlapping pooling: z=3, s=2
            nn.Conv2d(96, 256, kernel_size=5, padding=2, groups=groups),
            nn.ReLU(inplace=True),
            local_response_norm(groups),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 384, kernel_size=3, padding=1),  # the towers talk to each other here
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 384, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, kernel_size=3, padding=1, groups=groups),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        # An identity at 227 px; lets smaller inputs (the demo, the tests) reach the classifier.
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        # Section 4.2: dropout on the outputs of the first two fully connected layers (Caffe's
        # bvlc_alexnet: fc6, relu6, drop6, fc7, relu7, drop7, fc8). torchvision drops out their
        # inputs instead (before fc6 and fc7), which also masks the 9216 conv features.
        self.classifier = nn.Sequential(
            nn.Linear(256 * 6 * 6, fc_width),  # fc6
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, fc_width),  # fc7
            nn.ReLU(inplace=True),
            nn.Dropout(p=dropout),
            nn.Linear(fc_width, num_classes),  # fc8
        )
        if init == "paper":
            self.init_like_paper()
        elif init != "pytorch":
            raise ValueError(f"model.init={init!r} is not known: use 'paper' or 'pytorch'")

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
