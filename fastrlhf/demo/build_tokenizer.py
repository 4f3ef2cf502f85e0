"""Builds the demo's word-level tokenizer (shipped as package data). Run once after changing the task:

    python -m fastrlhf.demo.build_tokenizer

The files are plain `tokenizers` JSON plus a tokenizer_config.json that every transformers
version >= 4.45 loads with AutoTokenizer.
"""
import json
from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers

from .task import ADJECTIVES, ASPECTS, STRUCTURE_WORDS

SPECIAL = {"pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>"}
OUT = Path(__file__).parent / "tokenizer"


def build():
    words = [*SPECIAL.values(), *STRUCTURE_WORDS, *ASPECTS, *ADJECTIVES]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=SPECIAL["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(list(SPECIAL.values()))
    return tokenizer


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    build().save(str(OUT / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 64, **SPECIAL}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT}")
