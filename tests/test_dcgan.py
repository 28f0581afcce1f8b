"""DCGAN: training on a tiny ChestMNIST-format npz, seeded sampling, checkpoint round trip, resume, the
missing-data error, and the diagnostics (MS-SSIM, memorisation distances, Fréchet distance)."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rlhflab.config import DCGANConfig, GANEvalConfig, build_config
from rlhflab.errors import UserError, cli_main
from rlhflab.gan.data import LABEL_NAMES, PHANTOM_SOURCE, load_xray_dataset, make_phantom_xrays, write_chestmnist_npz
from rlhflab.gan.diagnostics import evaluate_generator, frechet_distance, ms_ssim, nearest_neighbour_l2
from rlhflab.gan.networks import (
    Generator,
    latent_interpolation,
    load_generator,
    make_grid_png,
    sample_images,
    save_generator,
)
from rlhflab.gan.training import train_dcgan

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on a 2-core machine shared with other jobs, 2 OpenMP threads stall on every small op."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chest")
    write_chestmnist_npz(root / "chestmnist.npz", n_train=300, n_val=40, n_test=60, seed=1)
    return root


def tiny_config(data_root: Path, out: Path, **overrides) -> DCGANConfig:
    values = dict(data_root=str(data_root), output_dir=str(out), epochs=1, batch_size=64, generator_width=8,
                  discriminator_width=8, sample_every=1, save_every=1, diagnostic_samples=0, download=False, seed=3)
    values.update(overrides)
    return build_config(DCGANConfig, "spec", **values)


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "dcgan"
    return train_dcgan(tiny_config(data_root, out, diagnostic_samples=40))


def test_npz_has_chestmnist_format_and_loads_into_unit_range(data_root):
    with np.load(data_root / "chestmnist.npz") as npz:
        assert sorted(npz.files) == sorted(f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels"))
        assert npz["train_images"].shape == (300, 28, 28) and npz["train_images"].dtype == np.uint8
        assert npz["test_labels"].shape == (60, len(LABEL_NAMES)) and npz["test_labels"].dtype == np.uint8
    import medmnist  # the real reader accepts the file

    assert medmnist.ChestMNIST(split="val", root=str(data_root)).imgs.shape == (40, 28, 28)
    data = load_xray_dataset(data_root, download=False)
    assert data.train_images.shape == (300, 1, 28, 28) and data.train_images.dtype == torch.float32
    assert -1.0 <= float(data.train_images.min()) and float(data.train_images.max()) <= 1.0
    assert data.source == f"ChestMNIST (MedMNIST v2), {data_root / 'chestmnist.npz'}" and not data.is_phantom
    assert len(load_xray_dataset(data_root, download=False, max_train_images=100).train_images) == 100


def test_phantom_is_seeded_labelled_and_chest_shaped(tmp_path):
    a, labels = make_phantom_xrays(200, seed=5)
    b, _ = make_phantom_xrays(200, seed=5)
    assert a.shape == (200, 28, 28) and a.dtype == np.uint8 and labels.shape == (200, 14)
    assert np.array_equal(a, b) and not np.array_equal(a, make_phantom_xrays(200, seed=6)[0])
    mean = a.astype(float).mean(0)
    lungs, spine = mean[8:18, [6, 7, 8, 19, 20, 21]].mean(), mean[6:20, 13:15].mean()
    assert lungs < spine - 40  # dark lung fields either side of a bright spine
    data = load_xray_dataset(tmp_path, allow_phantom=True, download=False, max_train_images=64)
    assert data.is_phantom and data.source == PHANTOM_SOURCE and len(data.train_images) == 64


def test_one_epoch_writes_the_checkpoint(trained):
    losses = [json.loads(line) for line in (trained / "losses.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == [1]
    assert {"epoch", "d_loss", "g_loss", "d_x", "d_g_z", "seconds"} <= set(losses[0])
    assert all(np.isfinite(losses[0][k]) for k in ("d_loss", "g_loss", "d_x", "d_g_z"))
    assert 0 < losses[0]["d_x"] < 1 and 0 < losses[0]["d_g_z"] < 1
    config = json.loads((trained / "config.json").read_text())
    assert config["latent_dim"] == 100 and config["image_size"] == 28 and "ChestMNIST" in config["data_source"]
    assert len(config["data"]["train_fingerprint"]) == 16  # eval/gan.py checks it rebuilt the same images
    grid = Image.open(trained / "grid.png")
    assert grid.size == ((8 * 30 + 2) * 2, (4 * 30 + 2) * 2)  # 8×4 images of 28 px, 2 px padding, shown 2×
    assert (trained / "samples" / "epoch_0001.png").is_file()
    assert json.loads((trained / "training_state" / "state.json").read_text())["epoch"] == 1
    card = (trained / "README.md").read_text()
    assert card.startswith("---\n") and "datasets:" in card and "ChestMNIST" in card and "| diagnostic |" in card
    diagnostics = json.loads((trained / "diagnostics.json").read_text())
    assert diagnostics["num_generated"] == 40 and diagnostics["frechet"]["floor_train_vs_heldout"] >= 0
    pickles = [p for p in trained.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    assert not pickles


def test_same_seed_gives_same_samples(trained):
    generator = load_generator(trained)
    a, b = sample_images(generator, seed=7, n=5), sample_images(generator, seed=7, n=5)
    assert a.shape == (5, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, sample_images(generator, seed=8, n=5))
    assert float(a.abs().max()) <= 1.0
    # image i depends only on latent i (batch norm in inference mode); kernels may round differently per batch size
    assert torch.allclose(sample_images(generator, seed=7, n=2), a[:2], atol=1e-6)
    assert latent_interpolation(generator, 1, 2, steps=6).shape == (6, 1, 28, 28)


def test_reloaded_generator_gives_bit_identical_samples(tmp_path):
    torch.manual_seed(0)
    generator = Generator(latent_dim=100, width=8)
    generator.train()
    for _ in range(3):  # move the batch-norm running statistics away from their initial values
        generator(torch.randn(16, 100))
    save_generator(tmp_path / "g", generator, {"data_source": "test"})
    reloaded = load_generator(tmp_path / "g")
    assert torch.equal(sample_images(generator, 11, 8), sample_images(reloaded, 11, 8))
    assert reloaded.config["data_source"] == "test"


def test_load_generator_errors_are_one_sentence(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_generator(tmp_path / "missing")
    save_generator(tmp_path / "g", Generator(width=8))
    (tmp_path / "g" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UserError, match="corrupt"):
        load_generator(tmp_path / "g")


def test_resume_continues_the_epoch_count_exactly(trained, data_root, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(trained, resumed)
    train_dcgan(tiny_config(data_root, resumed, epochs=2, resume=True))
    losses = [json.loads(line) for line in (resumed / "losses.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in losses] == [1, 2]
    assert json.loads((resumed / "training_state" / "state.json").read_text())["epoch"] == 2
    assert sorted(p.name for p in (resumed / "samples").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    # 1 epoch + resume 1 epoch == 2 epochs straight (same RNG stream, optimizer state and batch-norm statistics)
    straight = train_dcgan(tiny_config(data_root, tmp_path / "straight", epochs=2))
    assert torch.equal(sample_images(load_generator(resumed), 0, 8), sample_images(load_generator(straight), 0, 8))
    with pytest.raises(UserError, match="already trained 2 epochs"):
        train_dcgan(tiny_config(data_root, resumed, epochs=2, resume=True))


def test_missing_chestmnist_is_one_sentence_and_the_unreachable_data_exit_status(tmp_path):
    from rlhflab.errors import DATASET_UNAVAILABLE_EXIT

    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(REPO / "training" / "dcgan.py"), "--data-root", str(empty),
                           "--no-download", "--output-dir", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == DATASET_UNAVAILABLE_EXIT == 4  # the pipeline reads it to suggest --stand-in-data
    message = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "\n" not in message
    assert "chestmnist.npz" in message and str(empty.resolve()) in message
    assert not re.search(r"\.\s+\S", message)  # one sentence
    assert not (tmp_path / "out").exists()


def test_download_failure_without_network_is_the_same_sentence(tmp_path, monkeypatch, capsys):
    import medmnist.dataset

    def no_network(self):
        raise RuntimeError("Automatic download failed!\n    (multi-line medmnist text)")

    monkeypatch.setattr(medmnist.dataset.MedMNIST, "download", no_network)
    config = build_config(DCGANConfig, "spec", data_root=str(tmp_path), output_dir=str(tmp_path / "out"))
    with pytest.raises(SystemExit) as exit_info:
        cli_main(train_dcgan)(config)  # as training/dcgan.py runs it
    assert exit_info.value.code == 4  # a dataset that could not be reached (rlhflab.errors.DATASET_UNAVAILABLE_EXIT)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "chestmnist.npz" in err and str(tmp_path) in err


def test_ms_ssim_is_one_for_identical_and_lower_for_different_images():
    images = torch.from_numpy(make_phantom_xrays(8, seed=2)[0]).float().div(127.5).sub(1).unsqueeze(1)
    assert torch.allclose(ms_ssim(images, images), torch.ones(8), atol=1e-5)
    noise = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert float(ms_ssim(images, noise).max()) < 0.3
    similar = ms_ssim(images[:4], images[4:])  # different phantoms share the chest layout
    assert float(ms_ssim(images[:4], noise[:4]).mean()) < float(similar.mean()) < 1.0


def test_memorisation_distance_of_training_images_to_themselves_is_zero(data_root):
    data = load_xray_dataset(data_root, download=False)
    dist, idx = nearest_neighbour_l2(data.train_images[:50], data.train_images)
    assert torch.equal(dist, torch.zeros(50)) and torch.equal(data.train_images[idx], data.train_images[:50])
    held, _ = nearest_neighbour_l2(data.test_images, data.train_images)
    assert float(held.min()) > 0


def test_frechet_distance_is_zero_for_the_same_features_and_grows_with_a_shift():
    feats = torch.randn(500, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert abs(frechet_distance(feats, feats)) < 1e-6
    assert frechet_distance(feats, feats + 0.5) == pytest.approx(16 * 0.25, rel=1e-6)


def test_evaluate_generator_writes_diagnostics(trained, tmp_path, capsys):
    out = tmp_path / "diag.json"
    evaluate_generator(build_config(GANEvalConfig, checkpoint=str(trained), num_samples=30, output=str(out)))
    diagnostics = json.loads(out.read_text())
    assert diagnostics["num_generated"] == 30 and diagnostics["memorisation"]["heldout_to_train_l2"]["median"] > 0
    assert "NOT comparable to Inception FID" in diagnostics["frechet"]["note"]
    assert "| diagnostic |" in capsys.readouterr().out


def test_grid_is_8_by_4():
    grid = make_grid_png(torch.zeros(32, 1, 28, 28), nrow=8)
    assert grid.size == (8 * 30 + 2, 4 * 30 + 2) and grid.mode == "L"
