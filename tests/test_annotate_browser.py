"""The annotation pages in a real browser: headless Chromium (Debian's package) driven by Playwright, against
`fastrlhf annotate serve` run as a subprocess. Ranking by keyboard and by drag, submit, reload, the database
and the export; model output rendered as text, never as HTML; two annotators at once; the red-team page;
a server SIGKILLed between two submissions loses nothing it confirmed; a server of the items another
program adds (`fastrlhf iterate --labeler human`) shows them as they come.

FASTRLHF_UPDATE_SCREENSHOT=1 also writes the ranking page's screenshot to docs/annotate.png (the README's).
"""
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's package (apt-get install chromium); "
                "where it cannot, the browser tests are skipped", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")

from fastrlhf.annotate import cli as annotate_cli  # noqa: E402
from fastrlhf.annotate import db  # noqa: E402
from fastrlhf.demo import task  # noqa: E402

import tiny_run  # noqa: E402

BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]
XSS = ['<script>window.pwned = 1</script>', '<img src=x onerror="window.pwned = 1">', "<b>bold?</b> & done"]
XSS_PROMPT = "review : <script>window.pwned = 2</script> pool"
SHOWCASE = ("review : room food", ["the room was wonderful and the food was great .",
                                   "the room was okay and the food was plain .",
                                   "the food was lovely and the room was terrible .",
                                   "the room was awful ."])
SCREENSHOT = Path(__file__).resolve().parents[1] / "docs" / "annotate.png"


def label_studio_task(number, prompt, responses):
    """A task as Label Studio exports it (List + Ranker), ranked once by someone else."""
    items = [{"id": f"t{number}-{i}", "title": f"response {i}", "body": text} for i, text in enumerate(responses)]
    return {"id": number, "data": {"prompt": prompt, "items": items},
            "annotations": [{"completed_by": 1, "lead_time": 30.0, "result": [
                {"from_name": "rank", "to_name": "results", "type": "ranker",
                 "value": {"ranker": {"results": [item["id"] for item in items]}}}]}]}


class Server:
    """`fastrlhf annotate serve` on the embedded demo model, in a subprocess (sampled=False: the items
    already in the database and those added later, no policy)."""

    def __init__(self, directory, sampled=True):
        self.directory, self.db, self.sampled = directory, directory / "feedback.sqlite", sampled
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/"

    def start(self):
        self.log = open(self.directory / "server.log", "a")
        sampling = ["--policy", "demo", "--prompts", str(self.directory / "prompts.jsonl"), "--k", "3",
                    "--max-new-tokens", "12", "--max-prompt-len", "32", "--annotators-per-item", "2", "--threads", "1"]
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fastrlhf", "annotate", "serve", "--db", str(self.db), "--port", str(self.port),
             *(sampling if self.sampled else [])], env=tiny_run.env(), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited: {(self.directory / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(self.url + "api/config", timeout=2) as answer:
                    if json.load(answer)["sampling"]["remaining"] == 0:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not come up within 2 minutes")

    def kill(self):
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)
        self.log.close()

    def query(self, sql, args=()):
        with sqlite3.connect(f"file:{self.db}?mode=ro", uri=True) as conn:
            return conn.execute(sql, args).fetchall()

    def ranks(self, item, annotator):
        """{response public id: rank} of a judgement."""
        [(ranks,)] = self.query("SELECT ranks FROM judgements WHERE item_id = ? AND annotator = ?", (item, annotator))
        ids = [r[0] for r in self.query("SELECT public_id FROM responses WHERE item_id = ? ORDER BY id", (item,))]
        return dict(zip(ids, json.loads(ranks)))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("annotate")
    prompts, _ = task.split_prompts(8, 0, seed=0)
    (directory / "prompts.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    exported = directory / "labelstudio.json"
    exported.write_text(json.dumps([label_studio_task(1, *SHOWCASE), label_studio_task(2, XSS_PROMPT, XSS)]))
    assert annotate_cli.main(["import", str(exported), "--db", str(directory / "feedback.sqlite"),
                              "--format", "labelstudio"]) == 0
    server = Server(directory)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def context(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(20_000)
    yield context
    context.close()


def open_page(context, server, annotator, path=""):
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors
    page.goto(server.url + path)
    page.fill("#annotator", annotator)
    page.press("#annotator", "Enter")
    return page


def current_item(page):
    page.wait_for_selector("#task:not([hidden])")
    return int(page.get_attribute("#task", "data-item"))


def shown_ids(page):
    return page.eval_on_selector_all("#responses > li", "cards => cards.map(card => card.dataset.id)")


def wait_past(page, item):
    """Waits until the page shows another item than `item` (a function: the page's CSP forbids eval)."""
    page.wait_for_function("item => document.querySelector('#task').dataset.item !== item", arg=str(item))


def skip_until(page, wanted, responses=None):
    """Skips items until one whose prompt satisfies `wanted` (and that shows `responses` responses: a sampled
    item loses repeated or empty samples); returns its id."""
    for _ in range(20):
        item = current_item(page)
        if wanted(page.text_content("#prompt")) and responses in (None, len(shown_ids(page))):
            return item
        page.keyboard.press("s")
        wait_past(page, item)
    raise AssertionError("no such item")


def submitted(page, item, verdict="ranked"):
    page.wait_for_selector(f"#status.saved:has-text('Saved: item {item} {verdict}')")


def test_number_keys_and_a_screenshot(context, server, tmp_path):
    page = open_page(context, server, "ada")  # the first test: ada's first item is the showcase
    item = skip_until(page, lambda prompt: prompt == SHOWCASE[0])
    best_first = [SHOWCASE[1][0], SHOWCASE[1][1], SHOWCASE[1][2], SHOWCASE[1][3]]
    for place, text in enumerate(best_first):
        texts = page.locator("#responses .text").all_text_contents()
        page.locator("#responses > li").nth(texts.index(text)).focus()
        page.keyboard.press(str(place + 1))
    assert page.locator("#responses .text").all_text_contents() == best_first
    page.keyboard.press("ArrowUp")
    page.keyboard.press("ArrowUp")  # the second response ...
    page.keyboard.press("t")  # ... tied with the third
    page.keyboard.press("ArrowUp")
    assert page.locator("#responses .rank").all_text_contents() == ["1", "2=", "2=", "4"]
    page.screenshot(path=str(tmp_path / "annotate.png"))
    assert (tmp_path / "annotate.png").stat().st_size > 10_000
    if os.environ.get("FASTRLHF_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copy(tmp_path / "annotate.png", SCREENSHOT)
    page.keyboard.press("Enter")
    submitted(page, item)
    ids = dict(server.query("SELECT text, public_id FROM responses WHERE item_id = ?", (item,)))
    assert server.ranks(item, "ada") == {ids[best_first[0]]: 1, ids[best_first[1]]: 2, ids[best_first[2]]: 2,
                                         ids[best_first[3]]: 4}


def test_model_output_renders_as_text(context, server):
    page = open_page(context, server, "inspector")
    skip_until(page, lambda prompt: prompt == XSS_PROMPT)
    assert sorted(page.locator("#responses .text").all_text_contents()) == sorted(XSS)
    assert page.locator("#responses img, #responses script, #responses b").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.errors == []


def test_keyboard_ranking_reload_database_and_export(context, server, tmp_path):
    page = open_page(context, server, "keys")
    item = skip_until(page, lambda prompt: "window" not in prompt, responses=3)
    a, b, c, *rest = shown_ids(page)
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")  # select the third response
    page.keyboard.press("1")  # ... move it to the top: c a b
    page.keyboard.press("Shift+ArrowDown")  # one down: a c b
    page.keyboard.press("t")  # tie it with the next: a, (c = b)
    assert shown_ids(page) == [a, c, b, *rest]
    assert page.locator("#responses .rank").all_text_contents()[:3] == ["1", "2=", "2="]
    page.keyboard.press("Enter")
    submitted(page, item)
    assert server.ranks(item, "keys") == {a: 1, c: 2, b: 2, **{r: 4 + i for i, r in enumerate(rest)}}
    following = current_item(page)
    assert following != item
    page.reload()
    assert current_item(page) == following  # the reload comes back to the item being judged
    out = tmp_path / "prefs.jsonl"
    assert annotate_cli.main(["export", "--db", str(server.db), "--out", str(out)]) == 0
    [row] = [json.loads(line) for line in out.read_text().splitlines() if json.loads(line)["annotator"] == "keys"]
    texts = dict(server.query("SELECT public_id, text FROM responses WHERE item_id = ?", (item,)))
    ranks = server.ranks(item, "keys")
    assert row["ranking"] == [ranks[public_id] for public_id in texts] and row["responses"] == list(texts.values())
    assert row["ties"] == [[i for i, public_id in enumerate(texts) if ranks[public_id] == 2]]
    assert page.errors == []


def test_drag_ranking(context, server):
    page = open_page(context, server, "dragger")
    item = skip_until(page, lambda prompt: "window" not in prompt, responses=3)
    ids = shown_ids(page)
    handle = page.locator("#responses > li").last.locator(".handle").bounding_box()
    top = page.locator("#responses > li").first.bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(top["x"] + 40, top["y"] + 5, steps=12)
    page.mouse.up()
    assert shown_ids(page) == [ids[-1], *ids[:-1]]
    page.click("#submit")
    submitted(page, item)
    assert server.ranks(item, "dragger") == {public_id: i + 1 for i, public_id in enumerate([ids[-1], *ids[:-1]])}


def test_two_annotators_at_once(browser, server):
    contexts = [browser.new_context() for _ in range(2)]
    try:
        pages = [open_page(c, server, name) for c, name in zip(contexts, ("ann1", "ann2"))]
        first = [current_item(page) for page in pages]
        assert first[0] != first[1]  # an item open for one annotator goes to the other one later
        for _ in range(2):
            for page, name in zip(pages, ("ann1", "ann2")):
                item = current_item(page)
                page.keyboard.press("Enter")
                submitted(page, item)
        for name in ("ann1", "ann2"):
            rows = server.query("SELECT item_id FROM judgements WHERE annotator = ? AND verdict = 'ranked'", (name,))
            assert len({item for (item,) in rows}) == 2
    finally:
        for c in contexts:
            c.close()


def test_redteam_page(context, server):
    page = open_page(context, server, "red", path="redteam")
    page.wait_for_selector("#write:not([hidden])")
    prompt = "review : <img src=x onerror=window.pwned=3> pool"
    page.fill("#new-prompt", prompt)
    page.click("#ask")
    page.wait_for_selector("#flag:not([hidden])")
    item = int(page.get_attribute("#flag", "data-item"))
    assert page.text_content("#prompt") == prompt and page.locator("main img").count() == 0
    cards = page.locator("#responses > li")
    assert cards.count() == 2
    cards.nth(0).locator("input[value=harmful]").check()
    cards.nth(0).locator(".flag-note").fill("insulting")
    page.click("#save")
    assert "Flag every response" in page.text_content("#status")  # the second one is not flagged yet
    cards.nth(1).locator("input[value=fine]").check()
    page.fill("#better", "the pool was lovely .")
    page.click("#save")
    page.wait_for_selector(f"#status.saved:has-text('Saved: red-team item {item}')")
    [(verdict, flags, better)] = server.query("SELECT verdict, flags, better FROM judgements WHERE item_id = ?", (item,))
    assert verdict == "flagged" and better == "the pool was lovely ."
    assert sorted(f["category"] for f in json.loads(flags)) == ["fine", "harmful"]
    assert page.evaluate("window.pwned") is None and page.errors == []


def test_sigkill_between_submissions_loses_nothing_confirmed(context, server):
    page = open_page(context, server, "crash")
    first = current_item(page)
    page.keyboard.press("Enter")
    submitted(page, first)
    wait_past(page, first)
    second = current_item(page)
    server.kill()  # between two submissions: the page said "saved" and shows the next item
    assert server.query("SELECT COUNT(*) FROM judgements WHERE item_id = ? AND annotator = 'crash'", (first,)) == [(1,)]
    page.keyboard.press("Enter")
    page.wait_for_selector("#status.error:has-text('Not saved')")  # the page does not pretend
    server.start()
    page.keyboard.press("Enter")
    submitted(page, second)
    judged = server.query("SELECT item_id FROM judgements WHERE annotator = 'crash' ORDER BY id")
    assert judged == [(first,), (second,)]
    page.reload()
    assert current_item(page) not in (first, second)


def test_items_added_while_the_page_waits(context, tmp_path):
    """`serve --db` alone, as for `fastrlhf iterate --labeler human`: a page with nothing to rank says so and
    shows an item added later by itself; a closed item (a round that went on) is not offered."""
    server = Server(tmp_path, sampled=False)
    server.start()
    try:
        page = open_page(context, server, "late")
        page.wait_for_selector("#waiting:not([hidden])")
        assert page.text_content("#waiting-text") == "Nothing to rank right now. New items appear here by themselves."
        store = db.Store(server.db)
        store.import_judgements([{"external_id": f"run/round-1/{i}", "prompt": f"review : {aspect}",
                                  "responses": [f"the {aspect} was great .", f"the {aspect} was bad ."],
                                  "policies": ["sft", "sft"], "finished": [True, True], "annotations": []}
                                 for i, aspect in enumerate(("pool", "view"))], "iterate")
        [(closed, *_)] = store.items_by_external_id(["run/round-1/0"])
        store.set_closed([closed["id"]], True)
        item = current_item(page)  # the page asks again every 5 seconds
        assert page.text_content("#prompt") == "review : view"
        page.keyboard.press("Enter")
        submitted(page, item)
        page.wait_for_selector("#waiting:not([hidden])")
        assert server.query("SELECT COUNT(*) FROM judgements WHERE annotator = 'late'") == [(1,)]
        assert page.errors == []
    finally:
        server.stop()
