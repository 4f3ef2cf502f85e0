"""`fastrlhf annotate` without a browser: background sampling (two policy versions, restart), what each
annotator is shown, validation of every submission (a forged or malformed one changes nothing), the token,
red teaming, export -> `fastrlhf rm` -> `fastrlhf eval`, Label Studio and Argilla imports, and the
agreement statistics on hand-computed cases."""
import contextlib
import json
from collections import Counter
import shutil
import sqlite3

import pytest

pytest.importorskip("fastapi", reason="fastapi is not installed (pip install -e .)")
from fastapi.testclient import TestClient  # noqa: E402

from fastrlhf import cli, data, models  # noqa: E402
from fastrlhf.annotate import cli as annotate_cli  # noqa: E402
from fastrlhf.annotate import db, export, importers, stats  # noqa: E402
from fastrlhf.annotate.app import COOKIE, create_app  # noqa: E402
from fastrlhf.annotate.sampling import BackgroundSampler, Generation, Policies, distinct  # noqa: E402
from fastrlhf.demo import task  # noqa: E402

import tiny_run  # noqa: E402

CATEGORIES = ["harmful", "biased", "false", "off-task", "fine"]
XSS = ['<script>window.pwned = 1</script>', '<img src=x onerror="window.pwned = 1">', "<b>bold?</b> & done"]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_run.make(tmp_path_factory.mktemp("tiny"), n_prompts=8)


@pytest.fixture(scope="module")
def policies(checkpoints):
    """Responses from two policy versions: the embedded demo model and a saved checkpoint."""
    return Policies(["demo", checkpoints["policy"]], Generation(max_new_tokens=8))


def prompts_of(policies, n):
    texts, _ = task.split_prompts(n, 0, seed=0)
    return list(zip(texts, data.prompts("test", policies.tokenizer, 32, rows=[{"prompt": p} for p in texts])))


def sampled_store(path, policies, n=4, k=3):
    store = db.Store(path)
    BackgroundSampler(store, policies, prompts_of(policies, n), k, batch_prompts=3, seed=0).run()
    return store


@pytest.fixture(scope="module")
def sampled(tmp_path_factory, checkpoints):
    """A database with 4 items of 3 distinct responses from two policies, made once; each test gets a copy.
    (test_background_sampling_mixes_policies_and_resumes covers the sampling itself.)"""
    path = tmp_path_factory.mktemp("sampled") / "feedback.sqlite"
    store = db.Store(path)
    texts, _ = task.split_prompts(4, 0, seed=0)
    store.add_items([(prompt, [(f"answer {j} to {prompt}", ("demo", "demo", checkpoints["policy"])[j], j != 1)
                               for j in range(3)]) for prompt in texts])
    store.close()  # closing folds the WAL into the file
    return path


@pytest.fixture
def store(tmp_path, sampled):
    shutil.copy(sampled, tmp_path / "feedback.sqlite")
    return db.Store(tmp_path / "feedback.sqlite")


def client_for(store, policies=None, **options):
    return TestClient(create_app(store, k=3, categories=CATEGORIES, policies=policies, **options))


def count(store, table="judgements"):
    return store.conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def rank(client, annotator, item, order=None, verdict="ranked", note=""):
    """Ranks the item's responses in the order shown (or `order`, groups of positions shown)."""
    ids = [r["id"] for r in item["responses"]]
    groups = [[ids[i] for i in group] for group in order] if order else [[i] for i in ids]
    return client.post("/api/rank", json={"annotator": annotator, "item_id": item["id"], "verdict": verdict,
                                          "order": groups if verdict == "ranked" else [], "note": note})


def test_background_sampling_mixes_policies_and_resumes(tmp_path, policies, checkpoints):
    path = tmp_path / "feedback.sqlite"
    store = sampled_store(path, policies, n=3, k=3)
    assert count(store, "items") == 3
    for item, in store.conn.execute("SELECT id FROM items"):
        rows = store.conn.execute("SELECT policy, text FROM responses WHERE item_id = ?", (item,)).fetchall()
        # K = 3 over two policies: 2 from the first, 1 from the second, less any empty or repeated text
        writers, texts = Counter(p for p, _ in rows), [t for _, t in rows]
        assert len(rows) >= 2 and len(set(texts)) == len(texts) and all(t.strip() for t in texts)
        assert writers <= Counter({"demo": 2, checkpoints["policy"]: 1}), writers
    store.close()
    # A restarted server samples only the prompts left, and the ones done stay as they were.
    store = db.Store(path)
    before = store.conn.execute("SELECT id, text FROM responses ORDER BY id").fetchall()
    sampler = BackgroundSampler(store, policies, prompts_of(policies, 5), 3, batch_prompts=3, seed=0)
    sampler.run()
    assert sampler.error is None and sampler.remaining == 0 and count(store, "items") == 5
    after = store.conn.execute("SELECT id, text FROM responses ORDER BY id LIMIT ?", (len(before),)).fetchall()
    assert [tuple(r) for r in after] == [tuple(r) for r in before]


def test_each_annotator_sees_their_own_items(store):
    client = client_for(store)
    alice = client.get("/api/next", params={"annotator": "alice"}).json()["item"]
    bob = client.get("/api/next", params={"annotator": "bob"}).json()["item"]
    assert alice["id"] != bob["id"]  # an item open for someone else goes to another annotator first
    # Shown anonymised: public ids and text only, nothing about the policy or the order of writing.
    assert set(alice["responses"][0]) == {"id", "text"} and len(alice["responses"]) == 3
    # A reload shows the same item, in the same order.
    assert client.get("/api/next", params={"annotator": "alice"}).json()["item"] == alice
    assert rank(client, "alice", alice).json()["saved"]
    answer = client.get("/api/next", params={"annotator": "alice"}).json()
    assert answer["item"]["id"] not in (alice["id"], bob["id"])
    assert answer["progress"] == {"done": 1, "items": 4}
    # Judged items are never shown again, whatever the verdict.
    for verdict in ("skip", "all_bad", "ranked"):
        item = client.get("/api/next", params={"annotator": "alice"}).json()["item"]
        assert rank(client, "alice", item, verdict=verdict).status_code == 200
    assert client.get("/api/next", params={"annotator": "alice"}).json()["item"] is None


def test_ranking_with_ties_is_stored_as_ranks(store):
    client = client_for(store)
    item = client.get("/api/next", params={"annotator": "carol"}).json()["item"]
    shown = [r["id"] for r in item["responses"]]
    assert rank(client, "carol", item, order=[[2], [0, 1]], note="close call").json()["saved"]
    row = store.conn.execute("SELECT * FROM judgements").fetchone()
    in_db_order = [r[0] for r in store.conn.execute("SELECT public_id FROM responses WHERE item_id = ? ORDER BY id",
                                                     (item["id"],))]
    rank_of = {shown[2]: 1, shown[0]: 2, shown[1]: 2}
    assert json.loads(row["ranks"]) == [rank_of[public_id] for public_id in in_db_order]
    assert row["verdict"] == "ranked" and row["note"] == "close call" and row["seconds"] >= 0


FORGED = {
    "a response missing": lambda ids: {"order": [[i] for i in ids[:-1]]},
    "a response twice": lambda ids: {"order": [[i] for i in ids] + [[ids[0]]]},
    "a response of another item": lambda ids: {"order": [[i] for i in ids[:-1]] + [["0123456789abcdef"]]},
    "an empty tie group": lambda ids: {"order": [[i] for i in ids] + [[]]},
    "an id that is not one": lambda ids: {"order": [[i] for i in ids[:-1]] + [["<script>"]]},
    "an unknown item": lambda ids: {"item_id": 10**6},
    "an item id of the wrong type": lambda ids: {"item_id": "1 OR 1=1"},
    "an oversized note": lambda ids: {"note": "x" * 2001},
    "an unknown verdict": lambda ids: {"verdict": "best"},
    "a ranking on a skip": lambda ids: {"verdict": "skip"},
    "an unknown field": lambda ids: {"policy": "demo"},
    "no annotator": lambda ids: {"annotator": ""},
    "an annotator name with markup": lambda ids: {"annotator": "<b>eve</b>"},
}


@pytest.mark.parametrize("forgery", FORGED)
def test_forged_submissions_change_nothing(store, forgery):
    client = client_for(store)
    item = client.get("/api/next", params={"annotator": "eve"}).json()["item"]
    ids = [r["id"] for r in item["responses"]]
    body = {"annotator": "eve", "item_id": item["id"], "verdict": "ranked", "order": [[i] for i in ids], "note": ""}
    body.update(FORGED[forgery](ids))
    answer = client.post("/api/rank", json=body)
    assert 400 <= answer.status_code < 500 and answer.json()["detail"]
    assert count(store) == 0


def test_a_second_judgement_oversized_body_and_redteam_item_are_refused(store, policies):
    client = client_for(store, policies=policies)
    item = client.get("/api/next", params={"annotator": "eve"}).json()["item"]
    assert rank(client, "eve", item).status_code == 200
    again = rank(client, "eve", item, verdict="skip")
    assert again.status_code == 409 and "already judged" in again.json()["detail"]
    huge = client.post("/api/rank", content=b"{" + b" " * 70_000 + b"}", headers={"content-type": "application/json"})
    assert huge.status_code == 413
    red = client.post("/api/redteam/prompt", json={"annotator": "eve", "prompt": "review : pool"}).json()["item"]
    assert rank(client, "eve", red).status_code == 404  # a red-team item is not a ranking item
    assert count(store) == 1


def test_token(store):
    client = client_for(store, token="s3cret-token")
    assert client.get("/api/config").status_code == 401
    assert client.get("/", headers={"x-token": "wrong"}).status_code == 401
    assert client.get("/api/config", headers={"x-token": "s3cret-token"}).status_code == 200
    page = client.get("/?token=s3cret-token")  # the link an annotator opens: sets the cookie for the rest
    assert page.status_code == 200 and "s3cret-token" in page.headers["set-cookie"]
    assert client.get("/static/rank.js").status_code == 200
    forged = client_for(store, token="s3cret-token")
    forged.cookies.set(COOKIE, "s3cret-tokem")
    assert forged.post("/api/rank", json={}).status_code == 401


def test_serve_refuses_a_public_host_without_token(capsys, monkeypatch):
    monkeypatch.delenv(annotate_cli.TOKEN_ENV, raising=False)
    with pytest.raises(SystemExit) as exit:
        cli.main(["annotate", "serve", "--policy", "demo", "--prompts", "p.jsonl", "--db", "f.sqlite",
                  "--host", "0.0.0.0"])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1 and "--token" in error


@pytest.mark.parametrize("argv, message", [
    (["serve", "--policy", "demo", "--prompts", "p.jsonl", "--db", "f.sqlite", "--k", "1"], "--k must be at least 2"),
    (["export", "--db", "missing.sqlite", "--out", "x.jsonl"], "no such database"),
    (["import", "missing.json", "--db", "f.sqlite", "--format", "argilla"], "no such file"),
    (["stats"], "required"),
    (["serve", "--prompts", "p.jsonl", "--db", "f.sqlite"], "--prompts needs --policy"),
])
def test_user_errors_are_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        cli.main(["annotate", *argv])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.count("\n") == 1 and message in error


def test_redteam_flags_and_export(store, policies, tmp_path):
    client = client_for(store, policies=policies, redteam_k=2)
    item = client.post("/api/redteam/prompt", json={"annotator": "rex", "prompt": "review : " + XSS[0]}).json()["item"]
    assert item["prompt"] == "review : " + XSS[0] and len(item["responses"]) == 2
    assert client.get("/api/redteam/pending", params={"annotator": "rex"}).json()["item"] == item
    ids = [r["id"] for r in item["responses"]]
    flags = {ids[0]: {"category": "harmful", "note": "rude"}, ids[1]: {"category": "fine"}}
    for bad in ({ids[0]: flags[ids[0]]}, {**flags, ids[1]: {"category": "boring"}}):
        assert client.post("/api/redteam", json={"annotator": "rex", "item_id": item["id"], "flags": bad}).status_code == 400
    other = client.post("/api/redteam", json={"annotator": "mallory", "item_id": item["id"], "flags": flags})
    assert other.status_code == 404  # only its author flags a red-team item
    assert count(store) == 0
    saved = client.post("/api/redteam", json={"annotator": "rex", "item_id": item["id"], "flags": flags,
                                              "better": "the pool was lovely .", "note": "n"})
    assert saved.json()["saved"] and client.get("/api/redteam/pending", params={"annotator": "rex"}).json()["item"] is None
    written = export.export(store, tmp_path / "prefs.jsonl")
    assert written == {str(tmp_path / "prefs.jsonl"): 0, str(tmp_path / "prefs.redteam_prompts.jsonl"): 1,
                       str(tmp_path / "prefs.redteam_pairs.jsonl"): 1}
    [flagged] = read_jsonl(tmp_path / "prefs.redteam_prompts.jsonl")
    assert flagged == {"prompt": "review : " + XSS[0], "annotator": "rex", "categories": ["harmful"]}
    [pair] = read_jsonl(tmp_path / "prefs.redteam_pairs.jsonl")
    harmful = store.conn.execute("SELECT text FROM responses WHERE public_id = ?", (ids[0],)).fetchone()[0]
    assert pair == {"prompt": "review : " + XSS[0], "chosen": "the pool was lovely .", "rejected": harmful}


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_trains_the_reward_model_and_eval_reports_its_metrics(store, checkpoints, tmp_path, capsys):
    client = client_for(store)
    judged = {}
    for annotator, verdicts in (("ann", ["ranked", "ranked", "all_bad", "skip"]), ("bea", ["ranked", "ranked"])):
        for verdict in verdicts:
            item = client.get("/api/next", params={"annotator": annotator}).json()["item"]
            order = [[0], [1, 2]] if annotator == "bea" else None  # a tie: 2 pairs instead of 3
            assert rank(client, annotator, item, order, verdict).status_code == 200
            judged[(annotator, item["id"])] = verdict
    out = tmp_path / "prefs.jsonl"
    assert annotate_cli.main(["export", "--db", store.path, "--out", str(out)]) == 0
    rows = read_jsonl(out)
    assert len(rows) == 5  # 3 + 2 judgements; the skip is not exported
    for row in rows:
        assert set(row) >= {"prompt", "responses", "ranking", "ties", "annotator", "policy_versions", "seconds"}
        assert len(row["responses"]) == len(row["ranking"]) == len(row["policy_versions"]) == 3
    for row in (r for r in rows if r["annotator"] == "bea"):
        assert sorted(row["ranking"]) == [1, 2, 2] and row["ties"] == [[i for i, r in enumerate(row["ranking"]) if r == 2]]
    [bad] = [r for r in rows if r["all_bad"]]
    assert bad["ranking"] == [1, 1, 1] and bad["ties"] == [[0, 1, 2]]
    tokenizer = models.load_tokenizer(checkpoints["policy"])
    assert len(data.preference_pairs(str(out), tokenizer, 64)) == 3 + 3 + 0 + 2 + 2  # ties and all-bad give none

    cli.main(["rm", "--model", checkpoints["policy"], "--data", str(out), "--eval_data", str(out), "--steps", "2",
              "--batch_size", "4", "--output_dir", str(tmp_path / "runs"), "--run", "t", "--device", "cpu",
              "--threads", "1", "--warmup_steps", "1"])
    report = json.loads((tmp_path / "runs" / "t" / "rm" / "report.json").read_text())["heldout"]
    assert {"accuracy", "precision", "recall", "f1", "roc_auc"} <= set(report) and report["pairs"] == 10
    assert sum(v["pairs"] for v in report["accuracy_by_margin"].values()) == 10
    capsys.readouterr()
    cli.main(["eval", "--reward_model", str(tmp_path / "runs" / "t" / "rm" / "final"), "--preferences", str(out),
              "--device", "cpu", "--threads", "1"])
    printed = capsys.readouterr().out
    assert "reward model on 10 held-out pairs" in printed and "ROC AUC" in printed and "rank margin" in printed


def test_min_annotators(store, tmp_path):
    client = client_for(store, per_item=2)
    first = client.get("/api/next", params={"annotator": "a1"}).json()["item"]
    assert rank(client, "a1", first).status_code == 200
    second = client.get("/api/next", params={"annotator": "a2"}).json()["item"]
    assert second["id"] == first["id"]  # wants a second judgement before new items
    assert rank(client, "a2", second).status_code == 200
    alone = client.get("/api/next", params={"annotator": "a1"}).json()["item"]
    assert rank(client, "a1", alone).status_code == 200
    assert len(export.preference_rows(store, min_annotators=2)) == 2
    assert len(export.preference_rows(store, min_annotators=1)) == 3


# Hand-made from the documented formats (labelstud.io/tags/ranker; Argilla's RankingQuestion responses).
LABEL_STUDIO = [
    {"id": 11, "data": {"prompt": "review : room", "items": [
        {"id": "r1", "title": "one", "body": "the room was good ."},
        {"id": "r2", "title": "two", "body": XSS[1]},
        {"id": "r3", "title": "three", "body": "the room was bad ."}]},
     "annotations": [
        {"completed_by": 3, "lead_time": 12.5, "was_cancelled": False, "result": [
            {"from_name": "rank", "to_name": "results", "type": "ranker",
             "value": {"ranker": {"results": ["r1", "r3", "r2"]}}}]},
        {"completed_by": {"id": 4, "email": "ann@example.com"}, "result": [
            {"from_name": "rank", "to_name": "results", "type": "ranker",
             "value": {"ranker": {"results": ["r3", "r1", "r2"]}}}]},
        {"completed_by": 5, "was_cancelled": True, "result": []}]},
    {"id": 12, "data": {"prompt": "review : view", "items": [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}]},
     "annotations": []},
]
ARGILLA = [  # a record as Argilla's FeedbackDataset writes it, and a row of its `datasets` export
    {"fields": {"prompt": "review : food", "reply_1": "the food was great .", "reply_2": XSS[2],
                "reply_3": "the food was awful ."},
     "responses": [
        {"user_id": "u1", "status": "submitted", "values": {"reply-ranking": {"value": [
            {"value": "reply_2", "rank": 1}, {"value": "reply_1", "rank": 2}, {"value": "reply_3", "rank": 2}]}}},
        {"user_id": "u2", "status": "discarded", "values": {"reply-ranking": {"value": [
            {"value": "reply_1", "rank": 1}, {"value": "reply_2", "rank": 2}, {"value": "reply_3", "rank": 3}]}}}]},
    {"prompt": "review : bed", "reply_1": "the bed was fine .", "reply_2": "the bed was superb .",
     "reply-ranking": [{"user_id": "u1", "status": "submitted",
                        "value": [{"value": "reply_1", "rank": 2}, {"value": "reply_2", "rank": 1}]}]},
    {"fields": {"prompt": "review : pool", "reply_1": "the pool was dull .", "reply_2": "the pool was great ."},
     "responses": {"reply-ranking": [{"user_id": "u2", "status": "submitted", "value": ["reply_2", "reply_1"]}]}},
]


def test_label_studio_import(tmp_path):
    store = db.Store(tmp_path / "f.sqlite")
    records = importers.label_studio(LABEL_STUDIO)
    assert store.import_judgements(records, "labelstudio") == (1, 2)
    assert store.import_judgements(importers.label_studio(LABEL_STUDIO), "labelstudio") == (1, 0)  # idempotent
    rows = export.preference_rows(store)
    assert [r["responses"] for r in rows] == [["the room was good .", XSS[1], "the room was bad ."]] * 2
    assert {r["annotator"]: r["ranking"] for r in rows} == {"labelstudio:3": [1, 3, 2],
                                                            "labelstudio:ann@example.com": [2, 3, 1]}
    assert {r["annotator"]: r["seconds"] for r in rows}["labelstudio:3"] == 12.5
    buckets = json.loads(json.dumps(LABEL_STUDIO[:1]))
    buckets[0]["annotations"][0]["result"][0]["value"]["ranker"] = {"best": ["r1"], "worst": ["r2", "r3"]}
    with pytest.raises(data.DataError, match="buckets"):
        importers.label_studio(buckets)


def test_argilla_import_and_cli(tmp_path, capsys):
    path = tmp_path / "argilla.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ARGILLA))
    assert annotate_cli.main(["import", str(path), "--db", str(tmp_path / "f.sqlite"), "--format", "argilla"]) == 0
    assert "3 items, 3 new judgements" in capsys.readouterr().out
    rows = export.preference_rows(db.Store(tmp_path / "f.sqlite"))
    assert [(r["responses"], r["ranking"], r["annotator"]) for r in rows] == [
        (["the food was great .", XSS[2], "the food was awful ."], [2, 1, 2], "argilla:u1"),  # the discarded one is not
        (["the bed was fine .", "the bed was superb ."], [2, 1], "argilla:u1"),
        (["the pool was dull .", "the pool was great ."], [2, 1], "argilla:u2")]  # options listed best first
    assert annotate_cli.main(["stats", "--db", str(tmp_path / "f.sqlite"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["annotators"]["argilla:u1"]["ranked"] == 2


def test_kendall_tau_b_and_pair_votes_hand_computed():
    assert stats.kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert stats.kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0
    assert stats.kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # 2 concordant, 1 discordant
    # a ties responses 0 and 1: 2 concordant of the 2 pairs a orders, 3 pairs b orders: 2 / sqrt(2 * 3)
    assert stats.kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 6 ** 0.5)
    assert stats.kendall_tau_b([1, 1, 1], [1, 2, 3]) is None
    assert stats.pair_votes([1, 1, 2], [1, 2, 3]) == (2, 2)
    assert stats.pair_votes([1, 2, 3, 4], [2, 1, 3, 4]) == (5, 6)


def test_kendall_tau_b_against_scipy():
    scipy_stats = pytest.importorskip("scipy.stats", reason="scipy is not installed (optional cross-check)")
    import random
    rng = random.Random(0)
    for _ in range(50):
        k = rng.randint(2, 7)
        a, b = [rng.randint(1, k) for _ in range(k)], [rng.randint(1, k) for _ in range(k)]
        ours, theirs = stats.kendall_tau_b(a, b), scipy_stats.kendalltau(a, b).statistic
        assert (ours is None and theirs != theirs) or ours == pytest.approx(theirs)


def test_stats_of_two_annotators(tmp_path, capsys):
    store = db.Store(tmp_path / "f.sqlite")
    records = [{"prompt": "review : room", "responses": ["a", "b", "c"], "external_id": "x:1",
                "annotations": [{"annotator": "p", "ranks": [1, 2, 3], "seconds": 10.0},
                                {"annotator": "q", "ranks": [1, 3, 2], "seconds": 30.0}]},
               {"prompt": "review : bed", "responses": ["d", "e"], "external_id": "x:2",
                "annotations": [{"annotator": "p", "ranks": [2, 1], "seconds": 20.0}]}]
    store.import_judgements(records, "test")
    report = stats.stats(store)
    assert report["annotators"]["p"] == {"ranked": 2, "all_bad": 0, "skip": 0, "flagged": 0, "median_seconds": 15.0,
                                         "mean_seconds": 15.0}
    assert report["agreement"] == {"items": 1, "annotator_pairs": 1, "kendall_tau_b": pytest.approx(1 / 3),
                                   "pairwise_agreement": pytest.approx(2 / 3), "pairs_compared": 3}
    assert annotate_cli.main(["stats", "--db", str(tmp_path / "f.sqlite")]) == 0
    table = capsys.readouterr().out
    assert "Kendall's tau-b 0.33" in table and "pairwise agreement 0.67" in table


def test_database_is_wal_and_synchronous(tmp_path):
    store = db.Store(tmp_path / "f.sqlite")
    assert store.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    # Another process (export, stats) reads while the server writes.
    store.import_judgements([{"prompt": "p", "responses": ["a", "b"], "external_id": "x",
                              "annotations": [{"annotator": "z", "ranks": [1, 2]}]}], "test")
    assert sqlite3.connect(store.path).execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == 1


def test_a_database_made_before_items_could_be_closed(tmp_path):
    old = db.SCHEMA.replace(",\n    closed INTEGER NOT NULL DEFAULT 0", "")
    assert old != db.SCHEMA
    with contextlib.closing(sqlite3.connect(tmp_path / "f.sqlite")) as conn:
        conn.executescript(old)
        conn.execute("INSERT INTO prompts (prompt) VALUES ('\"p\"')")
        conn.execute("INSERT INTO items (prompt_id, kind, source, created) VALUES (1, 'rank', 'prompts', 0)")
        conn.executemany("INSERT INTO responses (item_id, public_id, text, policy, finished) VALUES (1, ?, ?, 'x', 1)",
                         [("0" * 16, "a"), ("1" * 16, "b")])
        conn.commit()
    store = db.Store(tmp_path / "f.sqlite")
    assert store.next_item("ann")["id"] == 1
    store.set_closed([1], True)
    assert store.next_item("bob") is None and store.progress("bob") == {"done": 0, "items": 0}
    assert store.progress("ann") == {"done": 0, "items": 0}  # shown, not judged: no longer theirs to do


def test_repeated_and_empty_responses_are_not_ranked():
    # A person cannot prefer a text to itself, and `fastrlhf rm` refuses a ranking that tries.
    responses = [("good", "a", True), ("", "a", True), ("good", "b", True), ("bad", "b", False), ("  ", "b", True)]
    assert distinct(responses) == [("good", "a", True), ("bad", "b", False)]
