"""The continuous-batching decode loop (rlhflab.generation.server): greedy rows equal generate() token for token
whatever else is in the batch and whenever they join or leave, per-row LoRA adapters, per-row seeded sampling,
a full queue turned away with the expected wait, and a consumer that leaves freeing its row."""
from __future__ import annotations

import threading
import time

import pytest
import torch

from rlhflab.errors import UserError
from rlhflab.generation.sampling import GenerationSettings, encode_prompts, generate_batch, stream_generate
from rlhflab.generation.server import DecodeServer, ServerBusy
from rlhflab.models.loading import load_causal_lm

PROMPTS = ["Hi", "Tell me something about the weather today please, in detail, with numbers and names.",
           "How are you?", "Write a poem about a cat who sleeps all day long in the sun."]


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    model, tok = load_causal_lm(str(tiny_llama_dir))
    return model.eval(), tok


def _ids(tok, prompt) -> list[int]:
    batch, _ = encode_prompts(tok, [prompt], 256)
    return batch["input_ids"][0].tolist()


def _reference(model, ids, n, **kw) -> list[int]:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, **kw)
    return out[0, len(ids):].tolist()


def _collect(request) -> list[int]:
    return list(request.tokens())


def _wait_for(cond, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return False


def test_greedy_rows_equal_generate_whenever_they_join_and_leave(tiny):
    """Rows of different prompt lengths and budgets join at different steps (some while others run, prompts
    prefilled in chunks of 8) and stop at different steps; each equals its own generate() token for token."""
    model, tok = tiny
    server = DecodeServer(model, max_batch=4, max_queue=16, prefill_tokens=8)
    plan = [(PROMPTS[0], 12, 1.0), (PROMPTS[1], 5, 1.3), (PROMPTS[2], 20, 1.0), (PROMPTS[3], 9, 1.2),
            (PROMPTS[1], 16, 1.0), (PROMPTS[0], 3, 1.1)]
    results: dict[int, list[int]] = {}
    first = server.submit(_ids(tok, plan[0][0]), GenerationSettings(greedy=True, max_new_tokens=plan[0][1],
                                                                     repetition_penalty=plan[0][2]))
    it = first.tokens()
    head = [next(it), next(it), next(it)]  # the first row is decoding before the others arrive
    requests = {}
    for i, (prompt, n, rp) in enumerate(plan[1:], start=1):
        requests[i] = server.submit(_ids(tok, prompt), GenerationSettings(greedy=True, max_new_tokens=n,
                                                                          repetition_penalty=rp))
        if i == 2:
            time.sleep(0.05)  # later requests join some steps after the earlier ones
    results[0] = head + list(it)
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, _collect(requests[i]))) for i in requests]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert max(server.stats.batch_sizes) > 1  # they really were batched
    for i, (prompt, n, rp) in enumerate(plan):
        assert results[i] == _reference(model, _ids(tok, prompt), n, repetition_penalty=rp), i
    assert _wait_for(lambda: server.load() == {"rows": 0, "prefilling": 0, "waiting": 0})
    server.stop()


def test_rows_with_different_lora_adapters_share_the_batch(tiny_llama_dir):
    """Each row applies its own adapter (or none) as peft does: greedy output equals generate() with that adapter
    set (or disabled), all decoded in one batch."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(str(tiny_llama_dir))
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj", "o_proj"])
    peft_model = get_peft_model(model, cfg, adapter_name="first")
    peft_model.add_adapter("second", cfg)
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    server = DecodeServer(peft_model, max_batch=6, prefill_tokens=16)
    plan = [(PROMPTS[1], "first", 10), (PROMPTS[0], None, 8), (PROMPTS[2], "second", 12), (PROMPTS[3], "first", 6),
            (PROMPTS[1], "second", 9), (PROMPTS[1], None, 7)]
    requests = [server.submit(_ids(tok, p), GenerationSettings(greedy=True, max_new_tokens=n,
                                                               repetition_penalty=1.0), adapter)
                for p, adapter, n in plan]
    got = [_collect(r) for r in requests]
    assert max(server.stats.batch_sizes) >= 4
    for (prompt, adapter, n), tokens in zip(plan, got):
        if adapter is None:
            with peft_model.disable_adapter():
                expected = _reference(peft_model, _ids(tok, prompt), n)
        else:
            peft_model.set_adapter(adapter)
            expected = _reference(peft_model, _ids(tok, prompt), n)
        assert tokens == expected, (prompt, adapter)
    assert len({tuple(t) for t, (p, *_) in zip(got, plan) if p == PROMPTS[1]}) == 3  # the adapters matter
    server.stop()


def test_same_seed_same_answer_whatever_else_is_in_the_batch(tiny):
    """Sampling uses each row's own generator: a seeded request gives the same tokens alone, in a busy batch,
    and as generate_batch gives at batch 1 (one generator, the same draws)."""
    model, tok = tiny
    settings = GenerationSettings(max_new_tokens=14, seed=5, temperature=1.5, top_k=40, top_p=0.9,
                                  repetition_penalty=1.1)
    server = DecodeServer(model, max_batch=8, prefill_tokens=16)
    alone = _collect(server.submit(_ids(tok, PROMPTS[1]), settings))
    others = [server.submit(_ids(tok, p), GenerationSettings(max_new_tokens=20, seed=s, temperature=1.0))
              for s, p in enumerate(PROMPTS * 2)]
    busy = server.submit(_ids(tok, PROMPTS[1]), settings)
    busy_tokens = _collect(busy)
    for r in others:
        _collect(r)
    assert busy_tokens == alone
    [reference] = generate_batch(model, tok, [PROMPTS[1]], settings, batch_size=1)
    assert alone[:len(reference.token_ids)] == reference.token_ids
    other_seed = _collect(server.submit(_ids(tok, PROMPTS[1]), GenerationSettings(**{**settings.as_dict(),
                                                                                     "seed": 6})))
    assert other_seed != alone
    server.stop()


def test_best_of_n_rows_share_one_prefill_and_differ(tiny):
    model, tok = tiny
    server = DecodeServer(model, max_batch=8)
    settings = GenerationSettings(max_new_tokens=8, seed=2, temperature=1.5, top_k=0, top_p=1.0)
    gens = generate_batch(model, tok, [PROMPTS[2]] * 4, settings, server=server)
    assert len(gens) == 4 and len({tuple(g.token_ids) for g in gens}) > 1
    assert server.stats.prefill_tokens == len(_ids(tok, PROMPTS[2]))  # one prefill for the four rows
    again = generate_batch(model, tok, [PROMPTS[2]] * 4, settings, server=server)
    assert [g.token_ids for g in again] == [g.token_ids for g in gens]
    server.stop()


def test_stream_generate_through_the_loop_matches_the_direct_path(tiny):
    model, tok = tiny
    server = DecodeServer(model)
    settings = GenerationSettings(greedy=True, max_new_tokens=10)
    direct = stream_generate(model, tok, PROMPTS[1], settings)
    served = stream_generate(None, tok, PROMPTS[1], settings, server=server)
    texts_a, texts_b = list(_drain(direct)), list(_drain(served))
    assert texts_a == texts_b and texts_a[-1][1] == texts_b[-1][1]
    server.stop()


def _drain(gen):
    while True:
        try:
            yield next(gen), None
        except StopIteration as stop:
            yield None, stop.value
            return


def test_a_full_queue_turns_a_visitor_away_with_the_expected_wait(tiny):
    model, tok = tiny
    server = DecodeServer(model, max_batch=1, max_queue=2, name="base model")
    long = server.submit(_ids(tok, PROMPTS[0]), GenerationSettings(greedy=True, max_new_tokens=400))
    it = long.tokens()
    next(it)  # running: the batch (one row) is full
    waiting = [server.submit(_ids(tok, PROMPTS[2]), GenerationSettings(greedy=True, max_new_tokens=4))
               for _ in range(2)]
    t0 = time.monotonic()
    with pytest.raises(ServerBusy, match=r"busy: 2 answers are queued.*about \d+ s") as err:
        server.submit(_ids(tok, PROMPTS[2]), GenerationSettings(greedy=True, max_new_tokens=4))
    assert time.monotonic() - t0 < 1.0 and isinstance(err.value, UserError)  # at once, never a hang
    assert server.stats.rejected == 1
    it.close()  # the long request's consumer leaves: the queue moves on
    assert all(len(_collect(r)) == 4 for r in waiting)
    server.stop()


def test_a_consumer_that_leaves_frees_its_row_at_once(tiny):
    model, tok = tiny
    server = DecodeServer(model, max_batch=2, max_queue=4)
    stream = stream_generate(None, tok, PROMPTS[1], GenerationSettings(greedy=True, max_new_tokens=500),
                             server=server)
    next(stream), next(stream)
    assert server.load()["rows"] == 1
    steps = server.stats.steps
    stream.close()  # the visitor closed the tab: Gradio drops the generator
    assert _wait_for(lambda: server.load()["rows"] == 0, 5)
    assert server.stats.steps - steps <= 2 and server.stats.cancelled == 1
    # a consumer that stops reading without closing is cancelled after abandoned_after_s
    server.abandoned_after_s = 0.2
    silent = server.submit(_ids(tok, PROMPTS[0]), GenerationSettings(greedy=True, max_new_tokens=500))
    assert _wait_for(lambda: silent.cancelled, 10) and _wait_for(lambda: server.load()["rows"] == 0, 5)
    assert silent.finish[0] == "cancelled"
    server.stop()


def test_a_long_answer_does_not_starve_short_ones(tiny):
    """A 512-token request holds one row: short requests sent after it join the batch and finish first."""
    model, tok = tiny
    server = DecodeServer(model, max_batch=4)
    long = server.submit(_ids(tok, PROMPTS[1]), GenerationSettings(greedy=True, max_new_tokens=512))
    it = long.tokens()
    next(it)
    shorts = [server.submit(_ids(tok, p), GenerationSettings(greedy=True, max_new_tokens=8)) for p in PROMPTS[:3]]
    for r in shorts:
        assert len(_collect(r)) == 8
    assert long.rows_left == 1 and long.tokens_out < 512
    assert len([next(it)] + list(it)) + 1 == 512
    server.stop()


def test_a_failing_step_fails_its_requests_not_the_loop(tiny, monkeypatch):
    model, tok = tiny
    server = DecodeServer(model)
    real = server._decode
    monkeypatch.setattr(server, "_decode", lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        _collect(server.submit(_ids(tok, PROMPTS[0]), GenerationSettings(greedy=True, max_new_tokens=5)))
    monkeypatch.setattr(server, "_decode", real)
    assert len(_collect(server.submit(_ids(tok, PROMPTS[0]), GenerationSettings(greedy=True, max_new_tokens=5)))) == 5
    server.stop()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32"])
def test_per_row_adapters_track_the_model_forward_in_the_apps_precision(tiny_llama_dir, dtype):
    """The app's bf16 models (packed for oneDNN where the CPU can, else the exact loop): each row's logits at every
    step of a mixed-adapter batch track the peft model's own full forward with that row's adapter."""
    from peft import LoraConfig, get_peft_model

    model, tok = load_causal_lm(str(tiny_llama_dir), dtype)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"])
    peft_model = get_peft_model(model, cfg, adapter_name="a")
    peft_model.add_adapter("b", cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    peft_model.eval()
    server = DecodeServer(peft_model, max_batch=4, prefill_tokens=8)
    forced = [5, 17, 300, 42, 7, 9]
    plan = [(PROMPTS[1], "a"), (PROMPTS[0], None), (PROMPTS[2], "b"), (PROMPTS[3], "a")]
    requests = [server.submit(_ids(tok, p), GenerationSettings(greedy=True, max_new_tokens=len(forced)), adapter,
                              forced=forced, record_logits=True) for p, adapter in plan]
    for r in requests:
        assert _collect(r) == forced
    for (prompt, adapter), r in zip(plan, requests):
        ids = torch.tensor([_ids(tok, prompt) + forced[:-1]])
        ctx = peft_model.disable_adapter() if adapter is None else _Active(peft_model, adapter)
        with ctx, torch.inference_mode():
            reference = peft_model(input_ids=ids).logits[0, -len(forced):].float()
        got = torch.stack(r.logits)
        tol = 0.05 if dtype == torch.bfloat16 else 1e-4
        assert (got - reference).abs().max() < tol * reference.abs().max(), (prompt, adapter)
    server.stop()


class _Active:
    def __init__(self, model, name):
        self.model, self.name = model, name

    def __enter__(self):
        self.model.set_adapter(self.name)

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("kw", [dict(top_k=50, top_p=0.95), dict(top_k=5, top_p=0.5), dict(top_k=200, top_p=0.05),
                                dict(top_k=0, top_p=0.9), dict(top_k=20, top_p=1.0), dict(greedy=True)])
def test_the_loops_top_p_keeps_what_the_processors_keep(kw):
    from rlhflab.generation.sampling import logits_processors
    from rlhflab.generation.server import process_scores

    settings = GenerationSettings(temperature=0.8, repetition_penalty=1.2, no_repeat_ngram_size=2, **kw)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        history = torch.randint(0, 1000, (1, 30), generator=gen)
        scores = torch.randn(1, 1000, generator=gen) * 3
        scores[0, :40] = scores[0, 40]  # ties at the top-k boundary
        expected = logits_processors(settings)(history, scores.clone())
        got = process_scores(settings, history, scores.clone())
        assert torch.equal(torch.isfinite(got), torch.isfinite(expected))
        assert torch.allclose(got[torch.isfinite(got)], expected[torch.isfinite(expected)])


@pytest.mark.parametrize("kw", [dict(top_k=50, top_p=0.95), dict(top_k=5, top_p=0.5), dict(top_k=0, top_p=0.9),
                                dict(top_k=20, top_p=1.0), dict(top_k=50, top_p=0.95, no_repeat_ngram_size=2)])
def test_the_loops_draw_is_sample_tokens_draw(kw):
    """next_token draws what sample_tokens draws from the processors' scores, with the same generator state."""
    from rlhflab.generation.sampling import logits_processors, sample_tokens
    from rlhflab.generation.server import next_token

    settings = GenerationSettings(temperature=0.7, repetition_penalty=1.1, **kw)
    data = torch.Generator().manual_seed(1)
    a, b = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    for i in range(200):
        history = torch.randint(0, 2000, (1, 20), generator=data)
        scores = torch.randn(1, 2000, generator=data) * (1 + i % 4)
        ties = i % 10 == 0
        if ties:  # 60 tokens tied at the top (bf16 logits tie often): all kept by top-k
            scores[0, :60] = scores[0].max()
        processed = logits_processors(settings)(history, scores.clone())
        expected = int(sample_tokens(processed, a)[0])
        got = next_token(settings, history, scores.clone(), b)
        if ties and settings.top_k and settings.top_p < 1:  # which of equal scores top-p cuts is sort order
            assert got < 60 or got == expected
        else:
            assert got == expected


def test_the_arena_streams_both_sides_through_the_loop(tmp_path, tiny_llama_dir):
    """An arena battle over the base and a LoRA adapter on it: both answers decode as rows of the base's loop (each
    streamed on its own), and greedy answers equal the same policies' one-at-a-time answers."""
    from space.arena import stream_in_threads
    from space.registry import Registry
    from tests.test_app import write_tiny_checkpoints

    store = write_tiny_checkpoints(tmp_path / "store", tiny_llama_dir, kinds=("reward", "lora"))
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    messages = [{"role": "user", "content": "Name a colour."}]
    settings = GenerationSettings(greedy=True, max_new_tokens=24)
    answers = {}
    for serving in ("1", "0"):
        registry = Registry(env={**env, "RLHFLAB_SERVING": serving})
        events = list(stream_in_threads(registry, ["base", "lora"], messages, settings))
        results = {side: result for side, _, result in events if result is not None}
        assert set(results) == {"base", "lora"} and all(r["error"] is None for r in results.values()), results
        answers[serving] = {side: r["answer"] for side, r in results.items()}
        servers = registry.policies._servers
        assert (set(servers) == {"base"} and servers["base"].stats.tokens >= 2) if serving == "1" else not servers
    assert answers["1"] == answers["0"] and answers["1"]["base"] != answers["1"]["lora"]
