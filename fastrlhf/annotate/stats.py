"""Statistics of the feedback: judgements per annotator, time per item, and inter-annotator agreement on
the items ranked by several people.

Agreement, over every two annotators who ranked the same item:
  pairwise agreement  of the response pairs both annotators order strictly, the share they order the same way
  Kendall's tau-b     (concordant - discordant) / sqrt((P - ties in a) (P - ties in b)), P = K(K-1)/2;
                      1 = same order, -1 = reversed; undefined (left out) when one annotator tied everything
"""
import itertools
import json
import math
import statistics


def kendall_tau_b(a, b):
    """Kendall's tau-b of two rankings of the same responses (ranks, equal = tie), or None if undefined."""
    concordant = discordant = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        ties_a += da == 0
        ties_b += db == 0
        concordant += da * db > 0
        discordant += da * db < 0
    pairs = len(a) * (len(a) - 1) // 2
    denominator = math.sqrt((pairs - ties_a) * (pairs - ties_b))
    return (concordant - discordant) / denominator if denominator else None


def pair_votes(a, b):
    """(agreeing, compared): response pairs that both rankings order strictly, and those ordered alike."""
    agree = compared = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = a[i] - a[j], b[i] - b[j]
        if da and db:
            compared += 1
            agree += (da > 0) == (db > 0)
    return agree, compared


def agreement(rankings_per_item):
    """rankings_per_item: [[ranks of each annotator who ranked the item]]."""
    taus, agree, compared, items = [], 0, 0, 0
    for rankings in rankings_per_item:
        if len(rankings) < 2:
            continue
        items += 1
        for a, b in itertools.combinations(rankings, 2):
            tau = kendall_tau_b(a, b)
            if tau is not None:
                taus.append(tau)
            votes = pair_votes(a, b)
            agree, compared = agree + votes[0], compared + votes[1]
    return {"items": items, "annotator_pairs": len(taus), "kendall_tau_b": statistics.fmean(taus) if taus else None,
            "pairwise_agreement": agree / compared if compared else None, "pairs_compared": compared}


def stats(store):
    per_annotator = {}
    for j in store.judgements():
        counts = per_annotator.setdefault(j["annotator"], {"ranked": 0, "all_bad": 0, "skip": 0, "flagged": 0,
                                                           "seconds": []})
        counts[j["verdict"]] += 1
        if j["seconds"] is not None and j["verdict"] != "skip":
            counts["seconds"].append(j["seconds"])
    for counts in per_annotator.values():
        seconds = counts.pop("seconds")
        counts["median_seconds"] = statistics.median(seconds) if seconds else None
        counts["mean_seconds"] = statistics.fmean(seconds) if seconds else None
    rankings = [[json.loads(j["ranks"]) for j in judgements if j["verdict"] == "ranked"]
                for _, _, judgements in store.judged_items("rank")]
    return {"annotators": per_annotator, "agreement": agreement(rankings)}


def _number(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def format_stats(report):
    lines = [f"{'annotator':24}{'ranked':>8}{'all bad':>9}{'skipped':>9}{'red team':>10}{'median s':>10}{'mean s':>9}"]
    for name, c in sorted(report["annotators"].items()):
        lines.append(f"{name[:23]:24}{c['ranked']:>8}{c['all_bad']:>9}{c['skip']:>9}{c['flagged']:>10}"
                     f"{_number(c['median_seconds'], 1):>10}{_number(c['mean_seconds'], 1):>9}")
    a = report["agreement"]
    lines.append(f"agreement on {a['items']} items ranked by several annotators: Kendall's tau-b "
                 f"{_number(a['kendall_tau_b'])} (mean over {a['annotator_pairs']} annotator pairs), pairwise "
                 f"agreement {_number(a['pairwise_agreement'])} ({a['pairs_compared']} response pairs)")
    return "\n".join(lines)
