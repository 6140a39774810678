"""SimCLR (Chen et al. 2020) pieces: the galaxy views, the projection head and the NT-Xent loss.

Written here rather than taken from `lightly` (the issue's choice): lightly 1.6.0 declares torchvision a hard
dependency and `lightly.loss` / `lightly.models.modules` import it (lightly/loss/dense_relational_utils.py),
and torchvision does not import in this project. The head and loss follow lightly's `SimCLRProjectionHead`
(Linear, BatchNorm, ReLU, Linear to 128) and `NTXentLoss` (temperature 0.5, the other views of the batch
as negatives).

Views are galaxy-appropriate and made per batch in torch: any rotation, a random flip, a small crop (zoom
1-1.25 with a small shift), a PSF jitter (Gaussian blur, sigma 0-1.5 px), a flux scale (0.8-1.25, the same
in every band: colour is a morphology cue, so no colour jitter and no inversion) and sky noise.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from galaxyvit.preprocess import Preprocessing

MAX_ZOOM = 1.25
MAX_BLUR = 1.5  # pixels, sigma of the extra PSF
FLUX_SCALE = (0.8, 1.25)
MAX_NOISE = 0.04  # sky noise sigma, in units of the full [0, 1] range


class ProjectionHead(nn.Sequential):
    """SimCLR's projection MLP: Linear(d, d), BatchNorm, ReLU, Linear(d, 128)."""

    def __init__(self, input_dim: int, hidden_dim: int | None = None, output_dim: int = 128):
        hidden_dim = hidden_dim or input_dim
        super().__init__(
            nn.Linear(input_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, output_dim),
        )


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """Normalised-temperature cross-entropy of two views' projections (B, D) each: for every one of the 2B
    projections, the other view of the same image is the positive and the 2B - 2 other projections the
    negatives; the mean over the 2B."""
    z = F.normalize(torch.cat((z0, z1)).float(), dim=1)
    n = z0.shape[0]
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))  # a projection is not its own negative
    targets = torch.cat((torch.arange(n, 2 * n), torch.arange(n))).to(z.device)
    return F.cross_entropy(similarity, targets)


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each image with its own sigma (B,) in pixels (separable, 7 taps)."""
    b, c, h, w = x.shape
    taps = torch.arange(-3, 4, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(taps[None] ** 2) / (2 * sigma[:, None].clamp_min(1e-3) ** 2))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (B*C, 7)
    y = x.reshape(1, b * c, h, w)
    y = F.conv2d(F.pad(y, (3, 3, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, 3, 3), mode="reflect"), kernel[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def galaxy_views(crops: torch.Tensor, prep: Preprocessing, generator: torch.Generator) -> torch.Tensor:
    """One random view of each (B, H, W, 3) uint8 crop: the normalised (B, 3, H, W) float32 model input."""
    x = crops.permute(0, 3, 1, 2).float() / 255
    b, device = x.shape[0], x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(b, generator=generator)).to(device)

    angle = uniform(0, 2 * math.pi)
    flip = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    zoom = uniform(1.0, MAX_ZOOM)
    room = 1 - 1 / zoom  # how far the zoomed window can move and stay inside the crop
    shift_x, shift_y = uniform(-1, 1) * room, uniform(-1, 1) * room
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        (torch.stack((cos * flip, -sin, shift_x), 1), torch.stack((sin * flip, cos, shift_y), 1)), 1
    )  # (B, 2, 3): output grid -> input coordinates
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = _blur(x, uniform(0, MAX_BLUR))
    x = x * uniform(*FLUX_SCALE)[:, None, None, None]
    noise = torch.randn(x.shape, generator=generator).to(device)
    x = (x + noise * uniform(0, MAX_NOISE)[:, None, None, None]).clamp(0, 1)
    mean = torch.tensor(prep.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


class SimCLR(nn.Module):
    """The encoder (a classifier whose last Linear is an Identity) and the projection head."""

    def __init__(self, encoder: nn.Module, feature_dim: int, output_dim: int = 128):
        super().__init__()
        self.encoder = encoder
        self.projection = ProjectionHead(feature_dim, output_dim=output_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.projection(self.encoder(images))
