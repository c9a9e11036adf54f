"""A BER sweep slow enough to be killed mid-campaign (tests/test_scaleout.py): run as
``python tests/scaleout_job.py CHECKPOINT``; :func:`make` builds the same model and data in the test."""

from __future__ import annotations

import sys
import time

import torch
from torch import Tensor, nn

BERS = [1e-3, 1e-2]
TRIALS = 20


class Slow(nn.Module):
    """A small MLP whose forward pass takes a few milliseconds, so that a kill lands mid-campaign."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))

    def forward(self, x: Tensor) -> Tensor:
        time.sleep(0.01)
        return self.body(x)


def make() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    m = Slow().eval()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m.body(x).argmax(1)
    return m, [(x, y)]


def sweep(checkpoint: str | None, executor: object = None):
    from bitlab.campaigns import ber_sweep

    m, data = make()
    return ber_sweep(m, data, BERS, trials=TRIALS, seed=5, progress=False, checkpoint=checkpoint, executor=executor)


if __name__ == "__main__":
    torch.set_num_threads(1)
    import scaleout_job  # the model's class as the test sees it (scaleout_job.Slow, not __main__.Slow)

    scaleout_job.sweep(sys.argv[1])


def fraction_above(outputs: Tensor, targets: Tensor) -> Tensor:
    """A metric whose code holds a generator expression (a nested code object): its description must be
    the same in every process."""
    return torch.stack([(o > 0).float().mean() for o in outputs]) + 0 * sum(t for t in targets[:1])
