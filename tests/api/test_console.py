"""The web console: its page and assets (served by the app, no CDN), and the real pages driven in
headless Chromium (Debian's `chromium` through Playwright): submit an edit, see it pending, train,
see it applied, compare before/after in the playground, roll back; at 1280 px and at a phone's
390 px; with and without API keys.

Screenshots are kept as test artefacts under `test-artifacts/console/` at the repository root
(git-ignored; LEMOE_TEST_ARTIFACTS moves it). The browser tests skip, saying why, when chromium or
the `playwright` package is missing (no browser is ever downloaded: Playwright drives the system's).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from app.domain import AuthMode, Scope
from app.main import create_app
from app.services import keys as key_service
from tests.api.live import LiveServer, live_server
from tests.api.support import FOX, FRANCE, tiny_settings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("LEMOE_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "test-artifacts")) / "console"
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 390, "height": 844}
DEADLINE_MS = 120_000  # generous: a busy 2-core machine trains the tiny model in seconds, usually
PAGES = ("edits", "experts", "playground", "training")
# What each page shows once its data has arrived.
RENDERED = {
    "edits": "#edits-table tbody tr",
    "experts": "#experts-table tbody tr",
    "playground": "#scores-chart .summary",
    "training": "#runs-table tbody tr",
}


# --- the page and its assets (no browser needed) --------------------------------------------


def test_the_front_page_is_the_console(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 307 and response.headers["location"] == "/console"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assets = re.findall(r'(?:src|href)="([^"#]+)"', page.text)
    assert sorted(assets) == ["/console/console.css", "/console/console.js"]  # nothing from elsewhere
    for asset, kind in (("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")):
        served = client.get(asset)
        assert served.status_code == 200 and served.headers["content-type"].startswith(kind) and len(served.text) > 1000


def test_an_unknown_console_asset_is_a_404_in_the_error_shape(client):
    response = client.get("/console/secrets.txt")
    assert response.status_code == 404
    assert response.json()["error"] == {"type": "not_found", "message": response.json()["error"]["message"]}
    assert "'secrets.txt'" in response.json()["error"]["message"]
    assert client.get("/console/..%2Fconsole.py").status_code == 404


# --- in the browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if CHROMIUM is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; scripts/_setup.sh tries)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=DEADLINE_MS)
    return expect


@contextmanager
def open_page(browser, viewport: dict[str, int]) -> Iterator:
    """A page in a fresh context, closed (its event stream with it) before the server stops."""
    context = browser.new_context(viewport=viewport)
    try:
        page = context.new_page()
        page.set_default_timeout(DEADLINE_MS)
        yield page
    finally:
        context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def visit(page, server: LiveServer, name: str, expect) -> None:
    page.goto(f"{server.url}/console#{name}")
    expect(page.locator(f"#page-{name}")).to_be_visible()
    expect(page.locator(f"#page-{name} h1")).to_have_text(name.capitalize())


def compare(page, prompt: str) -> None:
    playground = page.locator("#page-playground")
    playground.get_by_label("Prompt").fill(prompt)
    playground.get_by_label("New tokens").fill("6")
    playground.get_by_role("button", name="Compare").click()


def fits_the_width(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


# WCAG relative luminance of the element's colour and of the first opaque background behind it.
CONTRAST = """(selector) => [...document.querySelectorAll(selector)].filter((el) => el.offsetParent !== null).map((el) => {
  const rgb = (text) => text.match(/[\\d.]+/g).map(Number);
  const lum = ([r, g, b]) => { const f = (c) => { c /= 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  let back = el, bg = null;
  while (back) {
    const c = rgb(getComputedStyle(back).backgroundColor);
    if (c.length < 4 || c[3] > 0) { bg = c; break; }
    back = back.parentElement;
  }
  bg = bg || [255, 255, 255];
  const [a, b] = [lum(rgb(getComputedStyle(el).color)), lum(bg)].sort((x, y) => y - x);
  return [selector, el.textContent.trim().slice(0, 30), (a + 0.05) / (b + 0.05)];
})"""


def check_accessibility(page) -> None:
    """Landmarks, a label on every control, and text contrast of at least 4.5:1."""
    for landmark in ("header", "nav", "main"):
        assert page.locator(landmark).count() >= 1, landmark
    unlabelled = page.evaluate(
        """[...document.querySelectorAll('input, select, textarea')].filter((el) =>
             !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map((el) => el.id || el.outerHTML)"""
    )
    assert unlabelled == []
    for selector in ("p", "td", "th", "button", "label", ".top nav a", ".status", ".muted", "dt", "dd"):
        for _, text, ratio in page.evaluate(CONTRAST, selector):
            assert ratio >= 4.5, (selector, text, ratio)


@pytest.fixture
def trained_server(tiny_model_dir, shared_engine, tmp_path) -> Iterator[LiveServer]:
    """A server whose worker trains as soon as a run is triggered."""
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", worker_enabled=True, worker_interval_s=3600, worker_poll_interval_s=0.5)
    with live_server(create_app(settings, engine=shared_engine)) as server:
        yield server


@pytest.fixture
def held_training(shared_engine, monkeypatch) -> Iterator[threading.Event]:
    """Training waits for the event before it builds an expert: the page can be seen mid-run."""
    release = threading.Event()
    build = shared_engine.build_expert

    def held(name, edits, progress=None):
        assert release.wait(DEADLINE_MS / 1000), "the test never released the training run"
        return build(name, edits, progress=progress)

    monkeypatch.setattr(shared_engine, "build_expert", held)
    yield release
    release.set()


def test_the_console_from_submission_to_rollback(browser, trained_server, held_training, expect):
    with open_page(browser, DESKTOP) as page:
        walk_through(page, trained_server, held_training, expect)


def walk_through(page, server: LiveServer, release: threading.Event, expect) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # Console errors other than the answers the walk provokes (a 422 for a bad edit): e.g. a
    # script or style the Content-Security-Policy refused.
    page.on("console", lambda m: m.type == "error" and not m.text.startswith("Failed to load resource") and errors.append(m.text))
    page.on("dialog", lambda dialog: dialog.accept())  # the confirmations before an action

    page.goto(server.url + "/")  # the front page is the console
    expect(page.locator("#page-edits h1")).to_have_text("Edits")
    expect(page.locator("#edits-table tbody")).to_contain_text("No edits match.")
    expect(page.locator("#problem")).to_be_hidden()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"  # keyboard first stop
    shot(page, "01-edits-empty")

    # Submit an edit on the training page and see it pending.
    visit(page, server, "training", expect)
    training = page.locator("#page-training")
    training.get_by_label("Prompt", exact=True).fill(FRANCE["prompt"])
    training.get_by_label("New target").fill(FRANCE["target"])
    training.get_by_label("Subject (optional)").fill(FRANCE["subject"])
    training.get_by_role("button", name="Submit edit").click()
    expect(page.locator("#notice")).to_contain_text("Submitted edit: #1 (pending)")
    visit(page, server, "edits", expect)
    expect(page.locator('#edits-table tr[data-edit-id="1"] .status')).to_have_text("pending")
    shot(page, "02-edit-pending")

    # Train, watching the run over the event stream, and see the edit applied.
    visit(page, server, "training", expect)
    expect(page.locator("#stream-state")).to_have_text("Live updates: on")
    page.get_by_role("button", name="Start a training run").click()
    expect(page.locator("#notice")).to_contain_text("Training run #1 is queued")
    run = page.locator('#runs-table tr[data-run-id="1"]')
    expect(run.locator(".status")).to_have_text("running")  # live: the page was not reloaded
    expect(page.locator("#event-log")).to_contain_text("training_run.started (run #1)")
    shot(page, "03-training-running")
    release.set()
    expect(page.locator('#runs-table tr[data-run-id="1"] .status')).to_have_text("succeeded")
    expect(page.locator("#event-log")).to_contain_text("edit.applied (edit #1")
    shot(page, "04-training-done")
    visit(page, server, "edits", expect)
    expect(page.locator('#edits-table tr[data-edit-id="1"] .status')).to_have_text("applied")
    page.get_by_role("button", name="Edit 1: show its timeline").click()
    expect(page.locator("#edit-timeline li strong")).to_have_text(["submitted", "planned", "applied"])
    expect(page.locator("#applied-chart svg rect.bar")).to_have_count(1)  # today's bar
    shot(page, "05-edit-applied")

    # The playground: the base model beside the edited stack, and why.
    visit(page, server, "playground", expect)
    compare(page, FRANCE["prompt"])
    expect(page.locator("#edited-text")).to_have_text(re.compile(r"^\s*Rome"))
    base_text = page.locator("#base-text").inner_text()
    assert not base_text.strip().startswith("Rome")
    expect(page.locator('[data-fact="Answered by"]')).to_contain_text("expert")
    expect(page.locator('[data-fact="Route score"]')).to_contain_text("passes")
    expect(page.locator('[data-fact="Route score"]')).to_contain_text("the floor for an edit with a subject")
    expect(page.locator('[data-fact="Nearest edit"]')).to_contain_text("#1: The capital of France is → Rome")
    expect(page.locator('[data-fact="Subject match"]')).to_contain_text("passes")
    expect(page.locator("#scores-chart svg line.gate")).to_have_count(1)
    shot(page, "06-playground-edited")

    # The experts page: what the expert holds, its check; roll it back.
    visit(page, server, "experts", expect)
    row = page.locator("#experts-table tbody tr").first
    expect(row.locator('td[data-label="Status"] .status')).to_have_text("active")
    expect(row).to_contain_text("edits answered 1/1")
    row.locator("summary").click()
    expect(row.locator("details li")).to_contain_text("The capital of France is → Rome")
    shot(page, "07-experts-live")
    row.get_by_role("button", name=re.compile("^Deactivate")).click()
    expect(page.locator("#notice")).to_contain_text("now rolled back")
    expect(row.locator('td[data-label="Status"] .status')).to_have_text("inactive")

    # After the rollback the prompt gets the base model's answer again.
    visit(page, server, "playground", expect)
    compare(page, FRANCE["prompt"])
    expect(page.locator('[data-fact="Answered by"]')).to_contain_text("the base model")
    expect(page.locator("#edited-text")).to_have_text(base_text)
    visit(page, server, "edits", expect)
    expect(page.locator('#edits-table tr[data-edit-id="1"] .status')).to_have_text("rolled back")
    page.get_by_role("button", name="Edit 1: show its timeline").click()
    expect(page.locator("#edit-timeline li strong").last).to_have_text("rolled back")
    shot(page, "08-rolled-back")

    # Many edits at once as JSON lines; a bad line or a bad edit is a clear message, nothing sent.
    visit(page, server, "training", expect)
    lines = page.locator("#page-training").get_by_label("JSON lines: one edit object a line")
    lines.fill('{"prompt": "The quick brown fox", "target": "jumps"}\nnot json')
    page.get_by_role("button", name="Submit JSON lines").click()
    expect(page.locator("#problem")).to_contain_text("line 2 is not JSON")
    lines.fill(json.dumps({**FOX, "subject": "Paris"}))
    page.get_by_role("button", name="Submit JSON lines").click()
    expect(page.locator("#problem")).to_contain_text("Please check the input")
    expect(page.locator("#problem")).to_contain_text("Paris")
    lines.fill("\n".join(json.dumps({"prompt": f"Fact number {i} is", "target": f"value {i}"}) for i in range(20)))
    page.get_by_role("button", name="Submit JSON lines").click()
    expect(page.locator("#notice")).to_contain_text("Submitted edits: #2, #3")
    expect(page.locator("#notice")).to_contain_text("#21 (pending)")

    # Filters and pages, reached with the keyboard.
    page.get_by_role("link", name="Edits").focus()
    page.keyboard.press("Enter")
    expect(page.locator("#page-edits")).to_be_visible()
    expect(page.locator("#edits-table tbody tr")).to_have_count(20)
    page.get_by_role("button", name="Next page").click()
    expect(page.locator("#edits-table tbody tr")).to_have_count(1)
    expect(page.locator('#edits-table tr[data-edit-id="1"]')).to_be_visible()  # oldest last
    page.get_by_label("Status").select_option("rolled_back")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#edits-table tbody tr")).to_have_count(1)
    expect(page.locator('#edits-table tr[data-edit-id="1"]')).to_be_visible()
    page.get_by_label("Status").select_option("")
    page.get_by_label("Text").fill("number 7 ")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#edits-table tbody tr")).to_have_count(1)
    expect(page.locator("#edits-table tbody")).to_contain_text("Fact number 7 is")
    page.get_by_label("Text").fill("")
    page.locator("#page-edits").get_by_label("Subject").fill("france")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("#edits-table tbody tr")).to_have_count(1)
    expect(page.locator('#edits-table tr[data-edit-id="1"]')).to_be_visible()

    # Every page fits 1280 px and a phone's 390 px, and passes the accessibility checks.
    for viewport, label in ((DESKTOP, "desktop"), (PHONE, "phone")):
        page.set_viewport_size(viewport)
        for name in PAGES:
            visit(page, server, name, expect)
            expect(page.locator("#problem")).to_be_hidden()
            expect(page.locator(RENDERED[name]).first).to_be_visible()
            assert fits_the_width(page), (name, label)
            check_accessibility(page)
            if label == "phone":
                shot(page, f"09-phone-{name}")
    assert errors == []


# Answers to edit lists filtered by status wait until the page says go: they come back after later
# ones. `heldRead` is set in a task after the held answer's body was read, so whatever the page
# does with it (promise continuations, no I/O) has been done by then.
HOLD_STATUS_FILTERS = """() => {
  const held = new Promise((resolve) => { window.releaseHeld = resolve; });
  const fetchNow = window.fetch;
  window.fetch = async (path, init) => {
    const response = await fetchNow(path, init);
    if (!String(path).includes("status=rolled_back")) return response;
    await held;
    const read = response.text.bind(response);
    response.text = async () => { const body = await read(); setTimeout(() => { window.heldRead = true; }, 0); return body; };
    return response;
  };
}"""


def test_an_edit_list_answered_late_does_not_replace_a_newer_one(browser, tiny_model_dir, shared_engine, tmp_path, expect):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data")
    with live_server(create_app(settings, engine=shared_engine)) as server:
        for i in range(3):
            assert httpx.post(f"{server.url}/v1/edits", json={"prompt": f"Fact number {i} is", "target": f"value {i}"}).status_code == 202
        with open_page(browser, DESKTOP) as page:
            visit(page, server, "edits", expect)
            expect(page.locator("#edits-table tbody tr")).to_have_count(3)
            page.evaluate(HOLD_STATUS_FILTERS)
            page.get_by_label("Status").select_option("rolled_back")
            page.get_by_role("button", name="Filter").click()  # its answer is held
            page.get_by_label("Status").select_option("")
            page.get_by_label("Text").fill("number 1 ")
            page.get_by_role("button", name="Filter").click()
            expect(page.locator("#edits-table tbody tr")).to_have_count(1)
            expect(page.locator("#edits-table tbody")).to_contain_text("Fact number 1 is")
            page.evaluate("window.releaseHeld()")
            page.wait_for_function("window.heldRead === true")
            # The older filter's answer (no rolled-back edit) came last and was not drawn.
            assert "Fact number 1 is" in page.locator("#edits-table tbody").inner_text()
            assert "No edits match" not in page.locator("#edits-table tbody").inner_text()


def test_the_console_asks_for_a_key_and_shows_what_it_lacks(browser, tiny_model_dir, shared_engine, tmp_path, expect):
    settings = tiny_settings(tiny_model_dir, tmp_path / "data", auth=AuthMode.ON)
    with live_server(create_app(settings, engine=shared_engine)) as server:
        assert httpx.get(f"{server.url}/v1/edits").status_code == 401
        with server.app.state.runtime.session_factory() as session:
            reader = key_service.create_key(session, name="reader", scopes=[Scope.READ], actor="test").secret
        with open_page(browser, PHONE) as page:
            ask_for_a_key(page, server, reader, expect)


def ask_for_a_key(page, server: LiveServer, reader: str, expect) -> None:
    page.goto(f"{server.url}/console")  # the page itself needs no key

    expect(page.locator("#problem")).to_contain_text("This server needs an API key")
    expect(page.locator("#key-panel")).to_be_visible()
    expect(page.get_by_label("Key", exact=True)).to_be_focused()
    shot(page, "10-key-asked")
    page.get_by_label("Key", exact=True).fill("lemoe_" + "x" * 43)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#problem")).to_contain_text("The server refused this API key")
    expect(page.locator("#problem")).to_contain_text("not valid")
    page.get_by_label("Key", exact=True).fill(reader)
    page.get_by_role("button", name="Use this key").click()
    expect(page.locator("#edits-table tbody")).to_contain_text("No edits match.")
    expect(page.locator("#problem")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('lemoe.apiKey')") == reader
    assert reader not in page.url

    visit(page, server, "playground", expect)
    compare(page, "Hello")
    expect(page.locator("#problem")).to_contain_text("Your API key does not allow this")
    expect(page.locator("#problem")).to_contain_text("'generate'")
    assert fits_the_width(page)
    shot(page, "11-key-lacks-scope")
