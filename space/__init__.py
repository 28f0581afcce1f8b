"""The Gradio app (Hugging Face Space layout): one module per tab, and a registry that resolves and caches checkpoints.

`space.demo.build_demo(registry)` builds the Blocks; the top-level `app.py` launches it.
"""
