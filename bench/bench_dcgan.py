"""DCGAN training throughput: the training loop itself (rlhflab.gan.training.train_epoch: one in-memory tensor,
randperm slices) vs the textbook loop that reads ChestMNIST through medmnist's per-image PIL path
(ToTensor + Normalize) and a DataLoader.

Same models, initial weights, batch, step function (rlhflab.gan.networks.train_step) and number of steps; the two
loops alternate for a few rounds and the best round of each counts. The data is a synthetic npz in
ChestMNIST's format written as <tmp>/chestmnist.npz (PHANTOM images: the pixels do not change the speed).

    python bench/bench_dcgan.py [--steps 20] [--rounds 2] [--width 32] [--num-workers 0]
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import tempfile
import time
from pathlib import Path

import torch
from common import command, machine

from rlhflab.gan.data import NPZ_NAME, read_chestmnist_npz, to_unit_range, write_chestmnist_npz
from rlhflab.gan.networks import Discriminator, Generator, dcgan_weights_init, train_step
from rlhflab.gan.training import epoch_batches, train_epoch


def _models(width: int, seed: int, device):
    torch.manual_seed(seed)
    generator, discriminator = Generator(100, width), Discriminator(width)
    generator.apply(dcgan_weights_init)
    discriminator.apply(dcgan_weights_init)
    return generator.to(device), discriminator.to(device)


def _optimizers(generator, discriminator):
    return (torch.optim.Adam(generator.parameters(), lr=2e-4, betas=(0.5, 0.999)),
            torch.optim.Adam(discriminator.parameters(), lr=2e-4, betas=(0.5, 0.999)))


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_loop(batches, models, device, steps: int, warmup: int, train: bool) -> float:
    """The baseline's images per second over `steps` batches after `warmup` untimed ones (train=False: data only)."""
    generator, discriminator = models
    opt_g, opt_d = _optimizers(generator, discriminator)
    it = iter(batches)
    for _ in range(warmup):
        real = next(it).to(device, non_blocking=True)
        if train:
            train_step(generator, discriminator, opt_g, opt_d, real)
    _sync(device)
    start, images = time.perf_counter(), 0
    for _ in range(steps):
        real = next(it).to(device, non_blocking=True)
        if train:
            train_step(generator, discriminator, opt_g, opt_d, real)
        images += real.size(0)
    _sync(device)
    return images / (time.perf_counter() - start)


def _time_ours(images: torch.Tensor, models, device, batch_size: int, steps: int, warmup: int, train: bool) -> float:
    """Images per second of the training script's own epoch loop: an untimed epoch of `warmup` batches, then a
    timed epoch of `steps` batches, both over the resident tensor (train=False: its batches alone)."""
    generator, discriminator = models
    opt_g, opt_d = _optimizers(generator, discriminator)

    def epoch(n_batches: int) -> None:
        part = images[:n_batches * batch_size]
        if train:
            train_epoch(generator, discriminator, opt_g, opt_d, part, batch_size)
        else:
            for _ in epoch_batches(part, batch_size):
                pass

    epoch(warmup)
    _sync(device)
    start = time.perf_counter()
    epoch(steps)
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def _baseline(root: Path, n_images: int, batch_size: int, num_workers: int):
    """The textbook path: medmnist.ChestMNIST -> PIL image per item -> ToTensor + Normalize -> DataLoader."""
    import medmnist
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    dataset = medmnist.ChestMNIST(split="train", root=str(root), download=False,
                                  transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    # medmnist's __len__ asserts the official split size (78,468); a Subset avoids calling it on a smaller file
    loader = DataLoader(Subset(dataset, range(n_images)), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=num_workers, persistent_workers=num_workers > 0)
    while True:
        for images, _labels in loader:
            yield images


def run(steps: int = 20, rounds: int = 2, batch_size: int = 128, width: int = 32, n_images: int = 6400,
        num_workers: int = 0, warmup: int = 3, device: str | None = None, seed: int = 0) -> dict:
    """Measure both loops; returns images/s for each, the ratio, and where it was measured."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n_images = max(n_images, steps * batch_size, warmup * batch_size)  # one epoch of ours holds every timed step
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        write_chestmnist_npz(root / NPZ_NAME, n_train=n_images, n_val=16, n_test=16, seed=seed)
        t1 = time.perf_counter()
        resident = to_unit_range(read_chestmnist_npz(root / NPZ_NAME)["train_images"]).to(device)
        load_s = time.perf_counter() - t1
        base_models = _models(width, seed, device)
        results = {"ours": [], "baseline": [], "ours_data_only": [], "baseline_data_only": []}
        for _ in range(rounds):
            torch.manual_seed(seed)
            results["ours"].append(_time_ours(resident, copy.deepcopy(base_models), device, batch_size, steps,
                                              warmup, True))
            results["ours_data_only"].append(_time_ours(resident, base_models, device, batch_size, steps, warmup,
                                                        False))
            torch.manual_seed(seed)
            results["baseline"].append(_time_loop(_baseline(root, n_images, batch_size, num_workers),
                                                  copy.deepcopy(base_models), device, steps, warmup, True))
            results["baseline_data_only"].append(_time_loop(_baseline(root, n_images, batch_size, num_workers),
                                                            base_models, device, steps, warmup, False))
    best = {k: max(v) for k, v in results.items()}
    return {
        "benchmark": "dcgan_training_images_per_s",
        "ours_images_per_s": round(best["ours"], 1),
        "baseline_images_per_s": round(best["baseline"], 1),
        "speedup": round(best["ours"] / best["baseline"], 3),
        "data_only_images_per_s": {"ours": round(best["ours_data_only"], 1),
                                   "baseline": round(best["baseline_data_only"], 1)},
        "all_rounds": {k: [round(x, 1) for x in v] for k, v in results.items()},
        "setup": {"steps": steps, "warmup_steps": warmup, "rounds": rounds, "batch_size": batch_size,
                  "generator_width": width, "discriminator_width": width, "train_images": n_images,
                  "dataloader_num_workers": num_workers, "device": str(device),
                  "npz_write_s": round(t1 - t0, 2), "npz_load_to_tensor_s": round(load_s, 3),
                  "data": "synthetic ChestMNIST-format npz (PHANTOM images)"},
        "torch_threads": torch.get_num_threads(),
        "command": command(),
        "machine": machine(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per loop and round")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the best of each loop counts")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32, help="generator and discriminator width (demo profile: 32)")
    parser.add_argument("--images", type=int, default=6400, help="training images in the synthetic npz")
    parser.add_argument("--num-workers", type=int, default=0, help="DataLoader workers of the baseline")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", default=None, help="also write the result to this file")
    args = parser.parse_args(argv)
    result = run(steps=args.steps, rounds=args.rounds, batch_size=args.batch_size, width=args.width,
                 n_images=args.images, num_workers=args.num_workers, device=args.device)
    print(f"ours (resident tensor):        {result['ours_images_per_s']:>9.1f} images/s "
          f"(data alone {result['data_only_images_per_s']['ours']:.0f}/s)")
    print(f"baseline (medmnist PIL + DataLoader, {args.num_workers} workers): {result['baseline_images_per_s']:>9.1f} "
          f"images/s (data alone {result['data_only_images_per_s']['baseline']:.0f}/s)")
    print(f"speedup: {result['speedup']:.2f}x  |  {result['command']}  |  {result['machine']}, "
          f"{result['torch_threads']} torch threads")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
