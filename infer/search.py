"""Search: every region of a batch against the index in one batched query, folded into matches per photo."""

from __future__ import annotations

import numpy as np

from markguard.infer.results import Match


def search_batch(index, vectors: np.ndarray, counts: list[int], boxes_orig: list[np.ndarray], *, k: int = 3,
                 max_matches: int = 5, index_name: str | None = None, bias: dict[int, float] | None = None) -> list[list[Match]]:
    """For each photo, its best region per matched mark, best first; ``boxes_orig[i]`` are its regions in original pixels.

    With ``bias`` (record id → the reference's background level, from the index's bank), scores are
    normalised against the background (infer/bank.py) before the best region and mark are chosen.
    """
    if len(vectors) == 0:
        return [[] for _ in counts]
    scores, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
    if bias:
        from markguard.infer.bank import normalise

        level = np.vectorize(lambda i: bias.get(int(i), 0.0), otypes=[np.float32])(ids) if ids.size else ids.astype(np.float32)
        scores = np.where(ids >= 0, normalise(scores, level), scores)
    uniq = np.unique(ids[ids >= 0])
    records = dict(zip(uniq.tolist(), index.get(uniq.tolist())))
    out, start = [], 0
    for n, boxes in zip(counts, boxes_orig):
        best: dict[int, tuple[float, int]] = {}
        s, ii = scores[start : start + n], ids[start : start + n]
        for r in range(n):
            for score, rid in zip(s[r], ii[r]):
                if rid < 0:
                    continue
                if rid not in best or score > best[rid][0]:
                    best[int(rid)] = (float(score), r)
        # one match per mark (a mark may have several reference images): keep its best
        per_mark: dict[tuple[str, str], Match] = {}
        for rid, (score, r) in best.items():
            rec = records.get(rid)
            if rec is None:
                continue
            key = (rec.brand, rec.mark)
            if key not in per_mark or score > per_mark[key].score:
                per_mark[key] = Match(rec.brand, rec.mark, score, [int(round(v)) for v in boxes[r]], index_name)
        out.append(sorted(per_mark.values(), key=lambda m: -m.score)[:max_matches])
        start += n
    return out
