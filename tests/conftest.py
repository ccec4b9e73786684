"""Shared fixtures: tiny synthetic data and tiny trained models (a clean one and a BadNets-backdoored twin).

Everything is session-scoped and CPU-only; the two models train in a few seconds each.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from banscan.data import ImageData
from banscan.models import create_model
from banscan.synthetic import make_synthetic
from banscan.train import TrainConfig, accuracy, predict, train_model

# The test machines are small and shared: one intra-op thread is several times faster than oversubscribing.
torch.set_num_threads(int(os.environ.get("BANSCAN_TEST_THREADS", "1")))
# The tiny models' training seed. Their weights also depend on the CPU's floating-point path, so the efficacy
# checks must hold for any seed: run the suite with a few values to check that they do not rest on one lucky model.
TINY_SEED = int(os.environ.get("BANSCAN_TEST_SEED", "0"))

TINY_CLASSES = 5
TINY_SIZE = 16
TINY_TARGET = 3
TINY_ARCH = ("resnet18", {"base_width": 8})


def badnets_patch(x01: torch.Tensor) -> torch.Tensor:
    """A 4x4 black-and-white checkerboard in the bottom-right corner (the tiny models' trigger)."""
    x = x01.clone()
    yy, xx = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    patch = ((yy + xx) % 2).to(x.dtype).to(x.device)
    x[..., -5:-1, -5:-1] = patch
    return x


def badnets_hook(target: int, every: int = 3):
    """Poison every ``every``-th training image (by dataset index): patch it and relabel it ``target``."""

    def hook(x01: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, gen: torch.Generator):
        sel = (idx % every == 0).to(x01.device)
        x01 = torch.where(sel[:, None, None, None], badnets_patch(x01), x01)
        y = torch.where(sel, torch.full_like(y, target), y)
        return x01, y

    return hook


@dataclass
class TinyZoo:
    clean: nn.Module
    backdoored: nn.Module
    data: ImageData          # the defender's clean data (held out from training)
    target: int
    clean_acc: float
    backdoored_acc: float
    asr: float


@pytest.fixture(scope="session")
def tiny_data() -> ImageData:
    return make_synthetic(600, TINY_CLASSES, TINY_SIZE, seed=1)


@pytest.fixture(scope="session")
def tiny_zoo(tiny_data: ImageData) -> TinyZoo:
    train = make_synthetic(1000, TINY_CLASSES, TINY_SIZE, seed=0)
    cfg = TrainConfig(epochs=5, batch_size=64, lr=0.1, seed=TINY_SEED, amp=False, channels_last=False)
    arch, kw = TINY_ARCH
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        clean = create_model(arch, TINY_CLASSES, **kw)
        bd = create_model(arch, TINY_CLASSES, **kw)
    train_model(clean, train, cfg)
    train_model(bd, train, cfg, batch_hook=badnets_hook(TINY_TARGET))
    clean.eval()
    bd.eval()
    nontarget = tiny_data.subset(torch.nonzero(tiny_data.y != TINY_TARGET).flatten())
    pred = predict(bd, nontarget, transform=badnets_patch)
    asr = float((pred == TINY_TARGET).float().mean())
    return TinyZoo(clean=clean, backdoored=bd, data=tiny_data, target=TINY_TARGET,
                   clean_acc=accuracy(clean, tiny_data), backdoored_acc=accuracy(bd, tiny_data), asr=asr)


@pytest.fixture(scope="session")
def ray_local():
    """A 2-CPU local Ray instance for the whole session; its workers get this checkout's banscan and the tests'
    task functions (tests/_ray_jobs.py). Skips where Ray is not installed."""
    ray = pytest.importorskip("ray")
    from banscan.distributed import _package_dir

    jobs = os.path.join(os.path.dirname(__file__), "_ray_jobs.py")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"py_modules": [_package_dir(), jobs]})
    yield ray
    ray.shutdown()
