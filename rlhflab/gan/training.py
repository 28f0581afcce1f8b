"""DCGAN training on ChestMNIST (or the PHANTOM stand-in): the epoch loop, the resumable training state and the
model card. training/dcgan.py is its command line; rlhflab/gan/networks.py holds the networks and diagnostics.

The checkpoint folder (Hub layout) holds the generator (model.safetensors + config.json), the resumable
training state (discriminator, optimizers, RNG, epoch: safetensors + json), losses.jsonl, fixed-noise
grids under samples/, grid.png (8×4), diagnostics.json and a model card. It is rewritten atomically every
save_every epochs, so an interruption loses at most that many epochs."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from rlhflab.config import DCGANConfig, as_dict
from rlhflab.errors import UserError
from rlhflab.gan.data import NPZ_NAME, PHANTOM_NOTICE, XrayDataset, load_xray_dataset
from rlhflab.gan.diagnostics import diagnostics_table, gan_diagnostics
from rlhflab.gan.networks import (
    DIAGNOSTICS_FILE,
    GENERATOR_FILE,
    GRID_FILE,
    GRID_IMAGES,
    Discriminator,
    Generator,
    count_parameters,
    dcgan_weights_init,
    generate,
    make_grid_png,
    png_bytes,
    sample_latents,
    save_generator,
    train_step,
)
from rlhflab.models.hardware import best_device, hardware_description
from rlhflab.store.cards import command_line, markdown_table, write_model_card
from rlhflab.store.checkpoints import save_atomically
from rlhflab.store.hub import report_push
from rlhflab.store.jsonio import append_jsonl, read_jsonl, write_json

STATE_DIR = "training_state"


LOSSES_FILE = "losses.jsonl"


SAMPLES_DIR = "samples"


GRID_SCALE = 2  # saved grids repeat each pixel 2×2 so 28-pixel images are visible on a model card


def _optimizer_to_files(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"{pid}.{key}": value.detach().cpu().contiguous()
               for pid, state in sd["state"].items() for key, value in state.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def _optimizer_from_files(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(folder: Path, discriminator, opt_g, opt_d, epoch: int, config: DCGANConfig) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in discriminator.state_dict().items()},
              str(folder / "discriminator.safetensors"))
    for name, opt in (("optimizer_generator", opt_g), ("optimizer_discriminator", opt_d)):
        tensors, meta = _optimizer_to_files(opt)
        save_file(tensors, str(folder / f"{name}.safetensors"))
        write_json(folder / f"{name}.json", meta)
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state()
    save_file(rng, str(folder / "rng.safetensors"))
    write_json(folder / "state.json", {"epoch": epoch, "config": as_dict(config)})


def _no_state_error(out: Path) -> UserError:
    return UserError(f"--resume: {out} holds no training state ({STATE_DIR}/state.json); "
                     f"run without --resume to start from scratch.")


def load_training_state(out: Path, generator, discriminator, opt_g, opt_d, config: DCGANConfig) -> int:
    """Restore everything from a checkpoint folder; returns the number of epochs already done."""
    state_dir = out / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise _no_state_error(out)
    state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    saved = state.get("config", {})
    for key in ("latent_dim", "generator_width", "discriminator_width"):
        if key in saved and saved[key] != getattr(config, key):
            raise UserError(f"--resume: {out} was trained with --{key.replace('_', '-')} {saved[key]}, "
                            f"not {getattr(config, key)}; pass the same value to continue it.")
    epoch = int(state["epoch"])
    if epoch >= config.epochs:
        raise UserError(f"--resume: {out} has already trained {epoch} epochs; pass --epochs larger than {epoch} "
                        f"to train further.")
    try:
        generator.load_state_dict(load_file(str(out / GENERATOR_FILE)))
        discriminator.load_state_dict(load_file(str(state_dir / "discriminator.safetensors")))
        for name, opt in (("optimizer_generator", opt_g), ("optimizer_discriminator", opt_d)):
            meta = json.loads((state_dir / f"{name}.json").read_text(encoding="utf-8"))
            _optimizer_from_files(opt, load_file(str(state_dir / f"{name}.safetensors")), meta)
        rng = load_file(str(state_dir / "rng.safetensors"))
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"--resume: the training state in {out} does not load ({type(exc).__name__}); "
                        f"it is incomplete or corrupt — run without --resume to start again.") from None
    for opt in (opt_g, opt_d):  # flags given now win over the saved hyperparameters
        for group in opt.param_groups:
            group["lr"], group["betas"] = config.lr, (config.beta1, config.beta2)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return epoch


def _shown_path(path: str) -> str:
    """A path as a reader of the card would type it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def write_card(folder: Path, config: DCGANConfig, data: XrayDataset, generator, discriminator,
               history: list[dict], epoch: int, diagnostics: dict | None, train_seconds: float) -> None:
    finished = epoch >= config.epochs
    where = config.push_to_hub or _shown_path(config.output_dir)
    hyper = dict(epochs=config.epochs, epochs_trained=epoch, batch_size=config.batch_size, lr=config.lr,
                 betas=[config.beta1, config.beta2], loss="BCE (non-saturating generator loss)",
                 latent_dim=config.latent_dim, generator_width=config.generator_width,
                 discriminator_width=config.discriminator_width, train_images=len(data.train_images),
                 seed=config.seed)
    tags = ["dcgan", "gan", "unconditional-image-generation", "chest-x-ray", "rlhflab"]
    if data.is_phantom:
        tags += ["phantom", "synthetic-data", "not-medical-data"]
        data_text = (f"**{PHANTOM_NOTICE}.** This generator has never seen a radiograph: it was trained on "
                     f"{len(data.train_images):,} procedurally generated 28×28 images (numpy geometry: lung fields, "
                     f"heart, spine, ribs, clavicles, opacity blobs), made because `chestmnist.npz` was not "
                     f"available. Its samples say nothing about real chest X-rays. Source: {data.source}.")
        datasets = []  # no Hub data set: the images were generated on the spot
    else:
        data_text = (f"ChestMNIST from MedMNIST v2 (Yang et al. 2023): 28×28 grayscale frontal chest X-rays "
                     f"downsampled from NIH ChestX-ray14, 14 multi-label findings; {len(data.train_images):,} "
                     f"training images used. Source: {data.source}. License of the data: CC BY 4.0.")
        datasets = ["albertvillanova/medmnist-v2"]  # the Hub copy of MedMNIST v2 (holds chestmnist.npz)
    last = history[-1] if history else {}
    loss_rows = [[r["epoch"], f"{r['d_loss']:.3f}", f"{r['g_loss']:.3f}", f"{r['d_x']:.3f}", f"{r['d_g_z']:.3f}",
                  f"{r['seconds']:.1f}"] for r in history[-5:]]
    sections = {
        "Data": data_text,
        "Model": (f"DCGAN (Radford et al. 2016). Generator: latent {config.latent_dim} → 1×28×28 through transposed "
                  f"convolutions 1→7→14→28 with batch norm and ReLU, tanh output in [-1, 1] "
                  f"({count_parameters(generator):,} parameters). Discriminator: 4 strided convolutions "
                  f"28→14→7→4→1, batch norm, LeakyReLU(0.2), sigmoid ({count_parameters(discriminator):,} "
                  f"parameters). Weights initialised N(0, 0.02); batch-norm scale N(1, 0.02)."),
        "Training": (("Finished" if finished else f"**In progress**: saved at epoch {epoch} of {config.epochs}")
                     + f". Adam lr {config.lr}, betas ({config.beta1}, {config.beta2}), batch {config.batch_size}, "
                     f"BCE loss. Training time {train_seconds / 60:.1f} min on {hardware_description()}.\n\n"
                     f"Command: `{command_line()}`\n\nLast epochs (`losses.jsonl` has all; D(x) and D(G(z)) are "
                     f"the discriminator's mean probability of \"real\" on real and on generated batches):\n\n"
                     + markdown_table(["epoch", "d_loss", "g_loss", "D(x)", "D(G(z))", "seconds"], loss_rows)),
        "Samples": (f"![8×4 samples, seed {config.seed}]({GRID_FILE})\n\n`{GRID_FILE}`: 32 samples from seed "
                    f"{config.seed}; `{SAMPLES_DIR}/epoch_XXXX.png`: the same fixed noise during training."
                    + (" **These are PHANTOM-trained samples, not chest X-rays.**" if data.is_phantom else "")),
        "Diagnostics": (diagnostics_table(diagnostics) + f"\n\n{diagnostics['frechet']['note']} Measured on "
                        f"{diagnostics['num_generated']} generated and {diagnostics['num_real_heldout']} held-out "
                        f"(test split) images; `{DIAGNOSTICS_FILE}` has every number. Re-run: "
                        f"`python eval/gan.py --checkpoint {where}`."
                        if diagnostics else "Not computed yet (they run when training finishes), or skipped."),
        "Use": ("```python\nfrom rlhflab.gan.networks import load_generator, sample_images, make_grid_png\n"
                f"generator = load_generator(\"{where}\")  # a checkpoint folder or a Hub repo id\n"
                "make_grid_png(sample_images(generator, seed=0, n=32), nrow=8).save(\"grid.png\")\n```"),
        "Limitations": ("28×28 images: no diagnostic detail survives at this size. Not for clinical use, "
                        "diagnosis or data augmentation of medical models without validation."),
    }
    metadata = {"library_name": "pytorch", "pipeline_tag": "unconditional-image-generation", "tags": tags,
                "datasets": datasets, "hyperparameters": hyper}
    if not data.is_phantom:
        metadata["license"] = "cc-by-4.0"
    if last:
        metadata["final_losses"] = {k: round(float(last[k]), 4) for k in ("d_loss", "g_loss", "d_x", "d_g_z")}
    if diagnostics:
        metadata["diagnostics"] = {
            "pairwise_l2_ratio": round(diagnostics["pairwise_l2"]["ratio"], 4),
            "ms_ssim_generated": round(diagnostics["ms_ssim"]["generated_pairs"], 4),
            "ms_ssim_real": round(diagnostics["ms_ssim"]["real_pairs"], 4),
            "nn_l2_ratio_of_medians": round(diagnostics["memorisation"]["ratio_of_medians"], 4),
            "frechet_small_cnn": round(diagnostics["frechet"]["generated_vs_heldout"], 4),
            "frechet_small_cnn_real_floor": round(diagnostics["frechet"]["floor_train_vs_heldout"], 4)}
    title = "DCGAN chest X-ray generator" + (" — PHANTOM-trained (not real X-rays)" if data.is_phantom else " (ChestMNIST)")
    write_model_card(folder, metadata, title, sections)


def epoch_batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """One epoch's batches: slices of a fresh permutation of the resident images, full batches only (a tiny
    last batch would make batch-norm statistics noisy)."""
    perm = torch.randperm(len(images), device=images.device)
    for i in range(len(images) // batch_size):
        yield images[perm[i * batch_size:(i + 1) * batch_size]]


def train_epoch(generator: Generator, discriminator: Discriminator, opt_g, opt_d, images: torch.Tensor,
                batch_size: int, on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One pass over `images` (already on the training device); returns the epoch's mean
    [d_loss, g_loss, D(x), D(G(z))]. on_step(i, running totals) runs after each step (a progress bar)."""
    generator.train()
    discriminator.train()
    steps = len(images) // batch_size
    totals = torch.zeros(4, device=images.device)
    for i, real in enumerate(epoch_batches(images, batch_size)):
        totals += train_step(generator, discriminator, opt_g, opt_d, real)
        if on_step is not None:
            on_step(i, totals)
    return totals / max(steps, 1)


@dataclass
class _Run:
    """What the phases of one training run share."""
    config: DCGANConfig
    out: Path
    data: XrayDataset
    generator: Generator
    discriminator: Discriminator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    start_epoch: int = 0
    history: list[dict] = field(default_factory=list)  # one losses.jsonl record per epoch
    samples: dict[str, bytes] = field(default_factory=dict)  # samples/epoch_XXXX.png name -> PNG bytes


def _check(config: DCGANConfig) -> None:
    if config.batch_size < 2:
        raise UserError("--batch-size must be at least 2 (batch norm needs more than one image).")
    if config.sample_every < 1 or config.save_every < 1 or config.epochs < 1:
        raise UserError("--epochs, --sample-every and --save-every must be at least 1.")


def _load_data(config: DCGANConfig) -> XrayDataset:
    data = load_xray_dataset(config.data_root, allow_phantom=config.allow_phantom, download=config.download,
                             max_train_images=config.max_train_images, seed=config.seed)
    print(f"data: {data.source} — {len(data.train_images):,} training images", flush=True)
    if data.is_phantom:
        print(f"      (no {NPZ_NAME} in {Path(config.data_root).resolve()}: training on the PHANTOM set, "
              f"synthetic and not medical data; put the file there to train on ChestMNIST)", flush=True)
    return data


def _build(config: DCGANConfig, out: Path, data: XrayDataset, device: torch.device) -> _Run:
    """Both networks with DCGAN initialisation, on `device`, and their Adam optimizers."""
    generator = Generator(config.latent_dim, config.generator_width)
    discriminator = Discriminator(config.discriminator_width)
    generator.apply(dcgan_weights_init)
    discriminator.apply(dcgan_weights_init)
    generator.to(device)
    discriminator.to(device)
    betas = (config.beta1, config.beta2)
    opt_g = torch.optim.Adam(generator.parameters(), lr=config.lr, betas=betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=config.lr, betas=betas)
    return _Run(config, out, data, generator, discriminator, opt_g, opt_d)


def _resume(run: _Run) -> None:
    """Weights, optimizers, RNG, losses and sample grids up to the saved epoch."""
    run.start_epoch = load_training_state(run.out, run.generator, run.discriminator, run.opt_g, run.opt_d, run.config)
    run.history = [r for r in read_jsonl(run.out / LOSSES_FILE) if r.get("epoch", 0) <= run.start_epoch]
    run.samples = {p.name: p.read_bytes() for p in sorted((run.out / SAMPLES_DIR).glob("epoch_*.png"))
                   if int(p.stem.split("_")[1]) <= run.start_epoch}
    print(f"resuming {run.out} after epoch {run.start_epoch}", flush=True)


def _save(run: _Run, epoch: int, fixed_noise: torch.Tensor, diagnostics: dict | None = None) -> None:
    """The whole checkpoint folder, swapped in atomically."""
    config, data = run.config, run.data

    def write(tmp: Path) -> None:
        save_generator(tmp, run.generator, {"data_source": data.source, "is_phantom": data.is_phantom,
                                            "data": data.description, "epochs_trained": epoch,
                                            "discriminator_width": config.discriminator_width})
        save_training_state(tmp / STATE_DIR, run.discriminator, run.opt_g, run.opt_d, epoch, config)
        for record in run.history:
            append_jsonl(tmp / LOSSES_FILE, record)
        (tmp / SAMPLES_DIR).mkdir()
        for name, png in run.samples.items():
            (tmp / SAMPLES_DIR / name).write_bytes(png)
        (tmp / GRID_FILE).write_bytes(png_bytes(make_grid_png(generate(run.generator, fixed_noise), scale=GRID_SCALE)))
        if diagnostics:
            write_json(tmp / DIAGNOSTICS_FILE, diagnostics)
        write_card(tmp, config, data, run.generator, run.discriminator, run.history, epoch, diagnostics,
                   sum(r["seconds"] for r in run.history))

    save_atomically(run.out, write)


def _train(run: _Run, device: torch.device, fixed_noise: torch.Tensor) -> None:
    """Epochs start_epoch+1 .. config.epochs: a loss record each, a sample grid every sample_every, a
    checkpoint every save_every (the last one is saved after the diagnostics)."""
    config = run.config
    images = run.data.train_images.to(device)
    batch = min(config.batch_size, len(images))
    steps = len(images) // batch
    bar = tqdm(total=steps * (config.epochs - run.start_epoch), unit="step", dynamic_ncols=True,
               desc="dcgan", disable=None)
    for epoch in range(run.start_epoch + 1, config.epochs + 1):
        t0 = time.perf_counter()

        def progress(i: int, totals: torch.Tensor) -> None:
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(epoch=epoch, d_loss=f"{totals[0] / (i + 1):.3f}", g_loss=f"{totals[1] / (i + 1):.3f}")

        means = train_epoch(run.generator, run.discriminator, run.opt_g, run.opt_d, images, batch, progress)
        d_loss_m, g_loss_m, d_x, d_g_z = means.tolist()
        record = {"epoch": epoch, "d_loss": d_loss_m, "g_loss": g_loss_m, "d_x": d_x, "d_g_z": d_g_z,
                  "seconds": round(time.perf_counter() - t0, 3), "steps": steps, "images": steps * batch}
        run.history.append(record)
        tqdm.write(f"epoch {epoch}/{config.epochs}  d_loss {d_loss_m:.3f}  g_loss {g_loss_m:.3f}  "
                   f"D(x) {d_x:.3f}  D(G(z)) {d_g_z:.3f}  {record['seconds']:.1f} s")
        if epoch % config.sample_every == 0 or epoch == config.epochs:
            grid = make_grid_png(generate(run.generator, fixed_noise), scale=GRID_SCALE)
            run.samples[f"epoch_{epoch:04d}.png"] = png_bytes(grid)
        if epoch % config.save_every == 0 and epoch < config.epochs:
            _save(run, epoch, fixed_noise)
    bar.close()


def _diagnose(run: _Run, device: torch.device) -> dict | None:
    if run.config.diagnostic_samples <= 0:
        return None
    print("diagnostics (diversity, memorisation, small-CNN Fréchet distance)...", flush=True)
    run.generator.cpu()
    diagnostics = gan_diagnostics(run.generator, run.data, num_samples=run.config.diagnostic_samples,
                                  seed=run.config.seed)
    run.generator.to(device)
    return diagnostics


def train_dcgan(config: DCGANConfig) -> Path:
    """Train (or resume), save the checkpoint every config.save_every epochs and at the end; returns its folder."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    _check(config)
    wall0 = time.perf_counter()
    torch.manual_seed(config.seed)
    device = best_device()
    # cuDNN's fastest convolution kernels add in a varying order; the deterministic ones make a resumed run
    # repeat the uninterrupted one exactly on a GPU too (as it does on a CPU). Small 28x28 layers lose little.
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    out = Path(config.output_dir)
    if config.resume and not (out / STATE_DIR / "state.json").is_file():  # before spending time on the data
        raise _no_state_error(out)
    run = _build(config, out, _load_data(config), device)
    if config.resume:
        _resume(run)
    fixed_noise = sample_latents(config.seed, GRID_IMAGES, config.latent_dim)
    _train(run, device, fixed_noise)
    diagnostics = _diagnose(run, device)
    _save(run, config.epochs, fixed_noise, diagnostics)
    if diagnostics:
        print(diagnostics_table(diagnostics))
    last = run.history[-1] if run.history else {}
    print(f"saved {out} ({config.epochs} epochs; final d_loss {last.get('d_loss', float('nan')):.3f}, "
          f"g_loss {last.get('g_loss', float('nan')):.3f}; wall time {time.perf_counter() - wall0:.0f} s)")
    report_push(out, config.push_to_hub)
    return out
