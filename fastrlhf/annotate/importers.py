"""Rankings made in other tools, read into the feedback database as ranking items and their judgements.
Importing the same file again adds nothing twice.

Label Studio: the JSON export (a list of tasks) of a project labelled with `<List>` + `<Ranker>`.
  task["data"] holds the prompt (`prompt_field`) and the list's items [{"id", "title", "body"}, ...];
  an annotation's result {"type": "ranker", "to_name": <list name>, "value": {"ranker": {<list name>:
  [item ids, best first]}}} orders every item. A response's text is the item's "body" (else "text", else
  "title"). Cancelled annotations are skipped; Ranker buckets are refused (the export does not order
  them). Annotator "labelstudio:<completed_by>", seconds from lead_time.
Argilla: the records of a dataset with a RankingQuestion, as JSON (a list) or JSONL, in either shape
  Argilla writes them:
    records        {"fields": {...}, "responses": [{"user_id", "status", "values": {<question>: {"value": V}}}]}
                   (also "responses": {<question>: [{"user_id", "status", "value": V}]})
    datasets rows  {<field>: text, ..., <question>: [{"user_id", "status", "value": V}]}
  V ranks the question's options: [{"value": <option>, "rank": r}, ...] (ties share a rank) or a list of
  options, best first. Each option names the field holding its response. Only "submitted" responses
  count. Annotator "argilla:<user_id>".
"""
import hashlib
import json
from pathlib import Path

from ..data import DataError

TEXT_KEYS = ("body", "text", "title")


def read_json(path):
    """A JSON list/object, or JSONL (one object a line)."""
    text = Path(path).read_text()
    try:
        loaded = json.loads(text)
        return loaded if isinstance(loaded, list) else [loaded]
    except json.JSONDecodeError:
        try:
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: neither JSON nor JSONL: {error}") from error


def _external_id(source, prompt, responses):
    digest = hashlib.sha256(json.dumps([prompt, responses], ensure_ascii=False).encode()).hexdigest()[:24]
    return f"{source}:{digest}"


def _ranks_from_order(order, ids):
    """Ranks (in `ids` order) from a strict order of all ids, best first."""
    if sorted(order) != sorted(ids):
        raise ValueError(f"the ranking {order} does not order exactly the items {ids}")
    return [order.index(i) + 1 for i in ids]


def label_studio(tasks, prompt_field="prompt"):
    records = []
    for n, task in enumerate(tasks, 1):
        where = f"Label Studio task {task.get('id', n)}"
        data = task.get("data", {})
        if not isinstance(data.get(prompt_field), (str, list)):
            raise DataError(f"{where}: no prompt in data[{prompt_field!r}] (set --prompt-field)")
        annotations = []
        for annotation in task.get("annotations", []):
            if annotation.get("was_cancelled"):
                continue
            for result in annotation.get("result", []):
                if result.get("type") != "ranker":
                    continue
                ranker, list_name = result["value"]["ranker"], result.get("to_name")
                if list(ranker) != [list_name]:
                    raise DataError(f"{where}: Ranker buckets {sorted(ranker)} are not supported: only a "
                                    f"plain ranking of the list {list_name!r}")
                items = _list_items(data, ranker[list_name], where)
                ids = [item["id"] for item in items]
                try:
                    ranks = _ranks_from_order(ranker[list_name], ids)
                except ValueError as error:
                    raise DataError(f"{where}: {error}") from error
                user = annotation.get("completed_by")
                user = user.get("email", user.get("id")) if isinstance(user, dict) else user
                annotations.append({"annotator": f"labelstudio:{user}", "ranks": ranks,
                                    "seconds": annotation.get("lead_time")})
        if annotations:
            responses = [next(item[k] for k in TEXT_KEYS if isinstance(item.get(k), str)) for item in items]
            records.append({"prompt": data[prompt_field], "responses": responses, "annotations": annotations,
                            "external_id": _external_id("labelstudio", data[prompt_field], responses)})
    return records


def _list_items(data, ranked_ids, where):
    """The task's list of items that the ranking orders."""
    for value in data.values():
        if (isinstance(value, list) and value and all(isinstance(v, dict) and "id" in v for v in value)
                and sorted(v["id"] for v in value) == sorted(ranked_ids)):
            if not all(any(isinstance(v.get(k), str) for k in TEXT_KEYS) for v in value):
                raise DataError(f"{where}: every list item needs a text in one of {TEXT_KEYS}")
            return value
    raise DataError(f"{where}: no list of items in data whose ids are the ranked ids {ranked_ids}")


def _argilla_responses(record, question):
    """[(user, status, value)] of `question` in any of Argilla's record shapes."""
    responses = record.get("responses")
    if isinstance(responses, list):  # records: one entry per user, a value per question
        return [(r.get("user_id"), r.get("status"), r.get("values", {}).get(question, {}).get("value"))
                for r in responses if question in r.get("values", {})]
    listed = responses.get(question, []) if isinstance(responses, dict) else record.get(question, [])
    return [(r.get("user_id"), r.get("status"), r.get("value")) for r in listed or []]


def _argilla_ranks(value, options, where):
    """Ranks per option from [{"value", "rank"}] or an option list best first."""
    if value and all(isinstance(v, dict) for v in value):
        rank_of = {v["value"]: v.get("rank") for v in value}
        if sorted(rank_of) != sorted(options) or not all(isinstance(r, int) and r >= 1 for r in rank_of.values()):
            raise DataError(f"{where}: the ranking {value} must give every option of {options} an integer rank")
        return [rank_of[o] for o in options]
    try:
        return _ranks_from_order(list(value or []), options)
    except ValueError as error:
        raise DataError(f"{where}: {error}") from error


def argilla(rows, question=None, prompt_field="prompt"):
    records = []
    for n, row in enumerate(rows, 1):
        where = f"Argilla record {row.get('id', row.get('external_id', n))}"
        fields = row.get("fields", row)
        name = question or _ranking_question(row, fields)
        if name is None:
            raise DataError(f"{where}: no ranking question found (set --question)")
        if not isinstance(fields.get(prompt_field), (str, list)):
            raise DataError(f"{where}: no prompt field {prompt_field!r} (set --prompt-field)")
        submitted = [(user, value) for user, status, value in _argilla_responses(row, name)
                     if status in (None, "submitted") and value]
        if not submitted:
            continue
        first = submitted[0][1]
        options = sorted(v["value"] if isinstance(v, dict) else v for v in first)
        missing = [o for o in options if not isinstance(fields.get(o), str)]
        if missing:
            raise DataError(f"{where}: the options {missing} name no text field of the record")
        responses = [fields[o] for o in options]
        records.append({"prompt": fields[prompt_field], "responses": responses,
                        "external_id": _external_id("argilla", fields[prompt_field], responses),
                        "annotations": [{"annotator": f"argilla:{user}", "ranks": _argilla_ranks(value, options, where)}
                                        for user, value in submitted]})
    return records


def _ranking_question(row, fields):
    """The one question whose responses look like rankings of the record's fields."""
    def is_ranking(value):
        names = [v.get("value") if isinstance(v, dict) else v for v in value] if isinstance(value, list) else []
        return len(names) > 1 and all(isinstance(fields.get(name), str) for name in names)
    candidates = set()
    for r in row.get("responses", []) if isinstance(row.get("responses"), list) else []:
        candidates |= {q for q, v in r.get("values", {}).items() if is_ranking(v.get("value"))}
    listed = row["responses"] if isinstance(row.get("responses"), dict) else row
    for key, value in listed.items():
        if isinstance(value, list) and any(isinstance(r, dict) and is_ranking(r.get("value")) for r in value):
            candidates.add(key)
    return candidates.pop() if len(candidates) == 1 else None
