"""DCGAN for 28×28 chest X-rays: the two networks, seeded sampling, grids, the generator checkpoint, and its diagnostics.

Training (rlhflab/gan/training.py), evaluation (eval/gan.py) and the app all use these functions.
The diagnostics need no downloaded network: pixel-space diversity, MS-SSIM, nearest-training-image
distances, and a Fréchet distance in the features of a small classifier trained here on the same data."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhflab.errors import UserError
from rlhflab.models.modes import evaluating
from rlhflab.store.checkpoints import resolve_checkpoint

GENERATOR_FILE = "model.safetensors"


CONFIG_FILE = "config.json"


DIAGNOSTICS_FILE = "diagnostics.json"


GRID_FILE = "grid.png"


GRID_IMAGES = 32  # an 8×4 grid


class Generator(nn.Module):
    """latent (N×latent_dim[×1×1]) -> image N×1×28×28 in [-1, 1]: transposed convolutions 1→7→14→28."""

    def __init__(self, latent_dim: int = 100, width: int = 64):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        self.net = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 4 * width, 7, 1, 0, bias=False),  # 1×1 -> 7×7
            nn.BatchNorm2d(4 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(4 * width, 2 * width, 4, 2, 1, bias=False),  # -> 14×14
            nn.BatchNorm2d(2 * width),
            nn.ReLU(True),
            nn.ConvTranspose2d(2 * width, 1, 4, 2, 1, bias=False),  # -> 28×28
            nn.Tanh(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z.view(z.size(0), self.latent_dim, 1, 1))


class Discriminator(nn.Module):
    """image N×1×28×28 -> probability of "real" N: four strided convolutions 28→14→7→4→1."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.width = width
        self.net = nn.Sequential(
            nn.Conv2d(1, width, 4, 2, 1, bias=False),  # -> 14×14 (no batch norm on the input layer, as in DCGAN)
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False),  # -> 7×7
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(2 * width, 4 * width, 3, 2, 1, bias=False),  # -> 4×4
            nn.BatchNorm2d(4 * width),
            nn.LeakyReLU(0.2, True),
            nn.Conv2d(4 * width, 1, 4, 1, 0, bias=False),  # -> 1×1
            nn.Sigmoid(),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).view(-1)


def dcgan_weights_init(module: nn.Module) -> None:
    """Radford et al. 2016: convolutions N(0, 0.02); batch-norm scale N(1, 0.02), shift 0. Use with .apply()."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train_step(generator: Generator, discriminator: Discriminator, opt_g, opt_d, real: torch.Tensor) -> torch.Tensor:
    """One DCGAN update on a batch of real images: the discriminator, then the generator (non-saturating loss).

    Returns the detached [d_loss, g_loss, D(x), D(G(z))] — D(·) being the mean probability of "real".
    """
    batch = real.size(0)
    ones = torch.ones(batch, device=real.device)
    zeros = torch.zeros(batch, device=real.device)
    fake = generator(torch.randn(batch, generator.latent_dim, device=real.device))
    # discriminator: maximise log D(x) + log(1 - D(G(z)))
    d_real, d_fake = discriminator(real), discriminator(fake.detach())
    d_loss = F.binary_cross_entropy(d_real, ones) + F.binary_cross_entropy(d_fake, zeros)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    # generator: maximise log D(G(z)) against the updated discriminator, whose own gradients are not needed
    discriminator.requires_grad_(False)
    g_loss = F.binary_cross_entropy(discriminator(fake), ones)
    opt_g.zero_grad(set_to_none=True)
    g_loss.backward()
    opt_g.step()
    discriminator.requires_grad_(True)
    return torch.stack([d_loss.detach(), g_loss.detach(), d_real.detach().mean(), d_fake.detach().mean()])


def sample_latents(seed: int, n: int, latent_dim: int = 100) -> torch.Tensor:
    """n standard-normal latents from their own seeded generator (the global RNG is untouched).

    numpy's generator draws sequentially, so the first k latents of seed s are the same for every n
    (torch.randn redraws the tail of a tensor, so its prefixes change with n).
    """
    return torch.from_numpy(np.random.default_rng(int(seed)).standard_normal((n, latent_dim), dtype=np.float32))


@torch.no_grad()
def generate(generator: Generator, latents: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Images for the given latents with batch norm in inference mode, so image i depends only on latent i."""
    with evaluating(generator):
        device = next(generator.parameters()).device
        out = [generator(z.to(device)).cpu() for z in latents.split(batch_size)]
    return torch.cat(out)


def sample_images(generator: Generator, seed: int, n: int = GRID_IMAGES) -> torch.Tensor:
    """n images N×1×28×28 in [-1, 1]; the same seed always gives the same images."""
    return generate(generator, sample_latents(seed, n, generator.latent_dim))


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation: stays at the norm Gaussian latents have, unlike a straight line through 0."""
    cos = (a * b).sum() / (a.norm() * b.norm())
    omega = torch.arccos(cos.clamp(-1.0, 1.0))
    if omega.abs() < 1e-6:
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def latent_interpolation(generator: Generator, seed_a: int, seed_b: int, steps: int = 8) -> torch.Tensor:
    """steps images walking (spherically) from seed_a's first latent to seed_b's."""
    za = sample_latents(seed_a, 1, generator.latent_dim)[0]
    zb = sample_latents(seed_b, 1, generator.latent_dim)[0]
    ts = torch.linspace(0, 1, max(2, steps)).tolist()
    return generate(generator, torch.stack([slerp(za, zb, t) for t in ts]))


def make_grid_png(images: torch.Tensor, nrow: int = 8, padding: int = 2, scale: int = 1):
    """A PIL grayscale grid, nrow images a row (32 images -> 8×4), black padding; scale enlarges by pixel repetition."""
    from PIL import Image

    from rlhflab.gan.data import to_uint8

    pixels = to_uint8(images)
    n, h, w = pixels.shape
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + padding) + padding, nrow * (w + padding) + padding), np.uint8)
    for i, img in enumerate(pixels):
        r, c = divmod(i, nrow)
        y, x = padding + r * (h + padding), padding + c * (w + padding)
        canvas[y:y + h, x:x + w] = img
    if scale > 1:
        canvas = canvas.repeat(scale, axis=0).repeat(scale, axis=1)
    return Image.fromarray(canvas, mode="L")


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def save_generator(folder: str | Path, generator: Generator, config_dict: dict | None = None) -> None:
    """model.safetensors + config.json (latent_dim, image_size, width and whatever config_dict adds)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    save_file(state, str(folder / GENERATOR_FILE), metadata={"format": "pt"})
    config = {"model_type": "dcgan-generator", "latent_dim": generator.latent_dim, "image_size": 28,
              "channels": 1, "generator_width": generator.width, "output_range": [-1, 1]}
    config.update(config_dict or {})
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n", encoding="utf-8")


def read_generator_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
        int(config["latent_dim"]), int(config["image_size"])
    except FileNotFoundError:
        raise UserError(f"checkpoint {folder} has no {CONFIG_FILE}; it is incomplete — re-run "
                        f"`python training/dcgan.py` to produce it.") from None
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a DCGAN generator config (needs latent_dim and image_size); "
                        f"the checkpoint is corrupt or of another kind.") from None
    return config


def load_generator(name_or_path: str | Path, device: str | torch.device = "cpu") -> Generator:
    """A generator from a local checkpoint folder or a Hub repo id, in eval mode; its config.json is `.config`."""
    from safetensors.torch import load_file

    folder = resolve_checkpoint(name_or_path, required_file=GENERATOR_FILE)
    config = read_generator_config(folder)
    if int(config["image_size"]) != 28:
        raise UserError(f"checkpoint {name_or_path} makes {config['image_size']}-pixel images; this code builds 28×28.")
    generator = Generator(int(config["latent_dim"]), int(config.get("generator_width", 64)))
    try:
        state = load_file(str(folder / GENERATOR_FILE))
        generator.load_state_dict(state)
    except Exception as exc:
        raise UserError(f"{folder / GENERATOR_FILE} does not load into the generator its {CONFIG_FILE} describes "
                        f"({type(exc).__name__}); the file is corrupt, truncated or from another model — "
                        f"re-run `python training/dcgan.py` or fetch it again.") from None
    generator.config = config
    generator.checkpoint_path = folder
    return generator.to(device).eval()
