"""DCGAN diagnostics that need no downloaded network: diversity, memorisation, a domain-feature Fréchet distance."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rlhflab.config import CHECKPOINTS_DIR, GANEvalConfig
from rlhflab.errors import UserError
from rlhflab.gan.data import XrayDataset, dataset_from_description
from rlhflab.gan.networks import DIAGNOSTICS_FILE, Generator, load_generator, sample_images
from rlhflab.models.hardware import hardware_description
from rlhflab.store.cards import markdown_table
from rlhflab.store.jsonio import write_json


def _flat(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(len(images), -1).float()


def mean_pairwise_l2(images: torch.Tensor) -> float:
    """Mean L2 distance over all pairs i<j (pixels in [-1, 1], 784 of them): collapse drives it towards 0."""
    x = _flat(images)
    d = torch.cdist(x, x)
    iu = torch.triu_indices(len(x), len(x), offset=1)
    return float(d[iu[0], iu[1]].mean())


def nearest_neighbour_l2(queries: torch.Tensor, reference: torch.Tensor, chunk: int = 256):
    """For each query its nearest reference image: (L2 distances, indices).

    The search uses the fast |a|²+|b|²-2ab form; the winners' distances are then recomputed directly,
    so an exact copy reads exactly 0.
    """
    q, r = _flat(queries), _flat(reference)
    r_sq = (r * r).sum(1)
    idx = torch.empty(len(q), dtype=torch.long)
    for start in range(0, len(q), chunk):
        block = q[start:start + chunk]
        idx[start:start + chunk] = (r_sq[None, :] - 2 * block @ r.T).argmin(1)  # |q|² is constant per row
    dist = (q - r[idx]).norm(dim=1)
    return dist, idx


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def _ssim_and_cs(x, y, window, data_range):
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    sxx = F.conv2d(x * x, window) - mu_x ** 2
    syy = F.conv2d(y * y, window) - mu_y ** 2
    sxy = F.conv2d(x * y, window) - mu_x * mu_y
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


MS_SSIM_WINDOW, MS_SSIM_SIGMA = 7, 1.5


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)  # Wang et al. 2003's first three scale weights, renormalised below


def ms_ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Multi-scale SSIM per image pair, for 28×28 images: 3 scales (28, 14, 7 pixels), Gaussian window 7×7 σ=1.5.

    Wang, Simoncelli & Bovik 2003 use 5 scales and an 11-pixel window, which do not fit 28 pixels; this
    keeps their form — contrast·structure at the finer scales, full SSIM at the coarsest (7×7: one window),
    weights = their first three renormalised — with "valid" windows (no padding). Negative terms are clipped
    to 0 before the fractional powers. 1 = identical; lower = more different (range [0, 1]).
    """
    x, y = x.float(), y.float()
    window = _gaussian_window(MS_SSIM_WINDOW, MS_SSIM_SIGMA).to(x)
    weights = torch.tensor(MS_SSIM_WEIGHTS) / sum(MS_SSIM_WEIGHTS)
    result = torch.ones(len(x), device=x.device)
    for scale, w in enumerate(weights):
        ssim, cs = _ssim_and_cs(x, y, window, data_range)
        term = ssim if scale == len(weights) - 1 else cs
        result = result * term.clamp_min(0) ** w
        x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    return result


def mean_pair_ms_ssim(images: torch.Tensor, num_pairs: int, seed: int) -> float:
    """Mean MS-SSIM of random distinct pairs (Odena et al. 2017's diversity measure: mode collapse raises it)."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(len(images), (num_pairs,), generator=g)
    b = (a + torch.randint(1, len(images), (num_pairs,), generator=g)) % len(images)
    return float(ms_ssim(images[a], images[b]).mean())


class XrayFeatureNet(nn.Module):
    """A small CNN for ChestMNIST's 14 labels; its 128-d hidden layer is the space of the Fréchet distance."""

    FEATURE_DIM = 128

    def __init__(self, num_labels: int = 14):
        super().__init__()

        def block(c_in, c_out):  # stride-2 convolution, 28 -> 14 -> 7 -> 4
            return [nn.Conv2d(c_in, c_out, 3, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(True)]

        self.body = nn.Sequential(*block(1, 16), *block(16, 32), *block(32, 64), nn.Flatten(),
                                  nn.Linear(64 * 16, self.FEATURE_DIM), nn.ReLU(True))
        self.head = nn.Linear(self.FEATURE_DIM, num_labels)

    def forward(self, images):
        return self.head(self.body(images))

    @torch.no_grad()
    def features(self, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
        self.eval()
        return torch.cat([self.body(x) for x in images.split(batch_size)]).double()


def train_feature_net(images, labels, steps: int = 200, batch_size: int = 128, lr: float = 3e-3,
                      seed: int = 0) -> XrayFeatureNet:
    """Multi-label BCE on the 14 labels, Adam, a fixed number of steps (a few seconds on 2 CPU cores)."""
    torch.manual_seed(seed)
    net = XrayFeatureNet(labels.shape[1])
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    net.train()
    batch_size = min(batch_size, len(images))
    step = 0
    while step < steps:
        perm = torch.randperm(len(images))
        for start in range(0, len(images) - batch_size + 1, batch_size):
            idx = perm[start:start + batch_size]
            loss = loss_fn(net(images[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            if step >= steps:
                break
    return net.eval()


def macro_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Mean ROC AUC over the labels that have both classes (Mann–Whitney form; ties are rare with float scores)."""
    aucs = []
    for k in range(labels.shape[1]):
        y = labels[:, k] > 0.5
        pos, neg = int(y.sum()), int((~y).sum())
        if pos == 0 or neg == 0:
            continue
        ranks = torch.empty(len(y), dtype=torch.float64)
        ranks[scores[:, k].argsort()] = torch.arange(1, len(y) + 1, dtype=torch.float64)
        aucs.append(float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg)))
    return float(np.mean(aucs)) if aucs else None


def _sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(m)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """|μa-μb|² + Tr(Σa + Σb - 2(Σa Σb)^½), with Tr((ΣaΣb)^½) from the eigenvalues of Σa^½ Σb Σa^½ (symmetric)."""
    mu_a, mu_b = feats_a.mean(0), feats_b.mean(0)
    cov_a, cov_b = torch.cov(feats_a.T), torch.cov(feats_b.T)
    root_a = _sqrtm_psd(cov_a)
    middle = root_a @ cov_b @ root_a
    tr_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + cov_a.trace() + cov_b.trace() - 2 * tr_sqrt)


FRECHET_NOTE = ("Fréchet distance in the 128-d hidden layer of a small CNN trained here on the same data's 14 labels "
                "(multi-label BCE). NOT comparable to Inception FID or to this number from another classifier or "
                "data set; read it against the real-vs-real floor (training subset vs held-out images).")


def _summary(x: torch.Tensor) -> dict:
    return {"mean": float(x.mean()), "median": float(x.median())}


def gan_diagnostics(generator: Generator, data, num_samples: int = 1000, seed: int = 0,
                    classifier_steps: int = 200) -> dict:
    """Diversity, memorisation and a domain-feature Fréchet distance for `generator` against `data`
    (an rlhflab.gan.data.XrayDataset). Held-out real images come from its test split.
    The global torch RNG is left as it was, the GPUs' included (the feature net below re-seeds them all)."""
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=list(range(torch.cuda.device_count()))):
        n = max(2, min(num_samples, len(data.test_images), len(data.train_images)))
        g = torch.Generator().manual_seed(seed)
        fake = sample_images(generator, seed + 1, n)
        heldout = data.test_images[torch.randperm(len(data.test_images), generator=g)[:n]]
        train_subset = data.train_images[torch.randperm(len(data.train_images), generator=g)[:n]]

        pl_fake, pl_real = mean_pairwise_l2(fake), mean_pairwise_l2(heldout)
        pairs = 4 * n
        ss_fake, ss_real = mean_pair_ms_ssim(fake, pairs, seed), mean_pair_ms_ssim(heldout, pairs, seed)

        nn_fake, _ = nearest_neighbour_l2(fake, data.train_images)
        nn_held, _ = nearest_neighbour_l2(heldout, data.train_images)
        p05 = torch.quantile(nn_held, 0.05)

        classifier_steps = min(classifier_steps, max(1, 10 * len(data.train_images) // 128))  # at most ~10 epochs
        net = train_feature_net(data.train_images, data.train_labels, steps=classifier_steps, seed=seed)
        with torch.no_grad():
            auc = macro_auc(net(data.test_images).double(), data.test_labels)
        f_fake, f_held, f_train = net.features(fake), net.features(heldout), net.features(train_subset)
        fd_fake, fd_floor = frechet_distance(f_fake, f_held), frechet_distance(f_train, f_held)

    return {
        "data_source": data.source,
        "num_generated": n, "num_real_heldout": n, "seed": seed,
        "pairwise_l2": {"generated": pl_fake, "real_heldout": pl_real, "ratio": pl_fake / max(pl_real, 1e-12),
                        "units": "L2 over 784 pixels scaled to [-1, 1]; mean over all pairs"},
        "ms_ssim": {"generated_pairs": ss_fake, "real_pairs": ss_real, "num_pairs": pairs,
                    "scales": len(MS_SSIM_WEIGHTS), "window": MS_SSIM_WINDOW, "sigma": MS_SSIM_SIGMA,
                    "reading": "lower = more diverse; generated well above real suggests mode collapse"},
        "memorisation": {"generated_to_train_l2": _summary(nn_fake), "heldout_to_train_l2": _summary(nn_held),
                         "ratio_of_medians": float(nn_fake.median() / nn_held.median().clamp_min(1e-12)),
                         "generated_below_heldout_p05": float((nn_fake < p05).float().mean()),
                         "num_train_images": len(data.train_images),
                         "reading": "ratio near 1: no sign of copying; well below 1: samples sit on training images"},
        "frechet": {"generated_vs_heldout": fd_fake, "floor_train_vs_heldout": fd_floor,
                    "feature_dim": XrayFeatureNet.FEATURE_DIM, "classifier_steps": classifier_steps,
                    "classifier_batch_size": 128, "classifier_heldout_macro_auc": auc, "note": FRECHET_NOTE},
        "seconds": round(time.perf_counter() - t0, 2),
        "hardware": hardware_description(),
    }


def diagnostics_table(diag: dict) -> str:
    """The diagnostics as a Markdown table (model card, eval output)."""
    m, f = diag["memorisation"], diag["frechet"]
    auc = f"{f['classifier_heldout_macro_auc']:.3f}" if f.get("classifier_heldout_macro_auc") is not None else "n/a"
    rows = [
        ["mean pairwise L2 (diversity, higher = more varied)", f"{diag['pairwise_l2']['generated']:.2f}",
         f"{diag['pairwise_l2']['real_heldout']:.2f}", f"ratio {diag['pairwise_l2']['ratio']:.2f}"],
        [f"mean pair MS-SSIM ({diag['ms_ssim']['scales']} scales, window {diag['ms_ssim']['window']}, "
         f"σ {diag['ms_ssim']['sigma']}; lower = more varied)",
         f"{diag['ms_ssim']['generated_pairs']:.3f}", f"{diag['ms_ssim']['real_pairs']:.3f}", ""],
        ["nearest-training-image L2, median (memorisation)", f"{m['generated_to_train_l2']['median']:.2f}",
         f"{m['heldout_to_train_l2']['median']:.2f}", f"ratio {m['ratio_of_medians']:.2f}"],
        ["nearest-training-image L2, mean", f"{m['generated_to_train_l2']['mean']:.2f}",
         f"{m['heldout_to_train_l2']['mean']:.2f}",
         f"{m['generated_below_heldout_p05']:.1%} of samples closer than 95 % of held-out images"],
        ["Fréchet distance, small-CNN features (not Inception FID)", f"{f['generated_vs_heldout']:.3f}",
         f"{f['floor_train_vs_heldout']:.3f}", f"floor = real train vs real held-out; classifier macro AUC {auc}"],
    ]
    return markdown_table(["diagnostic", "generated", "real (held-out)", "note"], rows)


def evaluate_checkpoint(checkpoint: str, data_root: str | None = None, num_samples: int = 1000,
                        seed: int = 42) -> tuple[dict, Path]:
    """Diagnostics of a generator checkpoint (folder or Hub id) against the data its config.json records."""
    generator = load_generator(checkpoint)
    description = generator.config.get("data")
    if not description:
        raise UserError(f"checkpoint {checkpoint} does not record its training data (config.json 'data'); "
                        f"re-train it with training/dcgan.py.")
    data: XrayDataset = dataset_from_description(description, root=data_root)
    print(f"generator {generator.checkpoint_path}; data {data.source} ({len(data.train_images):,} training images)",
          flush=True)
    recorded, rebuilt = description.get("train_fingerprint"), data.description.get("train_fingerprint")
    if recorded and recorded != rebuilt:
        print(f"warning: these training images differ from the ones the generator saw (fingerprint {rebuilt}, "
              f"recorded {recorded}): the data file or the phantom code changed; the memorisation numbers "
              f"refer to the images loaded now.", file=sys.stderr, flush=True)
    return gan_diagnostics(generator, data, num_samples=num_samples, seed=seed), generator.checkpoint_path


def evaluate_generator(cfg: GANEvalConfig) -> dict:
    """Run evaluate_checkpoint, write the diagnostics JSON and print its table; returns the diagnostics."""
    diagnostics, folder = evaluate_checkpoint(cfg.checkpoint, cfg.data_root, cfg.num_samples, cfg.seed)
    if cfg.output:
        output = Path(cfg.output)
    elif Path(cfg.checkpoint).is_dir():
        output = folder / DIAGNOSTICS_FILE
    else:  # a Hub id resolves into the HF cache, which is not ours to write
        output = CHECKPOINTS_DIR / "eval" / "dcgan_diagnostics.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, diagnostics)
    print(diagnostics_table(diagnostics))
    print(f"\n{diagnostics['frechet']['note']}\nwrote {output}")
    return diagnostics
