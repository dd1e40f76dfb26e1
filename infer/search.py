"""Search: every region of a batch against the index in one batched query, folded into matches per photo."""

from __future__ import annotations

import numpy as np

from markguard.infer.evidence import Candidate, Similarity, SimilarityNorm


def search_batch(index, vectors: np.ndarray, counts: list[int], boxes_orig: list[np.ndarray], *, k: int = 3,
                 max_matches: int = 5, index_name: str | None = None, bias: dict[int, float] | None = None) -> list[list[Candidate]]:
    """For each photo, its best region per matched mark, best first; ``boxes_orig[i]`` are its regions in original pixels.

    With ``bias`` (record id → the reference's background level, from the index's bank), scores are
    normalised against the background (infer/bank.py) before the best region and mark are chosen.
    With ``bias``, each candidate's evidence holds its raw similarity, the normalised one and the level (without,
    the score is the similarity and carries no record of its own).
    """
    if len(vectors) == 0:
        return [[] for _ in counts]
    raw, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
    scores, level = raw, None
    if bias:
        from markguard.infer.bank import normalise

        level = np.vectorize(lambda i: bias.get(int(i), 0.0), otypes=[np.float32])(ids) if ids.size else ids.astype(np.float32)
        scores = np.where(ids >= 0, normalise(raw, level), raw)
    uniq = np.unique(ids[ids >= 0])
    records = dict(zip(uniq.tolist(), index.get(uniq.tolist())))
    out, start = [], 0
    for n, boxes in zip(counts, boxes_orig):
        best: dict[int, tuple[float, int, int]] = {}
        s, ii = scores[start : start + n], ids[start : start + n]
        for r in range(n):
            for col, (score, rid) in enumerate(zip(s[r], ii[r])):
                if rid < 0:
                    continue
                if rid not in best or score > best[rid][0]:
                    best[int(rid)] = (float(score), r, col)
        # one match per mark (a mark may have several reference images): keep its best
        per_mark: dict[tuple[str, str], Candidate] = {}
        for rid, (score, r, col) in best.items():
            rec = records.get(rid)
            if rec is None:
                continue
            key = (rec.brand, rec.mark)
            if key not in per_mark or score > per_mark[key].score:
                evidence = {}
                if level is not None:  # the score is no longer the similarity: keep both
                    evidence = {"similarity": Similarity(float(raw[start + r, col])),
                                "similarity_norm": SimilarityNorm(score, float(level[start + r, col]))}
                per_mark[key] = Candidate(rec.brand, rec.mark, [int(round(v)) for v in boxes[r]], evidence, index=index_name,
                                          score=score)
        out.append(sorted(per_mark.values(), key=lambda m: -m.score)[:max_matches])
        start += n
    return out
