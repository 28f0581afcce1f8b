"""Bad input through the app's API (gradio_client): odd messages, every generation setting at and past its bounds,
out-of-range and forged ratings. Each is answered with a sentence naming what was wrong, nothing is stored, and
the app keeps serving. One server for the module; the tiny checkpoints and helpers come from tests/test_app.py."""
from __future__ import annotations

import math

import httpx
import pytest

from rlhflab.generation.sampling import SETTING_BOUNDS
from tests.test_app import (
    BASE_SETTINGS,
    chat_args,
    compare_args,
    make_client,
    running_app,
    text_of,
    write_tiny_checkpoints,
)

ODD_MESSAGES = {
    "control": "\x00\x01\x02\x07\x08\x1b[31mred\x1b[0m\x7f\u200b\u202e reversed? \ufeff",
    "arabic": "مرحبا، كيف حالك اليوم؟ اشرح لي الجاذبية.",
    "hebrew": "שלום! מה שלומך? ספר לי על הירח.",
    "emoji": "👋🏽 Hi! 🤖🔥 Family: 👨‍👩‍👧‍👦, flags 🇯🇵🇧🇷, keycap 1️⃣",
    "mixed_rtl": "English then עברית then عربي then 123 ← arrows →",
}
LONG_MESSAGE = "Please read this. " + "abcdefghij klmnopqrst " * 2300  # > 50,000 characters
BLANK_MESSAGES = {"empty": "", "spaces_tabs_newlines": " \t\n \r\n ", "unicode_spaces": "\u3000\u00a0\u2003\n"}
INT_SETTINGS = {"top_k", "no_repeat_ngram_size", "max_new_tokens", "seed", "best_of_n"}
SHORT = 4  # new tokens per answer where the setting under test is not max_new_tokens


@pytest.fixture(scope="module")
def app(tmp_path_factory, tiny_llama_dir):
    store = write_tiny_checkpoints(tmp_path_factory.mktemp("input-checkpoints"), tiny_llama_dir)
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    with running_app(env) as (registry, url):
        yield registry, url


@pytest.fixture()
def client(app):
    """A fresh session per test, so one test's chat history never feeds the next."""
    return make_client(app[1])


@pytest.fixture(scope="module")
def shared(app):
    """One session for calls that keep no state (reward scores, refused settings)."""
    return make_client(app[1])


def ratings_count(registry) -> int:
    return len(registry.ratings_store().ratings())


# ---------------------------------------------------------------- messages


@pytest.mark.parametrize("message", BLANK_MESSAGES.values(), ids=BLANK_MESSAGES.keys())
def test_blank_messages_are_refused_by_chat_and_compare(client, message):
    chatbot, details, box = client.predict(*chat_args(message, "lora"), api_name="/chat")
    assert "Please type a message" in details["error"] and chatbot == []
    *sides, details, box = client.predict(*compare_args(message), api_name="/compare")
    assert "Please type a message" in details["error"] and sides == [[], [], [], []]


@pytest.mark.parametrize("name", [*ODD_MESSAGES, "long"])
def test_odd_messages_are_answered_by_chat(client, name):
    message = LONG_MESSAGE if name == "long" else ODD_MESSAGES[name]
    chatbot, details, box = client.predict(*chat_args(message, "full", max_new_tokens=SHORT), api_name="/chat")
    assert details["error"] is None, details
    assert isinstance(details["reward"], float) and math.isfinite(details["reward"])
    assert 0 <= details["tokens"] <= SHORT and box == ""
    assert [m["role"] for m in chatbot] == ["user", "assistant"]
    if name == "long":
        assert len(message) > 50_000 and len(text_of(chatbot[0])) < 3000
    else:
        assert text_of(chatbot[0]) == message, "the message is shown exactly as typed"


@pytest.mark.parametrize("name", [*ODD_MESSAGES, "long"])
def test_odd_messages_are_answered_by_compare(client, name):
    message = LONG_MESSAGE if name == "long" else ODD_MESSAGES[name]
    base_cb, full_cb, lora_cb, _, details, box = client.predict(*compare_args(message, max_new_tokens=SHORT),
                                                                api_name="/compare")
    for side, cb in (("base", base_cb), ("full", full_cb), ("lora", lora_cb)):
        assert details[side]["error"] is None, details[side]
        assert math.isfinite(details[side]["reward"])
        assert [m["role"] for m in cb] == ["user", "assistant"]
        if name == "long":
            assert any("truncated" in note for note in details[side]["notes"])
        else:
            assert text_of(cb[0]) == message


@pytest.mark.parametrize("name", [*ODD_MESSAGES, "long"])
def test_odd_text_is_scored_by_the_reward_model(shared, name):
    client = shared
    text = LONG_MESSAGE if name == "long" else ODD_MESSAGES[name]
    for prompt, response in ((text, "A plain answer."), ("A plain question?", text), (text, text)):
        score = client.predict(prompt, response, api_name="/score")
        assert isinstance(score, float) and math.isfinite(score)
    r_a, r_b, p, verdict = client.predict(text, text, "Something else.", api_name="/compare_responses")
    assert math.isfinite(r_a) and math.isfinite(r_b) and 0 < p < 1 and "P(A" in verdict
    assert r_a == pytest.approx(client.predict(text, text, api_name="/score"), abs=1e-3)


def test_absurd_pastes_are_cut_before_tokenizing_without_changing_the_score(app, shared):
    """Text past MAX_MESSAGE_CHARS is cut (prompt from the start, response at the end) before the
    tokenizer sees it; the model reads at most 512 tokens, so the score is the uncut text's score."""
    from rlhflab.measure.scoring import score_responses
    from space.chat import MAX_MESSAGE_CHARS

    registry, _ = app
    words = "lorem ipsum dolor sit amet "
    prompt = "Start. " + words * (MAX_MESSAGE_CHARS // len(words) + 50) + "What is the question?"
    response = "The answer is this. " + words * (MAX_MESSAGE_CHARS // len(words) + 50)
    assert len(prompt) > MAX_MESSAGE_CHARS and len(response) > MAX_MESSAGE_CHARS
    model, tokenizer = registry.reward_model()
    uncut = score_responses(model, tokenizer, [prompt], [response])[0]
    assert shared.predict(prompt, response, api_name="/score") == pytest.approx(uncut, abs=1e-4)
    other = score_responses(model, tokenizer, [prompt], ["Something else entirely."])[0]
    assert abs(other - uncut) > 1e-3  # the comparison above can tell scores apart


@pytest.mark.parametrize("message", BLANK_MESSAGES.values(), ids=BLANK_MESSAGES.keys())
def test_blank_responses_are_refused_by_the_reward_endpoints(shared, message):
    client = shared
    with pytest.raises(Exception, match="Type a response"):
        client.predict("A question?", message, api_name="/score")
    with pytest.raises(Exception, match="Type a response"):
        client.predict("A question?", "An answer.", message, api_name="/compare_responses")
    with pytest.raises(Exception, match="Type a response"):
        client.predict("A question?", message, "An answer.", api_name="/compare_responses")
    # a blank prompt is allowed: the response is scored on its own
    assert math.isfinite(client.predict(message, "An answer.", api_name="/score"))


# ---------------------------------------------------------------- generation settings


@pytest.mark.parametrize("setting, value", [(s, v) for s, bounds in SETTING_BOUNDS.items() for v in bounds])
def test_every_setting_is_accepted_at_its_min_and_max(client, setting, value):
    overrides = {"max_new_tokens": SHORT, setting: value}
    chatbot, details, _ = client.predict(*chat_args("Count to three.", "base", **overrides), api_name="/chat")
    assert details["error"] is None, details
    assert 0 <= details["tokens"] <= overrides["max_new_tokens"]
    assert math.isfinite(details["reward"]) and f"{details['reward']:+.3f}" in text_of(chatbot[-1])
    n = overrides.get("best_of_n", BASE_SETTINGS["best_of_n"])
    assert (details["candidates"] is None) == (n == 1)


def test_best_of_n_at_its_maximum_reranks_and_says_so(client):
    n = SETTING_BOUNDS["best_of_n"][1]
    chatbot, details, _ = client.predict(*chat_args("Give me advice.", "lora", best_of_n=n, max_new_tokens=SHORT),
                                         api_name="/chat")
    candidates = details["candidates"]
    assert len(candidates) == n and sum(c["chosen"] for c in candidates) == 1
    best = max(candidates, key=lambda c: c["reward"])
    assert best["chosen"] and details["reward"] == best["reward"] and details["answer"] == best["answer"]
    note = text_of(chatbot[-1])
    assert f"best of {n} by reward" in note and note.count("+") + note.count("-") >= n


def _step(setting: str) -> float:
    return 1 if setting in INT_SETTINGS else 0.01


OUT_OF_RANGE = [(s, lo - _step(s), "below") for s, (lo, hi) in SETTING_BOUNDS.items()] + \
               [(s, hi + _step(s), "above") for s, (lo, hi) in SETTING_BOUNDS.items()]
NOT_A_NUMBER = [(s, "lots", "text") for s in SETTING_BOUNDS] + [(s, 2.5, "fraction") for s in sorted(INT_SETTINGS)] + \
               [("greedy", "yes", "text"), ("greedy", 1, "number")]


def _call_with(client, endpoint: str, setting: str, value):
    settings = {**BASE_SETTINGS, setting: value}
    if endpoint == "/chat":
        return client.predict("hi", "base", *settings.values(), api_name=endpoint)
    if endpoint == "/compare":
        return client.predict("hi", ["base", "full", "lora"], *settings.values(), api_name=endpoint)
    return client.predict("one", "base", [], *settings.values(), api_name=endpoint)


@pytest.mark.parametrize("endpoint", ["/chat", "/compare", "/regenerate"])
@pytest.mark.parametrize("setting, value, why", OUT_OF_RANGE + NOT_A_NUMBER,
                         ids=[f"{s}-{why}" for s, _, why in OUT_OF_RANGE + NOT_A_NUMBER])
def test_bad_setting_is_refused_naming_it(shared, endpoint, setting, value, why):
    expected = {"below": "out of range; allowed", "above": "out of range; allowed", "text": "must be",
                "fraction": "must be a whole number", "number": "must be true or false"}[why]
    with pytest.raises(Exception, match=rf"setting {setting}\b.*{expected}") as info:
        _call_with(shared, endpoint, setting, value)
    assert "Traceback" not in str(info.value)


# ---------------------------------------------------------------- ratings


@pytest.fixture()
def rating_session(app):
    """A client that has been shown a blind task, and the store's rating count before the test."""
    registry, url = app
    c = make_client(url)
    task = c.predict(api_name="/next_item")
    assert "Prompt #" in task[0]
    return registry, c, ratings_count(registry)


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, 100, "5", "five", True])
def test_rating_outside_one_to_five_is_refused_and_not_stored(rating_session, bad):
    registry, c, before = rating_session
    scores = [4, 4, 4, 4, bad] + [3] * 5 + [None] * 5  # response B is valid: nothing may be stored at all
    with pytest.raises(Exception, match=r"Response A · Hallucination/toxicity.*whole number from 1 to 5"):
        c.predict(*scores, api_name="/rate")
    assert ratings_count(registry) == before


def test_rating_with_nothing_rated_is_refused(rating_session):
    registry, c, before = rating_session
    with pytest.raises(Exception, match="Rate at least one response"):
        c.predict(*[None] * 15, api_name="/rate")
    assert ratings_count(registry) == before


def test_rating_without_a_shown_task_is_refused(app):
    registry, url = app
    before = ratings_count(registry)
    with pytest.raises(Exception, match="Load a prompt to rate first"):
        make_client(url).predict(*[5] * 15, api_name="/rate")
    assert ratings_count(registry) == before


def test_rate_api_takes_no_item_ids(shared):
    """The shown items live in server-side session state: an API caller cannot name (or forge) an item id."""
    info = shared.view_api(print_info=False, return_format="dict")["named_endpoints"]["/rate"]
    labels = [p["label"] for p in info["parameters"]]
    assert len(labels) == 15, "no free-text rater name: the rater is the signed-in user or the session"
    assert not any("item" in label.lower() for label in labels)
    names = [p["parameter_name"] for p in info["parameters"]]
    assert names[0] == "response_a_coherence" and names[-1] == "response_c_harmlessness"
    assert len(set(names)) == 15 and not any(n.startswith("param_") for n in names)


def test_forged_item_id_in_a_raw_request_is_ignored(app):
    """A hand-made request that adds a task with a forged item id to /rate's data stores nothing."""
    registry, url = app
    before = ratings_count(registry)
    forged = {"prompt_index": 0, "item_ids": ["forged-item", "'; DROP TABLE ratings;--"]}
    for data in ([*[5] * 15, forged], [*[5] * 15]):
        with httpx.Client(base_url=url, timeout=60) as http:
            r = http.post("gradio_api/call/rate", json={"data": data})
            assert r.status_code == 200, r.text
            stream = http.get(f"gradio_api/call/rate/{r.json()['event_id']}").text
        # the task comes from this request's (empty) server-side session, never from the request's data
        assert "event: error" in stream and "Load a prompt to rate first" in stream and "Saved" not in stream
    assert ratings_count(registry) == before


def test_forged_or_unknown_item_id_is_refused_by_the_store(app):
    from rlhflab.errors import UserError

    registry, _ = app
    store = registry.ratings_store()
    before = ratings_count(registry)
    scores = dict.fromkeys(("coherence", "relevance", "helpfulness", "completeness", "harmlessness"), 5)
    for item_id in ("forged-item", "", "x' OR '1'='1", store.items()[0]["item_id"] + " "):
        with pytest.raises(UserError, match="unknown rating item"):
            store.add_rating(item_id, scores, "forger")
    assert ratings_count(registry) == before


def test_valid_rating_is_still_stored_after_the_bad_ones(rating_session):
    registry, c, before = rating_session
    out = c.predict(*([5, 4, 3, 2, 1] + [None] * 10), api_name="/rate")
    assert "Saved 1 rating(s)" in out[-1] and ratings_count(registry) == before + 1


# ---------------------------------------------------------------- still serving


def test_app_still_serves_a_normal_chat_after_all_the_bad_input(app):
    c = make_client(app[1])
    chatbot, details, box = c.predict(*chat_args("Hello, who are you?", "base", max_new_tokens=16), api_name="/chat")
    assert details["error"] is None and details["answer"].strip() and box == ""
    assert [m["role"] for m in chatbot] == ["user", "assistant"] and text_of(chatbot[0]) == "Hello, who are you?"
    assert math.isfinite(details["reward"]) and 0 < details["tokens"] <= 16
    again = make_client(app[1]).predict(*chat_args("Hello, who are you?", "base", max_new_tokens=16),
                                        api_name="/chat")[1]
    assert again["answer"] == details["answer"], "same seed, same answer: nothing was left in a bad state"
