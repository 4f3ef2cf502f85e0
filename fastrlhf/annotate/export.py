"""Exports: preference rows that `fastrlhf rm --data` trains on directly, and the red-team flags.

Preference rows (JSONL), one per judgement, so an item ranked by three annotators gives three rows:
  {prompt, responses, ranking, ties, annotator, policy_versions, seconds, all_bad, note}
  ranking[i] is the rank of responses[i]: 1 = best, tied responses share a rank (1, 2, 2, 4). `ties` lists
  the groups of tied response indices. The reward model trains on a K-way ranking's K(K-1)/2 pairs, and
  tied responses give no pair. An "all bad" judgement ranks every response 1 (one tie group), so it
  gives no pair either; it is exported to keep the count of bad samples. Skips are not exported.
  policy_versions[i] is the policy that wrote responses[i]; seconds is the time from first showing
  the item to the judgement.
Red team:
  prompts  {prompt, categories, annotator}: every red-team prompt with a response flagged in a category
           other than "fine": an eval prompt set (`fastrlhf eval --prompts`)
  pairs    {prompt, chosen, rejected}: where the annotator wrote a better response, it is chosen over each
           flagged response (`fastrlhf rm --data`)
"""
import json
import os
from pathlib import Path

OK_CATEGORY = "fine"


def tie_groups(ranking):
    """Indices of responses sharing a rank, for each rank shared by more than one, best first."""
    groups = {}
    for i, rank in enumerate(ranking):
        groups.setdefault(rank, []).append(i)
    return [groups[rank] for rank in sorted(groups) if len(groups[rank]) > 1]


def judgement_ranking(judgement, k):
    """The ranks a judgement gives the item's k responses (in response-id order): its ranking, every response
    tied for "all bad", None for a skip."""
    if judgement["verdict"] == "ranked":
        return json.loads(judgement["ranks"])
    return [1] * k if judgement["verdict"] == "all_bad" else None


def preference_rows(store, min_annotators=1):
    """Rows of the items ranked (or judged all bad) by at least `min_annotators` annotators."""
    rows = []
    for item, responses, judgements in store.judged_items("rank"):
        kept = [j for j in judgements if j["verdict"] in ("ranked", "all_bad")]
        if len(kept) < min_annotators:
            continue
        for j in kept:
            ranking = judgement_ranking(j, len(responses))
            rows.append({"prompt": json.loads(item["prompt"]), "responses": [r["text"] for r in responses],
                         "ranking": ranking, "ties": tie_groups(ranking), "annotator": j["annotator"],
                         "policy_versions": [r["policy"] for r in responses], "seconds": j["seconds"],
                         "all_bad": j["verdict"] == "all_bad", "note": j["note"]})
    return rows


def redteam_rows(store):
    """(eval prompt rows, {prompt, chosen, rejected} rows) of the red-team judgements."""
    prompts, pairs = [], []
    for item, responses, judgements in store.judged_items("redteam"):
        prompt = json.loads(item["prompt"])
        for j in judgements:
            flags = json.loads(j["flags"])
            flagged = [r["text"] for r, f in zip(responses, flags) if f["category"] != OK_CATEGORY]
            if flagged:
                prompts.append({"prompt": prompt, "annotator": j["annotator"],
                                "categories": sorted({f["category"] for f in flags} - {OK_CATEGORY})})
            if j["better"].strip():
                pairs += [{"prompt": prompt, "chosen": j["better"], "rejected": text} for text in flagged]
    return prompts, pairs


def write_jsonl(path, rows):
    """Written to a temporary file then renamed: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def export(store, out, min_annotators=1, redteam_prompts=None, redteam_pairs=None):
    """Writes the files; returns {path: number of rows}. The red-team files default to <out stem>.redteam_*.jsonl
    and are written when there are red-team judgements."""
    out = Path(out)
    written = {str(out): preference_rows(store, min_annotators)}
    prompts, pairs = redteam_rows(store)
    if prompts or pairs or redteam_prompts or redteam_pairs:
        written[str(redteam_prompts or out.with_name(f"{out.stem}.redteam_prompts.jsonl"))] = prompts
        written[str(redteam_pairs or out.with_name(f"{out.stem}.redteam_pairs.jsonl"))] = pairs
    for path, rows in written.items():
        write_jsonl(path, rows)
    return {path: len(rows) for path, rows in written.items()}
