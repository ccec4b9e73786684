"""The trigger-inversion baselines' building blocks: the generator must keep the official architecture."""

from __future__ import annotations

import torch
from torch import nn

from banscan.detectors._inversion import UNet, unit_tanh


def test_unet_official_structure():
    u = UNet(3, 32, 4)
    # The official network's parameters minus its unused bilinear branch (14,121,411 - 3,134,400).
    assert sum(p.numel() for p in u.parameters()) == 10_987_011
    mods = list(u.modules())
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in mods)
    norms = [m for m in mods if isinstance(m, nn.InstanceNorm2d)]
    assert len(norms) == 18 and all(m.affine and not m.track_running_stats for m in norms)
    ups = [m for m in mods if isinstance(m, nn.ConvTranspose2d)]
    assert [(m.in_channels, m.out_channels, m.stride, m.output_padding) for m in ups] == [
        (512, 512, (2, 2), (1, 1)), (256, 256, (2, 2), (1, 1)), (128, 128, (2, 2), (1, 1)), (64, 64, (2, 2), (1, 1))]
    convs = [m for m in mods if type(m) is nn.Conv2d]
    assert len(convs) == 19 and all(m.bias is not None for m in convs)
    enc_widths = [m.out_channels for m in u.enc.modules() if type(m) is nn.Conv2d]
    assert enc_widths == [32, 32, 64, 64, 128, 128, 256, 256]
    seen = {}
    u.bottleneck.register_forward_hook(lambda m, i, o: seen.update(b=o.shape))
    out = u(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 3, 32, 32) and seen["b"] == (2, 512, 2, 2)


def test_unet_per_sample_and_leaky():
    torch.manual_seed(0)
    u = UNet(3, 4, 2).eval()
    x = torch.randn(3, 3, 16, 16)
    # Instance normalisation: a sample's output does not depend on the rest of the batch.
    assert torch.allclose(u(x)[:1], u(x[:1]), atol=1e-5)
    # LeakyReLU, not ReLU: negative pre-activations still pass gradient.
    act = u.enc[0].norm1(u.enc[0].conv1(x))
    assert (torch.nn.functional.leaky_relu(act) < 0).any()
    # Odd sizes are padded and cropped back; residual starts at the identity.
    r = UNet(3, 4, 3, residual=True)
    y = torch.randn(1, 3, 28, 30)
    assert torch.equal(r(y), y)


def test_unit_tanh_range():
    t = torch.tensor([-50.0, 0.0, 50.0])
    m = unit_tanh(t)
    assert 0 <= float(m[0]) < 1e-6 and float(m[1]) == 0.5 and 1 - 1e-6 < float(m[2]) <= 1
