"""Data handling: every row format and file type, chat templates, ranking -> pairs, and the messages
of bad input (each names the file, the row and the column)."""
import json

import pytest

from fastrlhf import data, models

PROMPT, ANSWER = "review : room food", "the room was good and the food was okay ."


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("demo")


def write(path, rows):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pandas
        frame = pandas.DataFrame(rows)
        frame.to_csv(path, index=False) if path.suffix == ".csv" else frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_sft_prompt_response_every_file_type(tmp_path, tokenizer, suffix):
    source = write(tmp_path / f"sft{suffix}", [{"prompt": PROMPT, "response": ANSWER}] * 3)
    examples = data.sft_examples(source, tokenizer, max_len=32)
    assert len(examples) == 3
    assert examples[0].prompt == tokenizer(PROMPT)["input_ids"]
    assert examples[0].response == tokenizer(ANSWER)["input_ids"] + [tokenizer.eos_token_id]


def test_sft_batch_trains_on_response_tokens_only(tokenizer):
    examples = data.sft_examples("rows", tokenizer, 32, rows=[{"prompt": PROMPT, "response": ANSWER},
                                                               {"prompt": "review : bed", "response": "the bed was ok ."}])
    ids, mask, labels = data.sft_batch(examples, tokenizer.pad_token_id)
    for row, e in enumerate(examples):
        n = len(e.prompt) + len(e.response)
        assert (labels[row, :len(e.prompt)] == data.IGNORE).all()
        assert labels[row, len(e.prompt):n].tolist() == e.response
        assert (labels[row, n:] == data.IGNORE).all() and not mask[row, n:].any()


def chat_tokenizer(tokenizer):
    tokenizer = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                               "{% if add_generation_prompt %}assistant :{% endif %}")
    return tokenizer


def test_messages_and_chat_template(tmp_path, tokenizer):
    chat = chat_tokenizer(models.load_tokenizer("demo"))
    rows = [{"messages": [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": ANSWER}]}]
    [example] = data.sft_examples(write(tmp_path / "chat.jsonl", rows), chat, max_len=64)
    expected = chat.apply_chat_template(rows[0]["messages"][:1], tokenize=False, add_generation_prompt=True)
    assert example.prompt == chat(expected, add_special_tokens=False)["input_ids"]
    assert example.response[-1] == chat.eos_token_id
    # A plain-string prompt is wrapped as a user message when there is a template.
    [prompt] = data.prompts("rows", chat, 64, rows=[{"prompt": PROMPT}])
    assert prompt == example.prompt


def test_ranking_pairs_instructgpt():
    responses = ["a", "b", "c", "d"]
    pairs = data.ranking_pairs(responses, [2, 1, 4, 3])
    assert len(pairs) == 6  # K(K-1)/2
    assert set(pairs) == {("b", "a"), ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"), ("d", "c")}
    assert data.ranking_pairs(responses, [1, 1, 3, 3]) == [("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")]


@pytest.mark.parametrize("ranks,valid", [([2, 1, 4, 3], True), ([1, 1, 3, 3], True), ([1, 2, 2, 4], True),
                                         ([1, 1, 1, 1], True), ([1, 2, 2, 3], False), ([1, 1, 2, 2], False),
                                         ([0, 1, 2, 3], False), ([-1, 2, 3, 4], False), ([1, 2, 3, 5], False)])
def test_a_ranking_is_a_permutation_with_ties_sharing_the_best_place(ranks, valid):
    assert data.is_ranking(ranks) == valid


def test_a_response_repeated_with_the_same_rank_counts_once(tokenizer):
    rows = [{"prompt": PROMPT, "responses": ["x .", "y .", "x ."], "ranking": [1, 3, 1]}]
    [(chosen, rejected)] = data.preference_pairs("rows", tokenizer, 32, rows=rows)
    assert chosen.response == tokenizer("x .")["input_ids"] + [tokenizer.eos_token_id]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_preference_formats(tmp_path, tokenizer, suffix):
    rows = [{"prompt": PROMPT, "chosen": ANSWER, "rejected": "the room was bad ."}]
    [(chosen, rejected)] = data.preference_pairs(write(tmp_path / f"p{suffix}", rows), tokenizer, 32)
    assert chosen.prompt == rejected.prompt and chosen.response != rejected.response
    ranked = [{"prompt": PROMPT, "responses": ["the room was bad .", ANSWER, "the room was ok ."], "ranking": [3, 1, 2]}]
    pairs = data.preference_pairs(write(tmp_path / "ranked.jsonl", ranked), tokenizer, 32)
    assert len(pairs) == 3
    assert pairs[0][0].response == tokenizer(ANSWER)["input_ids"] + [tokenizer.eos_token_id]


def test_pair_batch_stacks_chosen_then_rejected(tokenizer):
    pairs = data.preference_pairs("rows", tokenizer, 32, rows=[{"prompt": PROMPT, "chosen": ANSWER, "rejected": "."}])
    ids, mask = data.pair_batch(pairs, tokenizer.pad_token_id)
    assert ids.shape[0] == 2 and mask[0].sum() > mask[1].sum()


def test_left_padding(tokenizer):
    ids, mask = data.pad([[5, 6, 7], [8]], tokenizer.pad_token_id, "left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[True] * 3, [False, False, True]]


BAD = [
    # (kind, rows, expected fragments of the message)
    ("sft", [{"prompt": PROMPT, "answer": ANSWER}], ["row 1", "missing column 'response'", "{prompt, response}"]),
    ("sft", [{"prompt": PROMPT, "response": ANSWER}, {"prompt": PROMPT, "response": None}], ["row 2", "'response'"]),
    ("sft", [{"prompt": "", "response": ANSWER}], ["row 1", "'prompt'", "non-empty string"]),
    ("sft", [{"messages": [{"role": "user", "content": PROMPT}]}], ["row 1", "'messages'", "assistant"]),
    ("sft", [{"messages": "hello"}], ["row 1", "'messages'", "role, content"]),
    ("sft", [{"prompt": " ".join(["room"] * 40), "response": ANSWER}], ["row 1", "'prompt'", "40 tokens"]),
    ("preference", [{"prompt": PROMPT, "chosen": ANSWER}], ["row 1", "missing column 'rejected'"]),
    ("preference", [{"prompt": PROMPT, "responses": [ANSWER, "."], "ranking": [1]}], ["row 1", "'ranking'", "2 integer"]),
    ("preference", [{"prompt": PROMPT, "responses": [ANSWER], "ranking": [1]}], ["row 1", "'responses'", "at least 2"]),
    ("preference", [{"prompt": PROMPT, "responses": [ANSWER, "."], "ranking": [1, 1]}], ["no preference pairs"]),
    ("preference", [{"prompt": PROMPT, "responses": [ANSWER, "."], "ranking": [1, 3]}], ["row 1", "'ranking'", "[1, 3]"]),
    ("preference", [{"prompt": PROMPT, "responses": [ANSWER, ANSWER], "ranking": [1, 2]}],
     ["row 1", "'responses'", "responses 1 and 2 are the same text"]),
    ("preference", [{"prompt": PROMPT, "chosen": ANSWER, "rejected": "."}, {"prompt": PROMPT, "chosen": ".",
                                                                         "rejected": "."}],
     ["row 2", "'rejected'", "same text as 'chosen'"]),
    ("prompts", [{"text": PROMPT}], ["row 1", "missing column 'prompt'"]),
    ("prompts", [{"prompt": PROMPT}, {"prompt": 7}], ["row 2", "'prompt'"]),
]
LOADERS = {"sft": data.sft_examples, "preference": data.preference_pairs, "prompts": data.prompts}


@pytest.mark.parametrize("kind,rows,fragments", BAD)
def test_bad_rows_name_file_row_and_column(tmp_path, tokenizer, kind, rows, fragments):
    source = write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(data.DataError) as error:
        LOADERS[kind](source, tokenizer, 32)
    message = str(error.value)
    assert source in message
    for fragment in fragments:
        assert fragment in message, message


def test_empty_and_missing_files(tmp_path, tokenizer):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(data.DataError, match="empty"):
        data.sft_examples(str(empty), tokenizer, 32)
    with pytest.raises(data.DataError, match="no such file"):
        data.sft_examples(str(tmp_path / "absent.jsonl"), tokenizer, 32)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "a"}\n{not json\n')
    with pytest.raises(data.DataError, match="broken.jsonl: cannot be read as jsonl: line 2, column 2: invalid JSON"):
        data.prompts(str(broken), tokenizer, 32)
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(data.DataError, match=r"latin.jsonl, line 2: not UTF-8 text \(byte 0xe9\)"):
        data.prompts(str(latin), tokenizer, 32)
    text = tmp_path / "prompts.txt"
    text.write_text("review : room\n")
    with pytest.raises(data.DataError, match=r"prompts.txt: unsupported file type .txt: data files are .jsonl, .json"):
        data.prompts(str(text), tokenizer, 32)


def test_long_responses_are_truncated_with_a_warning(tokenizer):
    with pytest.warns(UserWarning, match="1 responses truncated"):
        [example] = data.sft_examples("rows", tokenizer, 8, rows=[{"prompt": PROMPT, "response": ANSWER}])
    assert len(example.prompt) + len(example.response) == 8
