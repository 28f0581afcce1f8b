"""Every policy the lab knows — the base model and each policy checkpoint, whatever method made it — found by what
its checkpoint says it is (rlhflab.training.policy's card block), loaded lazily, with weights shared where they can be.

LoRA adapters trained on the base model are attached to the one loaded base as named adapters: "base" runs
with adapters disabled, an adapter policy with its adapter set. Full checkpoints (and adapters on another base,
e.g. an SFT run) load as models of their own. One lock per underlying model keeps concurrent users from switching
adapters under each other; policies on different models run at the same time.

Generation goes through one decode loop per underlying model (`serve`, rlhflab.generation.server): every chat,
side-by-side, arena and best-of-n request joins its model's running batch, the base and its adapters in one batch
(each row applying its own adapter). Models the loop cannot run (not Llama-family) keep the locked path (`use`)."""
from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhflab.errors import UserError
from rlhflab.generation.engine import decode_engine, use_decode_weights
from rlhflab.models.hardware import best_device
from rlhflab.models.loading import EMBEDDED_MODELS, attach_adapter, is_adapter_checkpoint, load_causal_lm
from rlhflab.store.cards import read_policy_metadata
from rlhflab.store.checkpoints import resolve_checkpoint
from rlhflab.training.policy import POLICY_METHODS

# Folder names of the store whose app key differs (PPO's historical keys "full" and "lora").
FOLDER_KEYS = {"ppo-full": "full", "ppo-lora": "lora"}


BASE = "base"


def folder_key(folder_name: str) -> str:
    return FOLDER_KEYS.get(folder_name, folder_name)


def policy_label(method: str, mode: str) -> str:
    """'Full PPO', 'LoRA PPO', 'SFT', 'LoRA DPO', ...: the name a person reads."""
    if method == BASE:
        return "Base model"
    name = POLICY_METHODS.get(method, (method.upper(),))[0]
    if mode == "lora":
        return f"LoRA {name}"
    return f"Full {name}" if method == "ppo" else name


@dataclass(frozen=True)
class PolicyEntry:
    key: str
    label: str
    source: str  # local folder or Hub repo id (the base: its model name)
    meta: dict  # the checkpoint's rlhflab block (method, mode, base_model, init_from)

    @property
    def method(self) -> str:
        return self.meta.get("method", BASE)

    @property
    def mode(self) -> str:
        return self.meta.get("mode", "full")


def _order(entry: PolicyEntry) -> tuple:
    methods = list(POLICY_METHODS)
    return (methods.index(entry.method) if entry.method in methods else len(methods), entry.mode != "full", entry.key)


def discover_policies(store: str | Path) -> dict[str, PolicyEntry]:
    """Every policy checkpoint in the local store, keyed by folder (ppo-full/ppo-lora as full/lora), in method
    order (SFT, PPO, DPO, GRPO, ...; full before LoRA). Folders that are not policies are skipped."""
    store = Path(store)
    found = []
    if store.is_dir():
        for folder in sorted(store.iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            meta = read_policy_metadata(folder)
            if meta is None:
                continue
            found.append(PolicyEntry(folder_key(folder.name), policy_label(meta["method"], meta.get("mode", "full")),
                                     str(folder), meta))
    return {e.key: e for e in sorted(found, key=_order)}


def sorted_entries(entries) -> list[PolicyEntry]:
    return sorted(entries, key=_order)


def _same_model(a: str | None, b: str | None) -> bool:
    """Whether two model names mean the same weights (an embedded model's cache folder counts as its name)."""
    if not a or not b:
        return False
    norm = [Path(x).name if Path(x).name in EMBEDDED_MODELS else str(Path(x).resolve()) if Path(x).exists() else x
            for x in (a, b)]
    return norm[0] == norm[1]


@dataclass
class PolicySet:
    """The base model and any number of policy checkpoints (`sources`: key -> folder or Hub id)."""

    base_model: str
    sources: dict[str, str] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    # Decode from weights in another format (rlhflab.generation.engine.use_decode_weights): the app's choice for chat
    # ("fp16" by default, which the engine uses only for an fp32 model on a CPU without native bf16; "int8" on
    # request, at a measured cost in KL: BENCHMARKS.md). The evaluation never sets it: it decodes the model's own.
    decode_weights: str | None = None
    _base: tuple | None = field(default=None, repr=False)
    _attached: set = field(default_factory=set, repr=False)  # adapters living on the shared base
    _own: dict = field(default_factory=dict, repr=False)  # key -> (model, tokenizer) with weights of its own
    _load_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _base_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _locks: dict = field(default_factory=dict, repr=False)
    # One batched decode loop per underlying model (False: every request decodes alone under the model's lock,
    # the path before continuous batching, kept for comparison: RLHFLAB_SERVING=0).
    serving: bool = True
    max_batch: int | None = None  # the loops' batch and queue limits (None: the server's defaults)
    max_queue: int | None = None
    _servers: dict = field(default_factory=dict, repr=False)  # BASE or own key -> DecodeServer
    _unservable: set = field(default_factory=set, repr=False)

    def source(self, name: str) -> str | None:
        return self.base_model if name == BASE else self.sources.get(name)

    def set_source(self, name: str, source: str) -> None:
        """Name a checkpoint for `name` (one that appeared after start-up); a loaded policy keeps its weights."""
        if name != BASE and name not in self._own and name not in self._attached:
            self.sources[name] = source

    def shares_base(self, name: str) -> bool:
        """True when `name` runs on the shared base weights (the base itself, or an adapter trained on it)."""
        if name == BASE or name in self._attached:
            return True
        src = self.sources.get(name)
        if not src or name in self._own:
            return False
        try:
            path = resolve_checkpoint(src)
        except UserError:
            return False
        if not is_adapter_checkpoint(path):
            return False
        adapter_base = json.loads((path / "adapter_config.json").read_text()).get("base_model_name_or_path")
        return _same_model(adapter_base, self.base_model)

    def group(self, name: str) -> str:
        """Which loaded weights `name` runs on: policies of one group take turns, different groups run together."""
        return BASE if self.shares_base(name) else name

    def _load_base(self):
        if self._base is None:
            model, tok = load_causal_lm(self.base_model, self.dtype)
            self._base = (use_decode_weights(model.to(best_device()).eval(), self.decode_weights), tok)
            decode_engine(self._base[0])  # pack the decode weights at load, not in the first chat request
        return self._base

    def _attach(self, name: str):
        server = self._servers.get(BASE)
        # attaching changes the shared model: never under a running generation on it, nor inside a loop's step
        with self._base_lock, (server.step_lock if server is not None else contextlib.nullcontext()):
            if name in self._attached:
                return
            path = resolve_checkpoint(self.sources[name])
            if not is_adapter_checkpoint(path):
                raise UserError(f"{self.sources[name]} is not a LoRA adapter checkpoint (no adapter_config.json).")
            model, tok = self._load_base()
            if self._attached:
                from rlhflab.models.loading import refuse_pickled_weights

                refuse_pickled_weights(path, "LoRA adapter")
                try:
                    model.load_adapter(path, adapter_name=name)
                except Exception as exc:
                    from rlhflab.models.loading import weights_error

                    raise weights_error(path, exc, "LoRA adapter", "re-run the training that wrote it") from None
            else:
                model = attach_adapter(model, path, adapter_name=name)
            model.eval()
            self._base = (model, tok)
            self._attached.add(name)

    def _load_own(self, name: str):
        if name not in self._own:
            from rlhflab.models.loading import load_policy

            path = resolve_checkpoint(self.sources[name])
            model, tok = load_policy(str(path), self.dtype)
            if hasattr(model, "merge_and_unload"):  # an adapter on another base: one plain model
                model = model.merge_and_unload()
            self._own[name] = (use_decode_weights(model.to(best_device()).eval(), self.decode_weights), tok)
            decode_engine(self._own[name][0])
            self._locks[name] = threading.Lock()
        return self._own[name]

    def load(self, name: str) -> None:
        """Load what `name` needs now (raises UserError when its checkpoint is missing or broken)."""
        with self.use(name):
            pass

    @contextlib.contextmanager
    def use(self, name: str):
        """(model, tokenizer) of a policy, held exclusively for the duration of the block."""
        if name != BASE and name not in self.sources:
            known = ", ".join([BASE, *self.sources])
            raise UserError(f"unknown policy {name!r}; choose one of {known}.")
        if name != BASE and not self.sources[name]:
            raise UserError(f"no {name} checkpoint configured.")
        with self._load_lock:
            if name == BASE:
                self._load_base()
            elif self.shares_base(name):
                self._attach(name)
            else:
                self._load_own(name)
        if name in self._own:
            with self._locks[name]:
                yield self._own[name]
            return
        with self._base_lock:
            model, tok = self._base
            if name == BASE and self._attached:
                with model.disable_adapter():
                    yield model, tok
            elif name == BASE:
                yield model, tok
            else:
                model.set_adapter(name)
                yield model, tok

    def serve(self, name: str):
        """(server, adapter, model, tokenizer) for policy `name`: the decode loop of its model (started on first use)
        and the LoRA adapter its rows apply (None: the base or a model of its own). None when serving is off or
        the loop cannot run this model or adapter: then `use` holds the model for one request at a time."""
        if not self.serving:
            return None
        self.load(name)
        with self._load_lock:
            key = name if name in self._own else BASE
            model, tok = self._own[name] if name in self._own else self._base
            adapter = None if name == BASE or name in self._own else name
            if key in self._unservable:
                return None
            server = self._servers.get(key)
            if server is None:
                from rlhflab.generation.server import DecodeServer, Unsupported

                limits = {k: v for k, v in (("max_batch", self.max_batch), ("max_queue", self.max_queue)) if v}
                try:
                    server = self._servers[key] = DecodeServer(model, name="model", **limits)
                except Unsupported:
                    self._unservable.add(key)
                    return None
            if adapter is not None and not server.supports(adapter):
                return None
            return server, adapter, model, tok

    def stream_group(self, name: str) -> str:
        """Which policies must take turns: none that the decode loop serves (each is its own group); the others as
        `group` says."""
        try:
            if self.serve(name) is not None:
                return f"served:{name}"
        except Exception:  # a policy that fails to load reports it in its own stream (side_stream)
            pass
        return self.group(name)
