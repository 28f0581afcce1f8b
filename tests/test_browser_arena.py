"""The arena in a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright): a prompt, two anonymous
answers streaming in, a vote, the names revealed, and the leaderboard going from "no one has voted" to a table.
Screenshots go to test-artifacts/ (git-ignored)."""
from __future__ import annotations

import pytest
from test_app import running_app, write_tiny_checkpoints
from test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium")

LABELS = ("Base model", "Full PPO", "LoRA PPO")


@pytest.fixture(scope="module")
def page(tmp_path_factory, tiny_llama_dir):
    from playwright.sync_api import sync_playwright

    store = write_tiny_checkpoints(tmp_path_factory.mktemp("browser-arena"), tiny_llama_dir,
                                   kinds=("reward", "full", "lora", "eval"))
    env = {"RLHFLAB_CHECKPOINTS": str(store), "RLHFLAB_BASE_MODEL": str(tiny_llama_dir), "HF_HUB_OFFLINE": "1"}
    ARTIFACTS.mkdir(exist_ok=True)
    with running_app(env) as (_, url), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(url)
        page.wait_for_selector("#chat-input textarea")
        yield page
        browser.close()


def test_battle_vote_reveal_and_leaderboard_update(page):
    page.get_by_role("tab", name="Leaderboard", exact=True).click()
    page.wait_for_function("() => document.querySelector('#leaderboard-table').innerText.includes('No one has voted')")

    page.get_by_role("tab", name="Arena", exact=True).click()
    page.evaluate("""() => {
      window.__arena = [];
      const root = document.querySelector('#arena-a');
      new MutationObserver(() => window.__arena.push(root.innerText)).observe(root,
        {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#arena-input textarea", "Tell me a fact about the moon.")
    page.click("#arena-battle")
    page.wait_for_function("() => document.querySelector('#arena-status').innerText.includes('which one is better')",
                           timeout=120_000)
    states = [s for s in page.evaluate("window.__arena") if s.strip()]
    assert len(set(states)) > 2, "answer A grew on screen as it streamed"
    before = page.inner_text("#arena-a") + page.inner_text("#arena-b")
    assert not any(label in before for label in LABELS), "no name before the vote"
    assert page.is_enabled("#arena-vote-a")
    page.screenshot(path=str(ARTIFACTS / "arena-battle.png"), full_page=True)

    page.click("#arena-vote-a")
    page.wait_for_function("() => document.querySelector('#arena-reveal').innerText.includes('Your vote')")
    reveal = page.inner_text("#arena-reveal")
    assert sum(label in reveal for label in LABELS) == 2 and "reward-model score" in reveal
    assert not page.is_enabled("#arena-vote-b"), "one vote per battle: the buttons are disabled"
    page.screenshot(path=str(ARTIFACTS / "arena-revealed.png"), full_page=True)

    page.get_by_role("tab", name="Leaderboard", exact=True).click()
    page.get_by_role("button", name="Refresh").last.click()
    page.wait_for_function("() => document.querySelector('#leaderboard-table').innerText.includes('score (Elo)')",
                           timeout=120_000)
    page.wait_for_selector("#leaderboard-wins .js-plotly-plot")
    assert "1 voted battle " in page.inner_text("#leaderboard-table")
    page.screenshot(path=str(ARTIFACTS / "leaderboard.png"), full_page=True)
