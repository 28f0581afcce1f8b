"""The three policies (base, full PPO, LoRA PPO), loaded lazily, with base and LoRA sharing one set of weights.

The LoRA adapter is attached to the loaded base model; "base" runs it with the adapter
disabled, "lora" with it enabled. A lock per underlying model keeps concurrent users from
switching the adapter under each other.
"""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field

import torch

from rlhflab.checkpoints import resolve_checkpoint
from rlhflab.errors import UserError
from rlhflab.models import attach_adapter, best_device, is_adapter_checkpoint, load_causal_lm

POLICY_NAMES = ("base", "full", "lora")


@dataclass
class PolicySet:
    base_model: str
    full_path: str | None = None
    lora_path: str | None = None
    dtype: torch.dtype = torch.float32
    _base: tuple | None = field(default=None, repr=False)
    _full: tuple | None = field(default=None, repr=False)
    _lora_attached: bool = field(default=False, repr=False)
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _base_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _full_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def source(self, name: str) -> str | None:
        return {"base": self.base_model, "full": self.full_path, "lora": self.lora_path}[name]

    def _load_base(self):
        if self._base is None:
            model, tok = load_causal_lm(self.base_model, self.dtype)
            self._base = (model.to(best_device()).eval(), tok)
        return self._base

    def _attach_lora(self):
        with self._base_lock:  # attaching changes the shared model: never under a running base generation
            self._attach_lora_locked()

    def _attach_lora_locked(self):
        if self._lora_attached:
            return
        path = resolve_checkpoint(self.lora_path)
        if not is_adapter_checkpoint(path):
            raise UserError(f"{self.lora_path} is not a LoRA adapter checkpoint (no adapter_config.json).")
        base_name = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        model, tok = self._load_base()
        peft_model = attach_adapter(model, path)
        peft_model.eval()
        self._base = (peft_model, tok)
        self._lora_attached = True
        self.lora_base_name = base_name

    def _load_full(self):
        if self._full is None:
            path = resolve_checkpoint(self.full_path, required_file="config.json")
            model, tok = load_causal_lm(str(path), self.dtype)
            self._full = (model.to(best_device()).eval(), tok)
        return self._full

    def load(self, name: str) -> None:
        """Load what `name` needs now (raises UserError when its checkpoint is missing or broken)."""
        with self.use(name):
            pass

    @contextlib.contextmanager
    def use(self, name: str):
        """(model, tokenizer) of a policy, held exclusively for the duration of the block."""
        if name not in POLICY_NAMES:
            raise UserError(f"unknown policy {name!r}; choose one of {', '.join(POLICY_NAMES)}.")
        if name != "base" and not self.source(name):
            raise UserError(f"no {name} checkpoint configured.")
        with self._load_lock:
            if name == "full":
                self._load_full()
            else:
                self._load_base()
                if name == "lora":
                    self._attach_lora()
        if name == "full":
            with self._full_lock:
                yield self._full
            return
        with self._base_lock:
            model, tok = self._base
            if self._lora_attached and name == "base":
                with model.disable_adapter():
                    yield model, tok
            else:
                yield model, tok
