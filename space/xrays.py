"""Chest X-rays tab: an 8×4 grid of DCGAN samples from a seed, a latent interpolation between two seeds, PNG
downloads, and the generator's model card. A PHANTOM-trained generator is labelled as such everywhere."""
from __future__ import annotations

import tempfile
from pathlib import Path

import gradio as gr

from rlhflab.errors import UserError
from rlhflab.gan.data import PHANTOM_NOTICE
from rlhflab.gan.networks import GRID_IMAGES, latent_interpolation, make_grid_png, sample_images
from space.registry import Registry

GRID_COLUMNS = 8  # 32 images -> 8 × 4
DISPLAY_SCALE = 4  # 28-pixel images enlarged by pixel repetition
MAX_SEED = 2**31 - 1
STEPS_RANGE = (2, 16)
GAN_CONCURRENCY = 2


def is_phantom(generator) -> bool:
    config = getattr(generator, "config", {}) or {}
    return bool(config.get("is_phantom")) or "PHANTOM" in str(config.get("data_source", "")).upper()


def data_label(generator) -> str:
    config = getattr(generator, "config", {}) or {}
    if is_phantom(generator):
        return f"⚠️ **{PHANTOM_NOTICE}.** This generator never saw a radiograph; its samples are not chest X-rays."
    source = config.get("data_source")
    return f"Trained on: {source}." if source else "The checkpoint does not say what data it was trained on."


def _seed(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a whole number, got {value!r}.") from None
    if number != int(number) or not 0 <= number <= MAX_SEED:
        raise gr.Error(f"{name} must be a whole number from 0 to {MAX_SEED}, got {value!r}.")
    return int(number)


def build_xrays_tab(registry: Registry, demo: gr.Blocks) -> None:
    """The Chest X-rays tab."""
    png_dir = Path(tempfile.mkdtemp(prefix="rlhflab-xrays-"))
    with gr.Tab("Chest X-rays", id="xrays"):
        notice = gr.Markdown(elem_id="xrays-notice")
        with gr.Row():
            with gr.Column(scale=1, min_width=220):
                seed = gr.Number(value=0, precision=0, label="Seed (same seed, same images)")
                sample_btn = gr.Button("Sample 8×4 grid", variant="primary", elem_id="sample-btn")
                gr.Markdown("**Latent interpolation** (spherical, between the first latent of each seed)")
                seed_a = gr.Number(value=0, precision=0, label="From seed")
                seed_b = gr.Number(value=1, precision=0, label="To seed")
                steps = gr.Slider(*STEPS_RANGE, value=8, step=1, label="Steps")
                interp_btn = gr.Button("Interpolate")
            with gr.Column(scale=3):
                grid = gr.Image(label="Generated samples (8×4)", type="pil", format="png", interactive=False,
                                buttons=["download", "fullscreen"], elem_id="xray-grid")
                caption = gr.Markdown(elem_id="xray-caption")
                with gr.Accordion("Grid PNG at full resolution (28-pixel tiles)", open=False):
                    grid_file = gr.File(label="grid PNG", interactive=False)
                interp = gr.Image(label="Latent interpolation", type="pil", format="png", interactive=False,
                                  buttons=["download", "fullscreen"], elem_id="xray-interp", height=180)
        with gr.Accordion("Generator model card", open=False):
            card = gr.Markdown(elem_id="xray-card")

    def generator():
        try:
            return registry.generator()
        except UserError as exc:
            raise gr.Error(str(exc)) from None

    def sample_xrays(seed):
        """An 8×4 grid of generated 28×28 images for a seed (shown 4× enlarged), and the full-resolution PNG."""
        seed = _seed(seed, "seed")
        gen = generator()
        images = sample_images(gen, seed, GRID_IMAGES)
        path = png_dir / f"xray-grid-seed{seed}.png"
        make_grid_png(images, nrow=GRID_COLUMNS).save(path)
        text = f"Seed {seed}: {GRID_IMAGES} samples, 28×28 each, shown {DISPLAY_SCALE}× enlarged."
        if is_phantom(gen):
            text = f"⚠️ **PHANTOM-trained generator — these are not chest X-rays.** {text}"
        return make_grid_png(images, nrow=GRID_COLUMNS, scale=DISPLAY_SCALE), str(path), text

    def interpolate(seed_a, seed_b, steps):
        """Images along the latent path from seed_a to seed_b."""
        seed_a, seed_b = _seed(seed_a, "seed_a"), _seed(seed_b, "seed_b")
        try:
            n = int(steps)
        except (TypeError, ValueError):
            raise gr.Error(f"steps must be a whole number, got {steps!r}.") from None
        gen = generator()
        images = latent_interpolation(gen, seed_a, seed_b, n)
        return make_grid_png(images, nrow=len(images), scale=DISPLAY_SCALE)

    def xray_card():
        """The generator's model card and what data it saw (PHANTOM-trained generators are labelled)."""
        res = registry.resolve("dcgan")
        if not res.available:
            return f"⚠️ {registry.missing_message(res)}", ""
        try:
            gen = registry.generator()
        except UserError as exc:
            return f"⚠️ {exc}", ""
        text = registry.card("dcgan") or "*This checkpoint has no model card (README.md).*"
        return f"{data_label(gen)}\n\nLoaded from {registry.loaded_from.get('dcgan', res.detail)}.", text

    common = dict(concurrency_id="dcgan", concurrency_limit=GAN_CONCURRENCY)
    sample_btn.click(sample_xrays, [seed], [grid, grid_file, caption], api_name="sample_xrays", **common)
    interp_btn.click(interpolate, [seed_a, seed_b, steps], [interp], api_name="interpolate", **common)
    gr.on([demo.load], xray_card, None, [notice, card], api_name="xray_card")
