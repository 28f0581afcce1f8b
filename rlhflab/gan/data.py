"""Chest X-ray images for the DCGAN: ChestMNIST (MedMNIST v2) loaded into one in-memory tensor, or a PHANTOM set.

The phantom is a procedurally generated stand-in (numpy geometry, no patient data) used where
chestmnist.npz is absent; everything that shows it says so. It is NOT medical data."""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rlhflab.errors import DatasetUnavailable, UserError

NPZ_NAME = "chestmnist.npz"  # what medmnist.ChestMNIST reads and downloads (28×28 size has no suffix)


SPLITS = ("train", "val", "test")


IMAGE_SIZE = 28


LABEL_NAMES = ("atelectasis", "cardiomegaly", "effusion", "infiltration", "mass", "nodule", "pneumonia",
               "pneumothorax", "consolidation", "edema", "emphysema", "fibrosis", "pleural", "hernia")


CHESTMNIST_URL = "https://zenodo.org/records/10519652/files/chestmnist.npz"


PHANTOM_SOURCE = "PHANTOM: procedurally generated stand-in, not real X-rays"


PHANTOM_NOTICE = "PHANTOM — procedurally generated stand-in, not real chest X-rays"


PHANTOM_TRAIN_IMAGES = 20000  # phantom training set size when max_train_images is not given


PHANTOM_HELDOUT_IMAGES = 2000  # phantom val and test split sizes


def to_unit_range(images_uint8: np.ndarray) -> torch.Tensor:
    """uint8 N×28×28 -> float32 N×1×28×28 in [-1, 1] (the generator's tanh range)."""
    return torch.from_numpy(np.ascontiguousarray(images_uint8)).float().div_(127.5).sub_(1.0).unsqueeze(1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float N×1×H×W in [-1, 1] -> uint8 N×H×W."""
    return ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).squeeze(1).cpu().numpy()


@dataclass
class XrayDataset:
    """All three splits in memory: images float32 N×1×28×28 in [-1, 1], labels float32 N×14 (multi-label 0/1)."""
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    source: str
    is_phantom: bool
    # how to rebuild exactly this data (recorded in the generator's config.json; eval/gan.py reads it)
    description: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return "phantom" if self.is_phantom else "chestmnist"


def chestmnist_path(root: str | Path) -> Path:
    return Path(root) / NPZ_NAME


def _missing_message(root: Path, reason: str) -> str:
    return (f"ChestMNIST is not available ({reason}): download {NPZ_NAME} from {CHESTMNIST_URL} "
            f"and put it in {root.resolve()} (or pass --data-root to the folder that holds it).")


def download_chestmnist(root: str | Path) -> Path:
    """Fetch chestmnist.npz into root through medmnist; no network becomes one DatasetUnavailable sentence."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        import medmnist

        medmnist.ChestMNIST(split="train", root=str(root), download=True)
    except Exception as exc:  # medmnist wraps every download failure in RuntimeError with a multi-line text
        raise DatasetUnavailable(_missing_message(root, f"download failed: {type(exc).__name__}")) from None
    return chestmnist_path(root)


def read_chestmnist_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The six arrays of a ChestMNIST-format npz, checked for shape and dtype."""
    path = Path(path)
    try:
        with np.load(path) as npz:
            arrays = {f"{s}_{k}": npz[f"{s}_{k}"] for s in SPLITS for k in ("images", "labels")}
    except KeyError as exc:
        raise UserError(f"{path} lacks the array {exc}; it is not a ChestMNIST npz "
                        f"(expected train_/val_/test_ images and labels).") from None
    except Exception as exc:
        raise UserError(f"{path} could not be read as an npz ({type(exc).__name__}); "
                        f"delete it and download {NPZ_NAME} again.") from None
    for s in SPLITS:
        img, lab = arrays[f"{s}_images"], arrays[f"{s}_labels"]
        if img.ndim != 3 or img.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE) or lab.shape != (len(img), len(LABEL_NAMES)):
            raise UserError(f"{path}: {s} images {img.shape} / labels {lab.shape} are not ChestMNIST 28×28 "
                            f"with 14 labels; use the 28-pixel {NPZ_NAME}.")
    return arrays


def load_chestmnist(root: str | Path, download: bool = True) -> dict[str, np.ndarray]:
    """<root>/chestmnist.npz as uint8 arrays, downloading it through medmnist first when it is missing."""
    root = Path(root)
    path = chestmnist_path(root)
    if not path.is_file():
        if not download:
            raise DatasetUnavailable(_missing_message(root, "no local copy and download disabled"))
        download_chestmnist(root)
    return read_chestmnist_npz(path)


def write_chestmnist_npz(path: str | Path, n_train: int, n_val: int, n_test: int, seed: int = 0) -> Path:
    """A ChestMNIST-format npz (same keys, uint8 dtypes, N×28×28 images, N×14 labels) filled with PHANTOM images.

    For tests and benchmarks only: the images are procedurally generated, not real X-rays.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for i, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test))):
        images, labels = make_phantom_xrays(n, seed + 1000 * i)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez_compressed(path, **arrays)
    return path


# Per-label prevalence, close to ChestMNIST's training split (infiltration, effusion, atelectasis most common).
_PREVALENCE = np.array([0.10, 0.04, 0.12, 0.16, 0.06, 0.06, 0.02, 0.05, 0.05, 0.03, 0.03, 0.02, 0.03, 0.005])


def _sigmoid(x):
    return 0.5 + 0.5 * np.tanh(0.5 * x)  # the logistic function, without exp overflow


def _blob(x, y, cx, cy, sx, sy):
    return np.exp(-0.5 * (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))


def _phantom_chunk(rng: np.random.Generator, n: int, res: int) -> tuple[np.ndarray, np.ndarray]:
    """n PHANTOM images rendered at res×res in [0, 1] (float32) and their 14-way labels."""
    f32 = np.float32
    labels = (rng.random((n, len(LABEL_NAMES))) < _PREVALENCE).astype(np.uint8)

    def u(lo, hi, k=n):  # one value per image, broadcastable over the pixel grid
        return rng.uniform(lo, hi, (k, 1, 1)).astype(f32)

    g = (np.arange(res, dtype=f32) + 0.5) / res * 2 - 1
    # patient pose: shift, scale, small rotation (x: image left→right, y: top→bottom, both in [-1, 1])
    cx, cy = u(-0.05, 0.05), u(-0.05, 0.05)
    s, aspect, th = u(0.92, 1.06), u(0.94, 1.06), u(-0.05, 0.05)
    x0, y0 = g[None, None, :] - cx, g[None, :, None] - cy
    x = (x0 * np.cos(th) + y0 * np.sin(th)) / (s * aspect)
    y = (-x0 * np.sin(th) + y0 * np.cos(th)) / s
    ax = np.abs(x)

    # body: soft tissue, neck at the top widening into the shoulders, air outside; denser abdomen and chest wall
    soft = u(0.50, 0.62)
    half_width = u(0.90, 1.02) * (0.42 + 0.58 * _sigmoid((y - u(-0.86, -0.72)) / 0.09))
    body = _sigmoid((half_width - ax) / 0.05)
    img = 0.08 + (soft - 0.08) * body
    img += body * (0.10 * _sigmoid((y - 0.66) / 0.07) + 0.06 * _sigmoid((ax - 0.80) / 0.05))

    # lungs: tapered at the apex, domed diaphragm underneath with sharp lateral costophrenic angles
    lx, ly, lw, lh = u(0.42, 0.48), u(-0.04, 0.06), u(0.32, 0.38), u(0.64, 0.74)
    lh = lh * (1 + 0.08 * labels[:, 10, None, None])  # emphysema: hyperinflated
    atelectasis_side = np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0).astype(f32)
    lung_masks = []
    for side in (-1.0, 1.0):
        h = lh * (1 - 0.15 * labels[:, 0, None, None] * (atelectasis_side == side))  # atelectasis: volume loss
        q = (y - ly) / h
        p = (x - side * lx) / (lw * (0.72 + 0.28 * np.clip(q, -1, 1)))
        dome = ly + 0.92 * h - 0.22 * np.exp(-(((x - side * (lx - 0.05)) / (0.9 * lw)) ** 2))
        lung_masks.append(_sigmoid((1 - p ** 2 - q ** 2) / 0.08) * _sigmoid((dome - y) / 0.035))
    lungs = np.maximum(*lung_masks)
    # heart: lower centre, bulging to the image's right (the patient's left); cardiomegaly enlarges it
    hw = u(0.24, 0.30) * (1 + 0.35 * labels[:, 1, None, None])
    heart = _sigmoid((1 - ((x - u(0.07, 0.13)) / hw) ** 2 - ((y - u(0.38, 0.46)) / u(0.24, 0.30)) ** 2) / 0.08)
    lungs *= 1 - 0.9 * heart

    # inside the lungs: brighter hila and vessels, rib arcs (convex upwards) across each side
    opacity = 0.18 * (_blob(ax, y, 0.17, 0.0, 0.09, 0.15)) + 0.08 * _sigmoid((0.32 - ax) / 0.1)
    rib_phase = (y - 0.8 * (ax - lx) ** 2 + u(0, 1)) / u(0.22, 0.27)
    opacity += u(0.06, 0.16) * np.cos(np.pi * rib_phase) ** 2 * _sigmoid((ax - 0.15) / 0.05)

    # findings, each drawn only on the images that carry its label
    side = np.where(rng.random((n, 1, 1)) < 0.5, -1.0, 1.0).astype(f32)
    centre = side * lx

    def add(label: int, draw):  # draw(x, y, lesion centre x, side, lung base y, count) for the labelled images
        idx = np.flatnonzero(labels[:, label])
        if len(idx):
            opacity[idx] += draw(x[idx], y[idx], centre[idx], side[idx], ly[idx] + lh[idx], len(idx))

    # effusion: a basal meniscus on one side
    add(2, lambda x, y, c, sd, base, k: 0.6 * _sigmoid((y - base + u(0.25, 0.45, k)) / 0.06) * _sigmoid(x * sd / 0.1))
    # infiltration: patchy, both sides
    add(3, lambda x, y, c, sd, base, k: 0.28 * (_blob(x, y, c, u(-0.2, 0.3, k), 0.14, 0.2)
                                                 + _blob(x, y, -c, u(-0.2, 0.3, k), 0.12, 0.16)))
    # mass and nodule: round, large and small
    add(4, lambda x, y, c, sd, base, k: u(0.5, 0.75, k) * _blob(x, y, c + u(-0.08, 0.08, k), u(-0.3, 0.3, k), 0.1, 0.1))
    add(5, lambda x, y, c, sd, base, k: 0.7 * _blob(x, y, -c + u(-0.1, 0.1, k), u(-0.35, 0.25, k), 0.05, 0.05))
    # pneumonia (lower zone); pneumothorax (the lateral upper lung loses its markings); consolidation
    add(6, lambda x, y, c, sd, base, k: 0.5 * _blob(x, y, c, u(0.15, 0.35, k), 0.16, 0.14))
    add(7, lambda x, y, c, sd, base, k: -0.3 * _sigmoid((np.abs(x - c) - 0.10) / 0.05)
        * _sigmoid(-(y + 0.1) / 0.1) * (x * sd > 0))
    add(8, lambda x, y, c, sd, base, k: 0.55 * _blob(x, y, -c, u(-0.1, 0.3, k), 0.12, 0.18))
    # edema: bilateral perihilar haze
    add(9, lambda x, y, c, sd, base, k: 0.35 * (_blob(x, y, -0.24, 0.05, 0.18, 0.22) + _blob(x, y, 0.24, 0.05, 0.18, 0.22)))
    # fibrosis: a reticular pattern at the bases
    add(11, lambda x, y, c, sd, base, k: 0.25 * np.clip(np.sin(18 * x) * np.sin(18 * y), 0, 1) * _sigmoid((y - 0.1) / 0.1))
    # pleural thickening: a lateral rim
    add(12, lambda x, y, c, sd, base, k: 0.35 * _sigmoid((np.abs(x) - (np.abs(c) + 0.18)) / 0.04))
    img -= soft * u(0.62, 0.80) * lungs * (1 - np.clip(opacity, -0.4, 0.9))
    hernia = np.flatnonzero(labels[:, 13])
    img[hernia] += 0.25 * _blob(x[hernia], y[hernia], 0.0, 0.5, 0.1, 0.08)  # retrocardiac density

    # bones over everything: spine down the middle, upper mediastinum, clavicles across the top
    img += (u(0.10, 0.18) * _sigmoid((0.07 - ax) / 0.025)
            + 0.05 * _sigmoid((0.15 - ax) / 0.05) * _sigmoid(-(y + 0.05) / 0.2))
    clav_y = u(-0.74, -0.62) - 0.22 * (ax - 0.1)
    img += (u(0.10, 0.20) * np.exp(-0.5 * ((y - clav_y) / 0.04) ** 2)
            * _sigmoid((ax - 0.08) / 0.03) * _sigmoid((0.70 - ax) / 0.05))

    # exposure: gamma, contrast, brightness, grain
    img = np.clip(img, 0, 1) ** u(0.8, 1.25)
    img = (img - 0.5) * u(0.85, 1.2) + 0.5 + u(-0.06, 0.06)
    img += rng.normal(0, 0.015, img.shape).astype(f32)
    return np.clip(img, 0, 1), labels


def make_phantom_xrays(n: int, seed: int = 0, chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """n PHANTOM chest radiographs (uint8 n×28×28) and 14-way multi-label arrays (uint8 n×14).

    Procedurally generated stand-ins, NOT medical data: dark lung fields, heart, bright spine and
    mediastinum, rib arcs, clavicles, pose/size/exposure variation, and opacity "findings" that set
    the labels at about ChestMNIST's prevalence. Deterministic per seed; thousands of images a second.
    """
    rng = np.random.default_rng(seed)
    images = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    labels = np.empty((n, len(LABEL_NAMES)), dtype=np.uint8)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        img, lab = _phantom_chunk(rng, k, IMAGE_SIZE)
        images[start:start + k] = np.round(img * 255).astype(np.uint8)
        labels[start:start + k] = lab
    return images, labels


def fingerprint(images: np.ndarray) -> str:
    """A short hash of uint8 images, so a checkpoint can tell whether rebuilt training data is the same."""
    return hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def _subset(images: np.ndarray, labels: np.ndarray, limit: int | None, seed: int):
    if limit is None or limit >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:limit])
    return images[keep], labels[keep]


def load_xray_dataset(root: str | Path, allow_phantom: bool = False, *, download: bool = True,
                      max_train_images: int | None = None, seed: int = 0,
                      use_phantom: bool = False) -> XrayDataset:
    """ChestMNIST from <root>/chestmnist.npz (downloaded through medmnist when missing and `download`),
    else — only when `allow_phantom` — the PHANTOM set; `use_phantom` picks the phantom outright.

    `max_train_images` keeps a seeded subset of the training split (the val/test splits stay whole).
    """
    root = Path(root)
    if not use_phantom:
        try:
            arrays = load_chestmnist(root, download=download)
        except DatasetUnavailable:
            if not allow_phantom:
                raise
        else:
            tr_img, tr_lab = _subset(arrays["train_images"], arrays["train_labels"], max_train_images, seed)
            return XrayDataset(
                to_unit_range(tr_img), torch.from_numpy(tr_lab.astype(np.float32)),
                to_unit_range(arrays["val_images"]), torch.from_numpy(arrays["val_labels"].astype(np.float32)),
                to_unit_range(arrays["test_images"]), torch.from_numpy(arrays["test_labels"].astype(np.float32)),
                source=f"ChestMNIST (MedMNIST v2), {chestmnist_path(root)}", is_phantom=False,
                description=dict(name="chestmnist", root=str(root.resolve()), num_train_images=len(tr_img),
                                 max_train_images=max_train_images, subset_seed=seed,
                                 train_fingerprint=fingerprint(tr_img)))
    n_train = max_train_images or PHANTOM_TRAIN_IMAGES
    splits = [make_phantom_xrays(n, seed + 1000 * i) for i, n in
              enumerate((n_train, PHANTOM_HELDOUT_IMAGES, PHANTOM_HELDOUT_IMAGES))]
    tensors = [t for images, labels in splits for t in (to_unit_range(images), torch.from_numpy(labels.astype(np.float32)))]
    return XrayDataset(*tensors, source=PHANTOM_SOURCE, is_phantom=True,
                       description=dict(name="phantom", num_train_images=n_train, max_train_images=n_train,
                                        subset_seed=seed, train_fingerprint=fingerprint(splits[0][0]),
                                        notice=PHANTOM_NOTICE))


def dataset_from_description(description: dict, root: str | Path | None = None) -> XrayDataset:
    """Rebuild the data a generator was trained on from its config.json "data" entry (no download)."""
    if description.get("name") == "phantom":
        return load_xray_dataset(root or ".", use_phantom=True, max_train_images=description["num_train_images"],
                                 seed=description.get("subset_seed", 0))
    return load_xray_dataset(root or description.get("root", "."), download=False,
                             max_train_images=description.get("max_train_images"),
                             seed=description.get("subset_seed", 0))


if __name__ == "__main__":  # a look at the phantom: python -m rlhflab.gan.data out.png [seed]
    import sys

    from PIL import Image

    t0 = time.perf_counter()
    imgs, labs = make_phantom_xrays(4000, seed=int(sys.argv[2]) if len(sys.argv) > 2 else 0)
    print(f"4000 phantom images in {time.perf_counter() - t0:.2f} s; labels per image {labs.sum(1).mean():.2f}")
    canvas = np.zeros((4 * 30 + 2, 6 * 30 + 2), np.uint8)
    for i in range(24):
        r, c = divmod(i, 6)
        canvas[2 + 30 * r:30 + 30 * r, 2 + 30 * c:30 + 30 * c] = imgs[i]
    Image.fromarray(canvas).resize((canvas.shape[1] * 4, canvas.shape[0] * 4), Image.NEAREST).save(
        sys.argv[1] if len(sys.argv) > 1 else "/tmp/phantom.png")
