"""The reward model's classification metrics (precision, recall, F1, ROC AUC of "is the first response the
preferred one?" on pairs in random order) and its accuracy per rank margin, on hand-computed cases."""
import itertools

import pytest
import torch

from fastrlhf import data, models, reward_model


def test_pair_metrics_hand_computed():
    chosen = torch.tensor([2.0, 1.0, 0.5, 3.0, 0.0])
    rejected = torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0])
    first_is_chosen = torch.tensor([True, True, False, False, True])
    # r_first - r_second: 1 (yes, chosen first: TP), -1 (no, chosen first: FN), 0 (no: a tie is not > 0.5,
    # rejected first: TN), -2 (no, TN), -1 (no, FN). TP 1, FP 0, FN 2, TN 2.
    # ROC AUC: "yes" pairs score {1, -1, -1}, "no" pairs {0, -2}: 4 of the 6 (yes, no) pairs ordered right.
    metrics = reward_model.pair_metrics(chosen, rejected, first_is_chosen, margins=[1, 2, 1, 3, None])
    assert metrics["pairs"] == 5
    assert metrics["precision"] == 1.0
    assert metrics["recall"] == pytest.approx(1 / 3)
    assert metrics["f1"] == pytest.approx(0.5)
    assert metrics["roc_auc"] == pytest.approx(4 / 6)
    # chosen > rejected: yes, no, no (tie), yes, no
    assert metrics["accuracy_by_margin"] == {"1": {"accuracy": 0.5, "pairs": 2}, "2": {"accuracy": 0.0, "pairs": 1},
                                             "3": {"accuracy": 1.0, "pairs": 1}}


def test_pair_metrics_degenerate_cases():
    chosen, rejected = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])
    every_first = torch.tensor([True, True])
    metrics = reward_model.pair_metrics(chosen, rejected, every_first)
    # Never "yes": precision is 0 by convention, recall 0, F1 0; one class only: no ROC AUC; no margins given.
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == 0.0
    assert metrics["roc_auc"] is None and "accuracy_by_margin" not in metrics
    # Tied differences count half: scores 0.5, 0.5 for "yes" and 0.5 for "no".
    assert reward_model.roc_auc(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([True, True, False])) == 0.5


def test_roc_auc_is_the_mann_whitney_probability():
    torch.manual_seed(1)
    scores = torch.randint(0, 6, (57,)).double()  # many ties
    labels = torch.rand(57) < 0.4
    positives, negatives = scores[labels], scores[~labels]
    pairwise = [(p > n) + 0.5 * (p == n) for p, n in itertools.product(positives.tolist(), negatives.tolist())]
    assert reward_model.roc_auc(scores, labels) == pytest.approx(sum(pairwise) / len(pairwise))


def test_against_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is not installed (optional cross-check)")
    torch.manual_seed(2)
    chosen, rejected = torch.randn(200), torch.randn(200)
    first = reward_model.random_order(200, seed=3)
    ours = reward_model.pair_metrics(chosen, rejected, first)
    scores = torch.where(first, chosen - rejected, rejected - chosen).numpy()
    labels, predicted = first.numpy(), scores > 0
    assert ours["precision"] == pytest.approx(metrics.precision_score(labels, predicted))
    assert ours["recall"] == pytest.approx(metrics.recall_score(labels, predicted))
    assert ours["f1"] == pytest.approx(metrics.f1_score(labels, predicted))
    assert ours["roc_auc"] == pytest.approx(metrics.roc_auc_score(labels, scores))


def test_random_order_is_seeded_and_mixed():
    assert torch.equal(reward_model.random_order(100, 7), reward_model.random_order(100, 7))
    assert 20 < reward_model.random_order(100, 7).sum() < 80


def test_pair_margins_follow_preference_pairs():
    tokenizer = models.load_tokenizer("demo")
    responses = ["the room was good .", "the room was bad .", "the room was okay .", "the room was fine ."]
    rows = [{"prompt": "review : room", "responses": responses, "ranking": [1, 4, 2, 2]},
            {"prompt": "review : bed", "responses": responses[:2], "ranking": [2, 1]}]
    pairs = data.preference_pairs("rows", tokenizer, 32, rows=rows)
    margins = data.pair_margins(rows)
    assert len(margins) == len(pairs) == 5 + 1  # 6 pairs less the tie, then 1
    rank_of = [{tuple(tokenizer(text, add_special_tokens=False)["input_ids"]): rank
                for text, rank in zip(row["responses"], row["ranking"])} for row in rows]
    for (chosen, rejected), margin, ranks in zip(pairs, margins, [rank_of[0]] * 5 + [rank_of[1]]):
        assert ranks[tuple(rejected.response[:-1])] - ranks[tuple(chosen.response[:-1])] == margin
    assert data.pair_margins([{"prompt": "p", "chosen": "a", "rejected": "b"}]) == [None]
