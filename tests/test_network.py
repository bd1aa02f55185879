import pytest
import torch
from torch import nn

from alexnet_pl.network import PAPER_INPUT_SIZE, SMALLEST_INPUT_SIZE, AlexNet


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_layer_output_shapes_at_227_follow_the_paper():
    network = AlexNet(init="pytorch").eval()
    x = torch.zeros(1, 3, PAPER_INPUT_SIZE, PAPER_INPUT_SIZE)
    shapes = []
    for layer in network.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            shapes.append(tuple(x.shape[1:]))
    assert shapes == [
        (96, 55, 55),  # conv1
        (96, 27, 27),  # pool1
        (256, 27, 27),  # conv2
        (256, 13, 13),  # pool2
        (384, 13, 13),  # conv3
        (384, 13, 13),  # conv4
        (256, 13, 13),  # conv5
        (256, 6, 6),  # pool5: 9216 values into the classifier
    ]
    with torch.no_grad():
        assert network(torch.zeros(2, 3, 227, 227)).shape == (2, 1000)


def test_one_tower_has_62_378_344_parameters():
    assert count_parameters(AlexNet(num_classes=1000, groups=1)) == 62_378_344


def test_two_towers_have_the_papers_60_965_224_parameters():
    assert count_parameters(AlexNet(num_classes=1000, groups=2)) == 60_965_224


def test_two_towers_keep_conv2_within_its_own_half():
    network = AlexNet(groups=2, init="pytorch")
    conv2 = network.features[4]
    x = torch.randn(1, 96, 27, 27)
    changed = x.clone()
    changed[:, :48] += 1.0  # only the first tower's conv1 maps
    with torch.no_grad():
        difference = (conv2(changed) - conv2(x)).abs().sum(dim=(0, 2, 3))
    assert (difference[:128] > 0).all()  # the first tower's conv2 sees the change
    assert (difference[128:] == 0).all()  # the second tower's does not


def test_smallest_input_is_67_pixels():
    network = AlexNet(num_classes=10).eval()
    with torch.no_grad():
        assert network(torch.zeros(1, 3, SMALLEST_INPUT_SIZE, SMALLEST_INPUT_SIZE)).shape == (1, 10)
        with pytest.raises(RuntimeError):
            network(torch.zeros(1, 3, SMALLEST_INPUT_SIZE - 1, SMALLEST_INPUT_SIZE - 1))


def test_paper_init_draws_weights_from_n_0_001_and_sets_biases_to_one_or_zero():
    torch.manual_seed(0)
    network = AlexNet(init="paper")
    convs = [m for m in network.features if isinstance(m, nn.Conv2d)]
    linears = [m for m in network.classifier if isinstance(m, nn.Linear)]
    for layer in convs + linears:
        assert layer.weight.mean().abs() < 2e-3
        assert layer.weight.std().item() == pytest.approx(0.01, rel=0.05)
    ones = [convs[1], convs[3], convs[4], linears[0], linears[1]]
    zeros = [convs[0], convs[2], linears[2]]
    assert all((layer.bias == 1).all() for layer in ones)
    assert all((layer.bias == 0).all() for layer in zeros)


def test_pytorch_init_keeps_torch_defaults():
    torch.manual_seed(0)
    conv1 = AlexNet(init="pytorch").features[0]
    # Kaiming-uniform bound for 3*11*11 inputs is about 0.05: far wider than N(0, 0.01).
    assert conv1.weight.abs().max() > 0.04
    assert not (conv1.bias == 0).all()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"groups": 3}, "model.groups=3"),
        ({"init": "xavier"}, "model.init='xavier'"),
        ({"fc_width": 0}, "model.fc_width=0 must be at least 1"),
    ],
)
def test_unsupported_options_are_named_in_the_error(arguments, message):
    with pytest.raises(ValueError, match=message):
        AlexNet(**arguments)


def test_dropout_masks_the_outputs_of_fc6_and_fc7_as_in_the_paper():
    """Section 4.2 / Caffe's bvlc_alexnet: fc6, relu6, drop6, fc7, relu7, drop7, fc8. The 9216 conv
    features reach fc6 unmasked; each mask covers the 4096 outputs of fc6 or of fc7."""
    torch.manual_seed(0)
    network = AlexNet(num_classes=10, init="pytorch").train()
    fc6, fc7, fc8 = [m for m in network.classifier if isinstance(m, nn.Linear)]
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    fc6.register_forward_hook(lambda m, i, o: seen.update(fc6=(i[0], o)))
    dropouts = [m for m in network.classifier if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 2
    for name, dropout in zip(("drop6", "drop7"), dropouts, strict=True):
        dropout.register_forward_hook(lambda m, i, o, name=name: seen.update({name: (i[0], o)}))
    x = torch.randn(4, 3, SMALLEST_INPUT_SIZE, SMALLEST_INPUT_SIZE)
    with torch.no_grad():
        features = torch.flatten(network.avgpool(network.features(x)), 1)
        logits = network(x)

        # A direct transcription of the paper, with the masks the two dropout layers drew.
        torch.testing.assert_close(seen["fc6"][0], features)  # no mask before fc6
        keep6 = seen["drop6"][1] != 0
        keep7 = seen["drop7"][1] != 0
        hidden6 = torch.relu(fc6(features))
        torch.testing.assert_close(seen["drop6"][0], hidden6)  # drop6 masks fc6's outputs
        hidden7 = torch.relu(fc7(hidden6 * keep6 / 0.5))
        torch.testing.assert_close(seen["drop7"][0], hidden7)  # drop7 masks fc7's outputs
        torch.testing.assert_close(logits, fc8(hidden7 * keep7 / 0.5))
    assert keep6.shape == keep7.shape == (4, 4096)
    for keep, hidden in ((keep6, hidden6), (keep7, hidden7)):
        dropped = (~keep & (hidden != 0)).sum() / (hidden != 0).sum()
        assert 0.4 < dropped < 0.6  # p=0.5 of the active units


def test_two_towers_normalise_responses_within_each_half():
    """groups=2: the LRN after conv1 equals nn.LocalResponseNorm on each tower's 48 maps alone,
    not one window over all 96 (which crosses between maps 47 and 48)."""
    torch.manual_seed(0)
    towers, one = AlexNet(groups=2, init="pytorch"), AlexNet(groups=1, init="pytorch")
    paper_lrn = nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=2.0)
    x = torch.rand(2, 3, 35, 35) * 255  # large responses, so the normalisation bends them
    with torch.no_grad():
        responses = towers.features[1](towers.features[0](x))
        per_half = torch.cat([paper_lrn(half) for half in responses.chunk(2, dim=1)], dim=1)
        towers_lrn, one_lrn = towers.features[2](responses), one.features[2](responses)
    torch.testing.assert_close(towers_lrn, per_half)
    torch.testing.assert_close(one_lrn, paper_lrn(responses))
    assert not torch.allclose(towers_lrn[:, 46:50], one_lrn[:, 46:50], rtol=1e-3)
    assert towers.features[6].groups == 2 and one.features[6].groups == 1  # the LRN after conv2


def test_fc_width_sets_the_units_of_fc6_and_fc7_only():
    network = AlexNet(num_classes=10, fc_width=256)
    fc6, fc7, fc8 = (m for m in network.classifier if isinstance(m, nn.Linear))
    assert (fc6.in_features, fc6.out_features) == (256 * 6 * 6, 256)
    assert (fc7.in_features, fc7.out_features) == (256, 256)
    assert (fc8.in_features, fc8.out_features) == (256, 10)
