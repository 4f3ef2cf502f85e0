"""Data: rows from local JSONL/JSON/CSV/Parquet files (or a hub dataset), checked, then tokenized.

Row formats:
  SFT         {prompt, response}            or {messages: [{role, content}, ...]} (trains on the last, assistant, turn)
  preference  {prompt, chosen, rejected}    or {prompt, responses: [...], ranking: [...]} (ranking[i] is the
              rank of responses[i]: a permutation of 1..K, 1 = best, tied responses sharing the best of their
              places as in [1, 2, 2, 4]; a K-way ranking gives its K(K-1)/2 pairs, ties give none)
  prompts     {prompt}
A prompt is a string, or a list of chat messages. Chat templates are applied when the tokenizer has
one. Files are UTF-8. Every error names the source, the row (1-based) and the column at fault. A pair
whose chosen and rejected texts are the same, or a ranking that ranks one text twice differently, is an
error (it states no preference); a text repeated with the same rank counts once.
"""
import codecs
import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import is_local
from .errors import UserError

BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SUPPORTED = ", ".join(BUILDERS)
SFT_FORMATS = (("prompt", "response"), ("messages",))
PREFERENCE_FORMATS = (("prompt", "chosen", "rejected"), ("prompt", "responses", "ranking"))
PROMPT_FORMATS = (("prompt",),)
IGNORE = -100  # label of tokens that are not trained on


class DataError(UserError, ValueError):
    """Bad data: the message names the source, and the row and column at fault."""


def load_rows(source):
    """The rows of a local file (by extension) or a hub dataset's train split, as a list of dicts."""
    import datasets  # here, not at the top: importing it is slow and only file loading needs it

    if not source:
        raise DataError(f"no data given: pass a file ({SUPPORTED}) or a dataset name")
    path = Path(source).expanduser()
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix not in BUILDERS:
            raise DataError(f"{source}: unsupported file type {suffix or '(no extension)'}: data files are {SUPPORTED}")
        if path.stat().st_size == 0:
            raise DataError(f"{source}: the file is empty")
        if BUILDERS[suffix] != "parquet":
            _check_utf8(path, source)
        try:
            dataset = _quietly(datasets.load_dataset, BUILDERS[suffix], data_files=str(path), split="train")
        except Exception as error:  # arrow/json/csv parse errors come in many types
            raise DataError(f"{source}: cannot be read as {suffix[1:]}: {_why_unreadable(path, error)}") from error
    elif is_local(source) and not path.exists():
        raise DataError(f"{source}: no such file")
    else:
        try:
            dataset = _quietly(datasets.load_dataset, source, split="train")
        except Exception as error:
            where = "this directory" if path.is_dir() else "a dataset on the Hugging Face hub (no such local file)"
            raise DataError(f"{source}: cannot be loaded as {where}: {_first_line(error)}") from error
    if len(dataset) == 0:
        raise DataError(f"{source}: the dataset is empty")
    return dataset.to_list()


def _quietly(load, *args, **kwargs):
    """load(...) without the loader's own error log (a traceback): the DataError that follows says it in one line."""
    from datasets.utils import logging
    verbosity = logging.get_verbosity()
    logging.set_verbosity(logging.CRITICAL)
    try:
        return load(*args, **kwargs)
    finally:
        logging.set_verbosity(verbosity)


def _first_line(error):
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _check_utf8(path, source):
    """Text files must be UTF-8: the error names the line of the first byte that is not."""
    decoder, line = codecs.getincrementaldecoder("utf-8")(), 1
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                line += error.object[:error.start].count(b"\n")
                raise DataError(f"{source}, line {line}: not UTF-8 text (byte 0x{error.object[error.start]:02x}); "
                                "save the file as UTF-8") from None
            line += chunk.count(b"\n")
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise DataError(f"{source}, line {line}: not UTF-8 text (the file ends inside a character)") from None


def _why_unreadable(path, error):
    """The line at fault in a JSON Lines or JSON file, else the reader's own first line."""
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as bad:
                return f"line {number}, column {bad.colno}: invalid JSON: {bad.msg}"
            if not isinstance(row, dict):
                return f"line {number}: a row is a JSON object, got {type(row).__name__}"
    elif path.suffix.lower() == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as bad:
            return f"line {bad.lineno}, column {bad.colno}: invalid JSON: {bad.msg}"
    return _first_line(error)


def _format(rows, formats, source, kind):
    """The first format whose columns the data has."""
    columns = list(rows[0])
    for names in formats:
        if all(name in columns for name in names):
            return names
    wanted = " or ".join("{" + ", ".join(names) + "}" for names in formats)
    missing = next(name for name in formats[0] if name not in columns)
    raise DataError(f"{source}, row 1: missing column {missing!r}: {kind} rows need {wanted}; found {columns}")


def _where(source, row, column):
    return f"{source}, row {row + 1}, column {column!r}"


def _text(value, source, row, column):
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{_where(source, row, column)}: expected a non-empty string, got {value!r}")
    return value


def _messages(value, source, row, column):
    ok = isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)
    if not ok:
        raise DataError(f"{_where(source, row, column)}: expected a list of {{role, content}} messages, got {value!r}")
    return value


def _prompt(value, source, row):
    return _messages(value, source, row, "prompt") if isinstance(value, list) else _text(value, source, row, "prompt")


def _ranked_pairs(ranking):
    """(better, worse) indices of a ranking's untied pairs (rank 1 = best), as InstructGPT: K responses give
    K(K-1)/2 pairs."""
    for i, j in itertools.combinations(range(len(ranking)), 2):
        if ranking[i] != ranking[j]:
            yield (i, j) if ranking[i] < ranking[j] else (j, i)


def ranking_pairs(responses, ranking):
    """(chosen, rejected) pairs of a ranking."""
    return [(responses[better], responses[worse]) for better, worse in _ranked_pairs(ranking)]


def pair_margins(rows):
    """The rank difference of each pair `preference_pairs` makes of the same rows, in its order (None for
    {chosen, rejected} rows)."""
    if _format(rows, PREFERENCE_FORMATS, "rows", "preference")[1] == "chosen":
        return [None] * len(rows)
    return [row["ranking"][worse] - row["ranking"][better] for row in rows
            for better, worse in _ranked_pairs(row["ranking"])]


def is_ranking(ranks):
    """Ranks 1 (best) to K: a permutation of 1..K, tied responses sharing the best of their places ([1, 2, 2, 4])."""
    return all(r == 1 + sum(other < r for other in ranks) for r in ranks)


def _ranking(row, source, i):
    responses, ranking = row["responses"], row["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(f"{_where(source, i, 'responses')}: expected a list of at least 2 strings, got {responses!r}")
    for response in responses:
        _text(response, source, i, "responses")
    k = len(responses)
    if (not isinstance(ranking, list) or len(ranking) != k
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking)):
        raise DataError(f"{_where(source, i, 'ranking')}: expected {k} integer ranks "
                        f"(one per response, 1 = best), got {ranking!r}")
    if not is_ranking(ranking):
        raise DataError(f"{_where(source, i, 'ranking')}: expected the rank of each response from 1 (best) to {k}, "
                        f"a permutation of 1..{k} (tied responses share the best of their places, as in "
                        f"[1, 2, 2, 4]), got {ranking!r}")
    for a, b in itertools.combinations(range(k), 2):
        if responses[a] == responses[b] and ranking[a] != ranking[b]:
            raise DataError(f"{_where(source, i, 'responses')}: responses {a + 1} and {b + 1} are the same text but "
                            f"ranked {ranking[a]} and {ranking[b]}")
    distinct = dict(zip(responses, ranking))  # a response repeated (and so tied) counts once
    return ranking_pairs(list(distinct), list(distinct.values()))


def _pair(row, source, i):
    chosen, rejected = _text(row["chosen"], source, i, "chosen"), _text(row["rejected"], source, i, "rejected")
    if chosen == rejected:
        raise DataError(f"{_where(source, i, 'rejected')}: the same text as 'chosen'; a preference needs two "
                        "different responses (remove the row)")
    return [(chosen, rejected)]


class Encoder:
    """Turns prompts and responses into token ids: prompt (chat template when there is one) + response + EOS."""

    def __init__(self, tokenizer, source, max_prompt_len):
        self.tokenizer, self.source, self.max_prompt_len = tokenizer, source, max_prompt_len
        self.templated = getattr(tokenizer, "chat_template", None) is not None

    def prompt(self, prompt, row, column="prompt"):
        if self.templated:
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        elif isinstance(prompt, list):
            raise DataError(f"{_where(self.source, row, column)}: chat messages need a tokenizer with a chat template")
        else:
            text = prompt
        # A chat template writes its own special tokens (BOS and friends).
        ids = self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"]
        if len(ids) > self.max_prompt_len:
            raise DataError(f"{_where(self.source, row, column)}: the prompt is {len(ids)} tokens, longer than the "
                            f"limit of {self.max_prompt_len} (raise max_prompt_len / max_len, or shorten it)")
        return ids

    def response(self, text):
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.tokenizer.eos_token_id]


@dataclass
class Example:
    prompt: list  # token ids
    response: list  # token ids ending with EOS (unless truncated)


def _fit(prompt, response, max_len, counter):
    if len(prompt) + len(response) > max_len:
        counter[0] += 1
        response = response[:max_len - len(prompt)]
    return Example(prompt, response)


def _warn_truncated(counter, source, max_len):
    if counter[0]:
        warnings.warn(f"{source}: {counter[0]} responses truncated to fit max_len={max_len} (they lose their EOS)")


def sft_examples(source, tokenizer, max_len, rows=None):
    rows = load_rows(source) if rows is None else rows
    names = _format(rows, SFT_FORMATS, source, "SFT")
    encode, truncated, examples = Encoder(tokenizer, source, max_len - 1), [0], []
    for i, row in enumerate(rows):
        if names == ("messages",):
            messages = _messages(row["messages"], source, i, "messages")
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise DataError(f"{_where(source, i, 'messages')}: expected prompt messages then the assistant's "
                                f"answer last, got roles {[m['role'] for m in messages]}")
            prompt = encode.prompt(messages[:-1], i, "messages")
            response = encode.response(messages[-1]["content"])
        else:
            prompt = encode.prompt(_prompt(row["prompt"], source, i), i)
            response = encode.response(_text(row["response"], source, i, "response"))
        examples.append(_fit(prompt, response, max_len, truncated))
    _warn_truncated(truncated, source, max_len)
    return examples


def preference_pairs(source, tokenizer, max_len, rows=None):
    """[(chosen, rejected)] Examples sharing their prompt."""
    rows = load_rows(source) if rows is None else rows
    names = _format(rows, PREFERENCE_FORMATS, source, "preference")
    encode, truncated, pairs = Encoder(tokenizer, source, max_len - 1), [0], []
    for i, row in enumerate(rows):
        prompt = encode.prompt(_prompt(row["prompt"], source, i), i)
        texts = _pair(row, source, i) if names[1] == "chosen" else _ranking(row, source, i)
        for chosen, rejected in texts:
            pairs.append((_fit(prompt, encode.response(chosen), max_len, truncated),
                          _fit(prompt, encode.response(rejected), max_len, truncated)))
    _warn_truncated(truncated, source, max_len)
    if not pairs:
        raise DataError(f"{source}: no preference pairs (every ranking is a tie)")
    return pairs


def prompts(source, tokenizer, max_prompt_len, rows=None):
    """Token ids of each row's prompt."""
    rows = load_rows(source) if rows is None else rows
    _format(rows, PROMPT_FORMATS, source, "prompt")
    encode = Encoder(tokenizer, source, max_prompt_len)
    return [encode.prompt(_prompt(row["prompt"], source, i), i) for i, row in enumerate(rows)]


def pad(sequences, pad_id, side="right", length=None):
    """(ids [B, T], mask [B, T] bool) with every sequence padded on `side` to `length` (default: the longest)."""
    length = max(map(len, sequences)) if length is None else length
    ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        span = slice(length - len(seq), length) if side == "left" else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = True
    return ids, mask


def sft_batch(examples, pad_id):
    """Right-padded ids, mask, and labels that train on response tokens only."""
    ids, mask = pad([e.prompt + e.response for e in examples], pad_id)
    labels = ids.masked_fill(~mask, IGNORE)
    for row, e in enumerate(examples):
        labels[row, :len(e.prompt)] = IGNORE
    return ids, mask, labels


def pair_batch(pairs, pad_id):
    """Chosen sequences then rejected ones, right-padded together: ids, mask of [2B, T]."""
    return pad([e.prompt + e.response for e in [p[0] for p in pairs] + [p[1] for p in pairs]], pad_id)
