"""The app in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): a streamed chat answer,
the three policies side by side, a rendered training-curves plot and an X-ray grid. Screenshots go to
test-artifacts/ (git-ignored)."""
from __future__ import annotations

from pathlib import Path

import pytest
from test_app import running_app, write_tiny_checkpoints

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium "
                                "(apt-get install -y chromium chromium-driver); Playwright's own download fails here")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory, tiny_llama_dir):
    store = write_tiny_checkpoints(tmp_path_factory.mktemp("browser-checkpoints"), tiny_llama_dir)
    write_rollouts(store)
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    with running_app(env) as (_, url):
        yield url


@pytest.fixture(scope="module")
def page(app_url):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app_url)
        page.wait_for_selector("#chat-input textarea")
        yield page
        browser.close()


def write_rollouts(store: Path) -> None:
    """Every step's rollouts of a finished run (ppo-full) and of one still training (GRPO, in its work folder)."""
    from rlhflab.store.rollouts import append_rollouts

    for step in (1, 2, 3):
        append_rollouts(store / "ppo-full", step, [
            {"prompt": f"full step {step} prompt {i}", "response": f"answer {i}", "score": [0.2, 0.9, -0.4][i],
             "kl_exact": [0.5, 0.1, 0.3][i] * step, "tokens": 10 + i, "cut": i == 1} for i in range(3)])
    for step in (1, 2):
        append_rollouts(store / ".grpo-work", step, [
            {"prompt": f"grpo step {step} prompt {i}", "response": "a", "score": 0.1 * i, "kl_exact": 0.01,
             "tokens": 5, "cut": False} for i in range(2)])


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name, exact=True).click()


# Records every distinct text the last answer bubble shows, to see the answer grow token by token.
_WATCH = """(selector) => {
  window.__states = [];
  const root = document.querySelector(selector);
  const record = () => {
    const bots = root.querySelectorAll('.bot, [data-testid="bot"]');
    const text = bots.length ? bots[bots.length - 1].innerText : '';
    if (window.__states[window.__states.length - 1] !== text) window.__states.push(text);
  };
  new MutationObserver(record).observe(root, {subtree: true, childList: true, characterData: true});
}"""


def test_chat_answer_streams_in(page):
    page.evaluate(_WATCH, "#chat-single")
    page.fill("#chat-input textarea", "Hello! What can you do?")
    page.click("#send-btn")
    page.wait_for_function("() => document.querySelector('#chat-single').innerText.includes('reward-model score')")
    states = [s for s in page.evaluate("window.__states") if s.strip()]
    partial = [s for s in states if "reward-model score" not in s]
    assert partial, f"no partial answer was ever shown: {states}"
    assert page.input_value("#chat-input textarea") == "", "the message box is cleared after sending"
    page.screenshot(path=str(ARTIFACTS / "chat.png"), full_page=True)


def test_side_by_side_two_chosen_policies(page):
    page.get_by_label("Side by side (2–4 policies)").check()
    page.locator("#chat-arena").get_by_label("LoRA PPO").uncheck()  # two of the default three remain
    page.fill("#chat-input textarea", "Tell me a fact about the moon.")
    page.press("#chat-input textarea", "Enter")  # at once after switching: the message must not be dropped
    page.wait_for_function("() => [0, 1].every(i => "
                           "document.querySelector('#chat-side-' + i).innerText.includes('reward-model score'))")
    labels = page.inner_text("#chat-side-0") + page.inner_text("#chat-side-1")
    assert "Base model" in labels and "Full PPO" in labels
    assert not page.locator("#chat-side-2").is_visible(), "an unchosen side stays hidden"
    page.screenshot(path=str(ARTIFACTS / "side_by_side.png"), full_page=True)
    page.get_by_label("One policy").check()


def test_training_curves_plot_renders(page):
    _open_tab(page, "Training curves")
    page.wait_for_selector("#curves-plot .js-plotly-plot .main-svg")
    assert page.locator("#curves-plot .scatterlayer .trace").count() >= 6  # KL, score, β for two runs
    assert "ppo-full" in page.inner_text("#curves-summary")
    page.screenshot(path=str(ARTIFACTS / "curves.png"), full_page=True)


def test_xray_grid_image_appears(page):
    _open_tab(page, "Chest X-rays")
    page.click("#sample-btn")
    page.wait_for_function("() => { const img = document.querySelector('#xray-grid img');"
                           " return img && img.complete && img.naturalWidth > 0; }")
    width = page.evaluate("document.querySelector('#xray-grid img').naturalWidth")
    assert width == (8 * 30 + 2) * 4
    assert "PHANTOM" in page.inner_text("#xray-caption")
    page.screenshot(path=str(ARTIFACTS / "xrays.png"), full_page=True)


def test_reward_boxes_are_empty_until_scored(page):
    _open_tab(page, "Reward model")
    boxes = ["#reward-score", "#reward-score-a", "#reward-score-b", "#reward-probability"]
    page.wait_for_selector("#reward-score textarea, #reward-score input")

    def value(box: str) -> str:
        return page.locator(f"{box} textarea, {box} input").first.input_value()

    assert [value(b) for b in boxes] == ["", "", "", ""], "a score box shows a value before anything was scored"
    page.get_by_role("button", name="Score response A").click()
    page.wait_for_function("() => document.querySelector('#reward-score textarea, #reward-score input').value !== ''")
    float(value("#reward-score"))
    assert value("#reward-score-a") == ""
    page.get_by_role("button", name="Compare A and B").click()
    page.wait_for_function("() => document.querySelector('#reward-probability textarea, "
                           "#reward-probability input').value !== ''")
    assert abs(float(value("#reward-score-a")) - float(value("#reward-score"))) < 1e-3  # same prompt and response
    assert 0 < float(value("#reward-probability")) < 1
    page.screenshot(path=str(ARTIFACTS / "reward_scored.png"), full_page=True)


def test_other_tabs_render(page):
    _open_tab(page, "Evaluation")
    page.wait_for_selector("#eval-plot .js-plotly-plot")
    page.screenshot(path=str(ARTIFACTS / "evaluation.png"), full_page=True)
    _open_tab(page, "Human evaluation")
    page.wait_for_function("() => document.querySelector('#rating-prompt').innerText.includes('Prompt #')")
    page.screenshot(path=str(ARTIFACTS / "rating.png"), full_page=True)
    _open_tab(page, "Reward model")
    page.get_by_role("button", name="Compare A and B").click()
    page.wait_for_function("() => document.body.innerText.includes('The reward model prefers')")
    page.screenshot(path=str(ARTIFACTS / "reward.png"), full_page=True)
    _open_tab(page, "About")
    page.wait_for_function("() => document.querySelector('#about-text').innerText.includes('loaded')")
    page.screenshot(path=str(ARTIFACTS / "about.png"), full_page=True)


def _table_prompts(page) -> list[str]:
    text = page.inner_text("#rollouts-table")
    return [line.split("\t")[0].strip() for line in text.splitlines() if "step" in line and "prompt" in line]


def test_rollout_browser_scrubs_a_finished_and_a_running_run(page):
    _open_tab(page, "Training curves")
    # a run still training shows (first: its latest step), its rows from the work folder's rollouts.jsonl
    page.wait_for_function("() => document.querySelector('#rollouts-table').innerText.includes('grpo step 2 prompt')")
    assert "grpo (training…)" in page.locator("#rollouts-run input").input_value()
    page.locator("#rollouts-run input").click()
    page.get_by_role("option", name="ppo-full", exact=True).click()
    page.wait_for_function("() => document.querySelector('#rollouts-table').innerText.includes('full step 3 prompt')")
    text = page.inner_text("#rollouts-table")
    # sorted by score, highest first: prompt 1 (0.9), 0 (0.2), 2 (-0.4)
    assert text.index("full step 3 prompt 1") < text.index("full step 3 prompt 0") < text.index("full step 3 prompt 2")
    assert "cut" in text and "ended" in text
    slider = page.locator("#rollouts-step input[type=range]")
    slider.fill("1")  # scrub back to step 1
    page.wait_for_function("() => document.querySelector('#rollouts-table').innerText.includes('full step 1 prompt')")
    assert "full step 3" not in page.inner_text("#rollouts-table")
    page.get_by_label("exact KL, highest first").check()
    page.wait_for_function("() => { const t = document.querySelector('#rollouts-table').innerText;"
                           " return t.indexOf('full step 1 prompt 0') < t.indexOf('full step 1 prompt 2')"
                           " && t.indexOf('full step 1 prompt 2') < t.indexOf('full step 1 prompt 1'); }")
    assert "Step 1 of 3" in page.inner_text("#rollouts-notice")
    page.screenshot(path=str(ARTIFACTS / "rollouts.png"), full_page=True)
