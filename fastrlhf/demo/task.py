"""The embedded task: short reviews of listed aspects, and a labeler that stands in for annotators.

A prompt lists aspects (`review : room food`); a well-formed answer gives one clause per aspect,
in order: `the room was great and the food was okay .`. The SFT demonstrations pick adjectives
uniformly from positive, neutral and negative words, so the SFT model is neutral on average. The
labeler prefers positive, varied answers that cover every aspect exactly once and end with EOS: a
rule the SFT model does not already satisfy, and one that repeating a single word cannot game.
"""
import random

ASPECTS = ("room", "staff", "food", "view", "price", "service", "music", "location",
           "bed", "pool", "coffee", "breakfast", "wifi", "parking", "menu", "decor")
SENTIMENT = {"excellent": 1.0, "wonderful": 1.0, "superb": 0.9, "great": 0.8, "lovely": 0.8, "good": 0.6,
             "okay": 0.0, "fine": 0.0, "average": 0.0, "plain": 0.0, "ordinary": 0.0,
             "poor": -0.6, "bad": -0.6, "dull": -0.7, "awful": -1.0, "terrible": -1.0, "horrible": -1.0}
ADJECTIVES = tuple(SENTIMENT)
STRUCTURE_WORDS = ("review", ":", "the", "was", "and", ".")
MAX_ASPECTS = 3

UNFINISHED = -1.5  # no EOS: the answer was cut off
MALFORMED = -1.5  # not a sequence of "the <aspect> was <adjective>" clauses joined by "and", ending in "."
WRONG_ASPECT = 0.5  # per aspect missing, repeated or not asked for
REPEATED_WORD = 0.3  # per adjective used more than once


def make_prompt(rng):
    return "review : " + " ".join(rng.sample(ASPECTS, rng.randint(1, MAX_ASPECTS)))


def aspects_of(prompt):
    return prompt.split(":", 1)[1].split()


def demonstration(prompt, rng):
    """An SFT answer: one clause per aspect, adjectives drawn uniformly (neutral on average)."""
    return " and ".join(f"the {a} was {rng.choice(ADJECTIVES)}" for a in aspects_of(prompt)) + " ."


def split_prompts(n_train, n_heldout, seed):
    """Distinct prompts; held-out ones never appear in any training set."""
    rng, seen = random.Random(seed), set()
    while len(seen) < n_train + n_heldout:
        seen.add(make_prompt(rng))
    prompts = sorted(seen)
    rng.shuffle(prompts)
    return prompts[:n_train], prompts[n_train:]


def _clauses(words):
    """[(aspect, adjective), ...] or None when the words do not follow the grammar."""
    if not words or len(words) % 5:
        return None
    clauses = []
    for i in range(0, len(words), 5):
        the, aspect, was, adjective, joiner = words[i:i + 5]
        last = i + 5 == len(words)
        if the != "the" or aspect not in ASPECTS or was != "was" or adjective not in SENTIMENT:
            return None
        if joiner != ("." if last else "and"):
            return None
        clauses.append((aspect, adjective))
    return clauses


def gold_score(prompt, response, finished=True):
    """The labeler's score of one answer (higher is better; at most 1)."""
    if not finished:
        return UNFINISHED
    clauses = _clauses(response.split())
    if clauses is None:
        return MALFORMED
    asked, said = aspects_of(prompt), [a for a, _ in clauses]
    wrong = sum(a not in said for a in asked) + sum(a not in asked for a in said) + len(said) - len(set(said))
    adjectives = [j for _, j in clauses]
    repeated = len(adjectives) - len(set(adjectives))
    mean_sentiment = sum(SENTIMENT[j] for j in adjectives) / len(adjectives)
    return mean_sentiment - WRONG_ASPECT * wrong - REPEATED_WORD * repeated


def rank(prompt, responses, finished):
    """Ranks (1 = best, equal scores share a rank) of candidate answers, as an annotator would give."""
    scores = [gold_score(prompt, r, f) for r, f in zip(responses, finished)]
    return [1 + sum(other > s for other in scores) for s in scores]
