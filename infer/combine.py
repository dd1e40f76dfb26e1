"""Combine: one calibrated probability per candidate from all its evidence, and the policy that flags on it.

A logistic regression over the signals' numbers (a handful of weights), optionally followed by
isotonic regression of its output, fitted on a labelled validation scan by ``markguard calibrate
--combiner``. Both are a few dozen numbers in a JSON file; nothing is unpickled. The file names
the model it was fitted for: a similarity of one model means nothing to another, so a combiner
is refused for a model, or an index built by a model, other than its own.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.evidence import SIGNALS, Candidate, candidate_from_json, encode, feature_names

FORMAT = "markguard-combiner"
VERSION = 1
COMBINER_FILE = "combiner.json"
FLAG_PROBABILITY = 0.5  # the policy's thresholds on the probability, unless the command line gives others
REVIEW_PROBABILITY = 0.2


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # tanh form: no overflow warning for large |z|


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1.0, iters: int = 100) -> tuple[np.ndarray, float]:
    """Weights and bias minimising the log-loss + ``l2``/2 |w|^2 (the bias is not penalised), by Newton's method.

    The same objective as scikit-learn's ``LogisticRegression(C=1/l2)``; with a few features the
    Hessian is tiny and Newton converges in a handful of steps.
    """
    n, d = X.shape
    A = np.hstack([X, np.ones((n, 1))])
    w = np.zeros(d + 1)
    reg = np.full(d + 1, l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = _sigmoid(A @ w)
        grad = A.T @ (p - y) + reg * w
        hess = (A * (p * (1 - p))[:, None]).T @ A + np.diag(reg) + 1e-9 * np.eye(d + 1)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.max(np.abs(step)) < 1e-10:
            break
    return w[:-1], float(w[-1])


def fit_isotonic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots (xs, ys) of the non-decreasing step fit of ``y`` on ``x`` (pool adjacent violators); predict with ``np.interp``."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, dtype=np.float64)[order], np.asarray(y, dtype=np.float64)[order]
    # ties in x share one value: pool them first
    ux, start = np.unique(xs, return_index=True)
    sums, counts = np.add.reduceat(ys, start), np.diff(np.append(start, len(xs))).astype(np.float64)
    blocks: list[list[float]] = []  # [sum, count, first x, last x]
    for s, c, xv in zip(sums, counts, ux):
        blocks.append([s, c, xv, xv])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] >= blocks[-1][0] / blocks[-1][1]:
            s2, c2, _, x2 = blocks.pop()
            blocks[-1][0] += s2
            blocks[-1][1] += c2
            blocks[-1][3] = x2
    kx, ky = [], []
    for s, c, x0, x1 in blocks:
        kx += [x0, x1] if x1 > x0 else [x0]
        ky += [s / c] * (2 if x1 > x0 else 1)
    return np.asarray(kx), np.asarray(ky)


@dataclass
class Combiner:
    """Evidence → probability that the photo shows the candidate's mark: logistic, then optionally isotonic."""

    signals: list[str]
    weights: list[float]  # one per feature of ``feature_names(signals)``, on standardised features
    bias: float
    mean: list[float]
    scale: list[float]
    model_fingerprint: str
    isotonic: tuple[list[float], list[float]] | None = None
    fitted: dict = field(default_factory=dict)  # what it was fitted on and how well it did there
    # Signals of the fit that the scan in use does not collect at all (no --ocr, no --verify, an index
    # without a bank): they enter at their fitted mean, so they raise or lower nothing, rather than
    # reading as "checked and found nothing". Set for a scan by ``load_for_scan``; not saved.
    absent: tuple[str, ...] = ()

    @property
    def features(self) -> list[str]:
        return feature_names(self.signals)

    def logistic(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(X)
        if self.absent:
            cols = np.asarray([f for s in self.signals for f in [s in self.absent] * len(SIGNALS[s].features)])
            X = np.where(cols, np.asarray(self.mean), X)
        Z = (X - np.asarray(self.mean)) / np.asarray(self.scale)
        return _sigmoid(Z @ np.asarray(self.weights) + self.bias)

    def probabilities(self, candidates: list[Candidate]) -> np.ndarray:
        if not candidates:
            return np.zeros(0)
        p = self.logistic(np.stack([encode(c, self.signals) for c in candidates]))
        if self.isotonic is not None:
            p = np.interp(p, *self.isotonic)
        return p

    def score_matches(self, matches: list) -> None:
        """Set each match's probability from its evidence: a scan's ``Candidate`` as it is (each signal's encoder rounds its
        numbers as results.jsonl holds them, so a combiner fitted on a scan's results sees at scan time exactly the numbers
        it was fitted on), a ``results.Match`` read back as results.jsonl holds it."""
        cands = [m if isinstance(m, Candidate) else candidate_from_json(m.to_json()) for m in matches]
        for m, p in zip(matches, self.probabilities(cands)):
            m.probability = float(p)

    def summary(self) -> dict:
        """What summary.json and scan.json say of it: its signals, those the scan lacks, and a digest of its numbers."""
        import hashlib

        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]
        return {"signals": list(self.signals), "absent": list(self.absent), "sha256": digest,
                "model_fingerprint": self.model_fingerprint, "fitted": self.fitted}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        """Set each candidate's probability; best first."""
        for c, p in zip(candidates, self.probabilities(candidates)):
            c.probability = float(p)
        return sorted(candidates, key=lambda c: -(c.probability or 0.0))

    def check(self, model_fingerprint: str, index_fingerprints: list[str] = (), source: str = "combiner") -> None:
        """Refuse, in one line, a combiner fitted for another model, or used with an index another model built."""
        if model_fingerprint != self.model_fingerprint:
            raise MarkguardError(f"{source}: fitted for model {self.model_fingerprint}, not this model ({model_fingerprint}); "
                                 "refit it with `markguard calibrate --combiner` on a scan by this model")
        for fp in index_fingerprints:
            if fp != self.model_fingerprint:
                raise MarkguardError(f"{source}: fitted for model {self.model_fingerprint}, but an index was built by model {fp}; "
                                     "refit it on a scan with these indexes")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model_fingerprint": self.model_fingerprint,
                "signals": self.signals, "features": self.features, "weights": self.weights, "bias": self.bias,
                "mean": self.mean, "scale": self.scale,
                "isotonic": None if self.isotonic is None else {"x": list(self.isotonic[0]), "y": list(self.isotonic[1])},
                "fitted": self.fitted}

    def save(self, path: str | Path) -> Path:
        from markguard.fsio import atomic_write_text

        path = Path(path)
        if path.is_dir():
            path = path / COMBINER_FILE
        atomic_write_text(path, json.dumps(self.to_json(), indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path, *, expect_fingerprint: str | None = None) -> Combiner:
        """Read and validate a combiner file (a folder means its ``combiner.json``); checked field by field."""
        path = Path(path)
        if path.is_dir():
            path = path / COMBINER_FILE
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise MarkguardError(f"{path}: no combiner here; fit one with `markguard calibrate --combiner`") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise MarkguardError(f"{path}: not a combiner file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise MarkguardError(f"{path}: not a combiner file (format is not '{FORMAT}')")
        if doc.get("version") != VERSION:
            raise MarkguardError(f"{path}: combiner version {doc.get('version')!r}; this markguard reads version {VERSION}, refit it")
        signals = doc.get("signals")
        if not isinstance(signals, list) or not signals or any(s not in SIGNALS for s in signals):
            raise MarkguardError(f"{path}: signals {signals!r} are not all known to this markguard ({', '.join(SIGNALS)})")
        names = feature_names(signals)
        if doc.get("features") != names:
            raise MarkguardError(f"{path}: features {doc.get('features')} differ from what its signals give now ({names}); refit it")
        for key in ("weights", "mean", "scale"):
            v = doc.get(key)
            if not isinstance(v, list) or len(v) != len(names) or not all(_finite(x) for x in v):
                raise MarkguardError(f"{path}: '{key}' must be {len(names)} finite numbers")
        if not _finite(doc.get("bias")) or any(s <= 0 for s in doc["scale"]):
            raise MarkguardError(f"{path}: 'bias' must be a finite number and 'scale' positive")
        if not isinstance(doc.get("model_fingerprint"), str) or not doc["model_fingerprint"]:
            raise MarkguardError(f"{path}: 'model_fingerprint' is missing")
        iso = doc.get("isotonic")
        if iso is not None:
            xs, ys = (iso.get("x"), iso.get("y")) if isinstance(iso, dict) else (None, None)
            if (not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys) or not xs
                    or not all(_finite(v) for v in xs + ys) or np.any(np.diff(xs) < 0) or np.any(np.diff(ys) < 0)):
                raise MarkguardError(f"{path}: 'isotonic' must be {{x, y}}: equally long, non-decreasing lists of numbers")
            iso = (list(map(float, xs)), list(map(float, ys)))
        c = cls(signals, [float(v) for v in doc["weights"]], float(doc["bias"]), [float(v) for v in doc["mean"]],
                [float(v) for v in doc["scale"]], doc["model_fingerprint"], iso, doc.get("fitted") or {})
        if expect_fingerprint is not None:
            c.check(expect_fingerprint, source=str(path))
        return c


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def load_for_scan(spec: str | Path | None, searchers: list, opts) -> tuple[Combiner | None, Path | None]:
    """The combiner a scan uses, loaded once and checked against its model and indexes, and where it came from.

    ``spec``: None (none), ``"auto"`` (the first index's ``combiner.json`` when there is one) or a path.
    """
    if spec is None:
        return None, None
    path = Path(searchers[0].path) / COMBINER_FILE if spec == "auto" else Path(spec)
    if spec == "auto" and not path.is_file():
        return None, None
    combiner = Combiner.load(path)
    try:
        combiner.check(searchers[0].card.fingerprint, [s.card.fingerprint for s in searchers], source=str(path))
    except MarkguardError as e:
        raise MarkguardError(f"{e}; or scan with --no-combiner") from None
    fitted_bank = combiner.fitted.get("bank")  # absent in a combiner fitted before scans recorded their bank: not checked
    if "similarity_norm" in combiner.signals and "bank" in combiner.fitted and searchers[0].bias and fitted_bank != searchers[0].bank:
        # normalised similarities against another bank are other numbers: the fitted weights no longer hold
        raise MarkguardError(f"{path}: fitted on scores normalised against a background bank {fitted_bank}, but {searchers[0].path} "
                             f"now has the bank {searchers[0].bank} (rebuilt with another --bank?); refit it with `markguard calibrate "
                             "--combiner` on a scan with this index, or scan with --no-combiner")
    combiner.absent = tuple(s for s in combiner.signals if not SIGNALS[s].collected(opts, searchers))
    return combiner, path


def fit_combiner(candidates: list[Candidate], labels, *, model_fingerprint: str, signals: list[str] | None = None,
                 isotonic: bool = False, l2: float = 1.0, source: str = "") -> Combiner:
    """Fit on candidates labelled True when the photo shows the candidate's brand."""
    y = np.asarray(labels, dtype=np.float64)
    if len(candidates) != len(y):
        raise ValueError("one label a candidate")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise MarkguardError(f"the labelled scan gives {n_pos} positive and {len(y) - n_pos} negative candidates; "
                             "fitting a combiner needs both (scan the validation dump with a low --review threshold)")
    signals = signals or [s for s in SIGNALS if any(s in c.evidence for c in candidates)]
    X = np.stack([encode(c, signals) for c in candidates])
    mean, scale = X.mean(0), X.std(0)
    scale[scale < 1e-9] = 1.0  # a feature constant on the data (a signal never collected) gets weight ~0 from the penalty
    w, b = fit_logistic((X - mean) / scale, y, l2=l2)
    c = Combiner(signals, w.tolist(), b, mean.tolist(), scale.tolist(), model_fingerprint)
    if isotonic:
        kx, ky = fit_isotonic(c.logistic(X), y)
        c.isotonic = (kx.tolist(), ky.tolist())
    p = c.probabilities(candidates)
    c.fitted = {"candidates": len(y), "positives": n_pos, "source": source,
                "log_loss": round(float(-np.mean(y * np.log(np.clip(p, 1e-12, 1)) + (1 - y) * np.log(np.clip(1 - p, 1e-12, 1)))), 4)}
    return c


# --------------------------------------------------------------------------- fitting from a labelled scan

def read_truth(path: str | Path) -> dict[str, set[str]]:
    """listing_id → the registered brands it shows. ``.csv``: columns ``listing_id``, ``brand`` (one row a brand
    shown; an empty brand for a clean listing). ``.jsonl``: the synthetic dump's truth (``marks[{brand, registered}]``)."""
    path = Path(path)
    out: dict[str, set[str]] = {}
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"listing_id", "brand"} <= set(reader.fieldnames):
                    raise MarkguardError(f"{path}: a truth CSV needs the columns listing_id and brand (empty for a clean listing)")
                for row in reader:
                    brands = out.setdefault(row["listing_id"], set())
                    if (row.get("brand") or "").strip():
                        brands.add(row["brand"].strip())
        else:
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not line.strip():
                    continue
                t = json.loads(line)
                out.setdefault(t["listing_id"], set()).update(m["brand"] for m in t.get("marks", []) if m.get("registered", True))
    except FileNotFoundError:
        raise MarkguardError(f"{path}: truth file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise MarkguardError(f"{path}: not a truth file ({type(e).__name__}: {e}); expected listing_id and marks[{{brand}}]") from None
    return out


def labelled_candidates(results: str | Path, truth: dict[str, set[str]]) -> tuple[list[Candidate], list[bool]]:
    """Every match of every non-error row of a results.jsonl whose listing the truth knows, labelled by the truth."""
    cands, labels = [], []
    path = Path(results)
    with path.open(encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            row = json.loads(line)
            shown = truth.get(row.get("listing_id"))
            if shown is None or row.get("status") == "error":
                continue
            for m in row.get("matches") or []:
                try:
                    cands.append(candidate_from_json(m))
                except MarkguardError as e:
                    raise MarkguardError(f"{path}:{i}: {e}") from None
                labels.append(m["brand"] in shown)
    if not cands:
        raise MarkguardError(f"{path}: no match of a listing in the truth file; is it the truth of this scan?")
    return cands, labels


def calibrate_combiner(results_dir: str | Path, truth_path: str | Path, *, out: str | Path | None = None,
                       isotonic: bool = False, write: bool = True) -> tuple[Combiner, Path]:
    """Fit a combiner on a finished scan and its truth; save it (by default beside the scan's first index) unless not ``write``.
    Returns it and where it went (or would go)."""
    results_dir = Path(results_dir)
    summary_path = results_dir / "summary.json"
    if not summary_path.exists():
        raise MarkguardError(f"{summary_path}: not found; give the output folder of a finished `markguard scan`")
    summary = json.loads(summary_path.read_text())
    fingerprint = summary["model"]["fingerprint"]
    cands, labels = labelled_candidates(results_dir / "results.jsonl", read_truth(truth_path))
    combiner = fit_combiner(cands, labels, model_fingerprint=fingerprint, isotonic=isotonic,
                            source=f"{results_dir} + {truth_path}")
    if "bank" in summary["indexes"][0]:  # the bank the normalised similarities were measured against (checked at scan time)
        combiner.fitted["bank"] = summary["indexes"][0]["bank"]
    target = Path(out) if out is not None else Path(summary["indexes"][0]["path"]) / COMBINER_FILE
    return combiner, (combiner.save(target) if write else target)
