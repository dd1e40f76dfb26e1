"""Combine: one calibrated probability per candidate from all its evidence, and the policy that flags on it.

A logistic regression over the signals' numbers (a handful of weights), optionally followed by
isotonic regression of its output, fitted on a labelled validation scan by ``markguard calibrate
--combiner``. Both are a few dozen numbers in a JSON file; nothing is unpickled. The file names
the model it was fitted for: a similarity of one model means nothing to another, so a combiner
is refused for a model, or an index built by a model, other than its own.

The shipped model carries a default combiner (``markguard/weights/combiner.json``, named with its
digest in the card's ``thresholds.combiner``), fitted on the project's labelled real-photo bench
by ``benchmarks/fit_defaults.py``, with flag and review thresholds chosen on it at stated
operating points. A scan whose index has no combiner of its own uses it; a user's
(``markguard calibrate --combiner``) overrides it; ``--no-combiner`` decides on similarity.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from markguard.errors import MarkguardError
from markguard.infer.evidence import SIGNALS, Candidate, candidate_from_json, encode, feature_names

FORMAT = "markguard-combiner"
VERSION = 1
COMBINER_FILE = "combiner.json"
FLAG_PROBABILITY = 0.5  # the policy's thresholds on the probability, unless the command line or the combiner's file gives others
REVIEW_PROBABILITY = 0.2
# Evidence a scan can have looked at and found against a candidate: what "never checked" means for it (infer/decide.py)
CHECKS = ("geometry", "text")


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
    # flag and review thresholds on its probability chosen with it (``{"flag": .., "review": .., ...}``); None: the defaults
    thresholds: dict | None = None
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
        return np.clip(p, 0.0, 1.0)

    def unchecked(self, candidates: list[Candidate]) -> np.ndarray:
        """Each candidate's probability as if no check (verification, OCR) had been made of it: what a failed check
        must score below (``infer/decide.py``)."""
        return self.probabilities([replace(c, evidence={k: v for k, v in c.evidence.items() if k not in CHECKS})
                                   for c in candidates])

    def score_matches(self, matches: list) -> list[float]:
        """Set each match's probability from its evidence: a scan's ``Candidate`` as it is (each signal's encoder rounds its
        numbers as results.jsonl holds them, so a combiner fitted on a scan's results sees at scan time exactly the numbers
        it was fitted on), a ``results.Match`` read back as results.jsonl holds it; returns each one's probability had it
        never been checked (:meth:`unchecked`)."""
        cands = [m if isinstance(m, Candidate) else candidate_from_json(m.to_json()) for m in matches]
        for m, p in zip(matches, self.probabilities(cands)):
            m.probability = float(p)
        return self.unchecked(cands).tolist() if cands else []

    def summary(self) -> dict:
        """What summary.json and scan.json say of it: its signals, those the scan lacks, and a digest of its numbers."""
        import hashlib

        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]
        return {"signals": list(self.signals), "absent": list(self.absent), "sha256": digest,
                "model_fingerprint": self.model_fingerprint, "fitted": self.fitted, "thresholds": self.thresholds}

    def apply(self, candidates: list[Candidate]) -> list[Candidate]:
        """Set each candidate's probability; best first."""
        for c, p in zip(candidates, self.probabilities(candidates)):
            c.probability = float(p)
        return sorted(candidates, key=lambda c: -(c.probability or 0.0))

    def check(self, model_fingerprint: str, index_fingerprints: list[str] = (), source: str = "combiner",
              refit: str = "refit it with `markguard calibrate --combiner` on a scan by this model") -> None:
        """Refuse, in one line, a combiner fitted for another model, or used with an index another model built."""
        if model_fingerprint != self.model_fingerprint:
            raise MarkguardError(f"{source}: fitted for model {self.model_fingerprint}, not this model ({model_fingerprint}); {refit}")
        for fp in index_fingerprints:
            if fp != self.model_fingerprint:
                raise MarkguardError(f"{source}: fitted for model {self.model_fingerprint}, but an index was built by model {fp}; {refit}")

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": VERSION, "model_fingerprint": self.model_fingerprint,
                "signals": self.signals, "features": self.features, "weights": self.weights, "bias": self.bias,
                "mean": self.mean, "scale": self.scale,
                "isotonic": None if self.isotonic is None else {"x": list(self.isotonic[0]), "y": list(self.isotonic[1])},
                "fitted": self.fitted} | ({} if self.thresholds is None else {"thresholds": self.thresholds})

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
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
            raise MarkguardError(f"{path}: not a combiner file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise MarkguardError(f"{path}: not a combiner file (format is not '{FORMAT}')")
        if doc.get("version") != VERSION:
            raise MarkguardError(f"{path}: combiner version {doc.get('version')!r}; this markguard reads version {VERSION}, refit it")
        signals = doc.get("signals")
        if not isinstance(signals, list) or not signals or any(not isinstance(s, str) or s not in SIGNALS for s in signals):
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
            if min(xs + ys) < 0 or max(xs + ys) > 1:  # knots map a probability to a probability
                raise MarkguardError(f"{path}: 'isotonic' knots must lie in [0, 1] (they map a probability to a probability); refit it")
            iso = (list(map(float, xs)), list(map(float, ys)))
        fitted = doc.get("fitted", {})
        if not isinstance(fitted, dict):
            raise MarkguardError(f"{path}: 'fitted' must be an object (what the combiner was fitted on), not {type(fitted).__name__}")
        thresholds = doc.get("thresholds")
        if thresholds is not None:
            ok = isinstance(thresholds, dict) and all(_finite(thresholds.get(k)) and 0 <= thresholds[k] <= 1 for k in ("flag", "review"))
            if not ok or thresholds["review"] > thresholds["flag"]:
                raise MarkguardError(f"{path}: 'thresholds' must hold a flag and a review probability, 0 <= review <= flag <= 1")
        c = cls(signals, [float(v) for v in doc["weights"]], float(doc["bias"]), [float(v) for v in doc["mean"]],
                [float(v) for v in doc["scale"]], doc["model_fingerprint"], iso, fitted, thresholds)
        if expect_fingerprint is not None:
            c.check(expect_fingerprint, source=str(path))
        return c


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def shipped(model_dir: str | Path, card) -> tuple[Path, dict] | None:
    """The default combiner a model's card names (``thresholds.combiner``: ``file`` beside the card, its ``sha256``), or None."""
    ref = (card.thresholds or {}).get("combiner")
    if ref is None:
        return None
    source = f"{Path(model_dir) / 'model_card.json'}: thresholds.combiner"
    name = ref.get("file") if isinstance(ref, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name:
        raise MarkguardError(f"{source} must name a combiner file beside the card ({{\"file\": \"combiner.json\", \"sha256\": ..}}); "
                             "scan with --no-combiner")
    return Path(model_dir) / name, ref


def digest(path: str | Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_for_scan(spec: str | Path | None, searchers: list, opts) -> tuple[Combiner | None, Path | None]:
    """The combiner a scan uses, loaded once and checked against its model and indexes, and where it came from.

    ``spec``: None (none), ``"auto"`` (the first index's ``combiner.json`` when there is one, else the one shipped
    with the model, when its card names one) or a path.

    In a scan of several models' indexes (a product index beside a logo one) the combiner serves the indexes of the
    model it was fitted for (``infer/decide.py`` judges the others on their own similarity thresholds): ``"auto"``
    takes the first index that has a combiner, its own or its model's, and only indexes of that model's kind
    must have been built by that model.
    """
    if spec is None:
        return None, None
    from markguard.checkpoint import DEFAULT_MODEL_DIR, model_kind

    def model_dir(s):
        return getattr(s, "model_dir", None) or DEFAULT_MODEL_DIR

    lead = searchers[0]
    if spec == "auto" and len({model_kind(s.card) for s in searchers}) > 1:
        lead = next((s for s in searchers if (Path(s.path) / COMBINER_FILE).is_file() or shipped(model_dir(s), s.card) is not None),
                    searchers[0])
    path = Path(lead.path) / COMBINER_FILE if spec == "auto" else Path(spec)
    default = None
    if spec == "auto" and not path.is_file():
        default = shipped(model_dir(lead), lead.card)
        if default is None:
            return None, None
        path, ref = default
        if not path.is_file():
            raise MarkguardError(f"{path}: the default combiner the model card names is missing; reinstall markguard, or scan with "
                                 "--no-combiner")
        if ref.get("sha256") and digest(path) != ref["sha256"]:
            raise MarkguardError(f"{path}: not the default combiner the model card names (sha256 differs); refit the defaults with "
                                 "`python benchmarks/fit_defaults.py`, or scan with --no-combiner")
    combiner = Combiner.load(path)
    refit = ("the model was retrained since: refit the defaults with `python benchmarks/fit_defaults.py` (or fit your own with "
             "`markguard calibrate --combiner`)" if default is not None else "refit it with `markguard calibrate --combiner` on a scan by this model")
    try:
        combiner.check(lead.card.fingerprint, [s.card.fingerprint for s in searchers if model_kind(s.card) == model_kind(lead.card)],
                       source=f"{path} (the model's default combiner)" if default is not None else str(path), refit=refit)
    except MarkguardError as e:
        raise MarkguardError(f"{e}; or scan with --no-combiner") from None
    fitted_bank = combiner.fitted.get("bank")  # absent in a combiner fitted before scans recorded their bank: not checked
    if "similarity_norm" in combiner.signals and "bank" in combiner.fitted and lead.bias and fitted_bank != lead.bank:
        # normalised similarities against another bank are other numbers: the fitted weights no longer hold
        raise MarkguardError(f"{path}: fitted on scores normalised against a background bank {fitted_bank}, but {lead.path} "
                             f"now has the bank {lead.bank} (rebuilt with another --bank?); refit it with `markguard calibrate "
                             "--combiner` on a scan with this index, or scan with --no-combiner")
    served = [s for s in searchers if model_kind(s.card) == model_kind(lead.card)]  # the indexes whose matches it scores
    combiner.absent = tuple(s for s in combiner.signals if not SIGNALS[s].collected(opts, served))
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
                             "fitting a combiner needs both (scan the validation dump with a low --review-threshold)")
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
    shown; an empty brand for a clean listing; with a ``tier`` column, as a bench's truth.csv, a negative tier's brand is not shown). ``.jsonl``: the synthetic dump's truth (``marks[{brand, registered}]``)."""
    path = Path(path)
    out: dict[str, set[str]] = {}
    try:
        if path.suffix.lower() == ".csv":
            with path.open(newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"listing_id", "brand"} <= set(reader.fieldnames):
                    raise MarkguardError(f"{path}: a truth CSV needs the columns listing_id and brand (empty for a clean listing)")
                from markguard.datasets.wordbench import ALL_NEGATIVE

                for row in reader:
                    brands = out.setdefault(row["listing_id"], set())
                    # a bench's truth.csv names the unregistered brand a negative listing shows: no registered brand
                    if (row.get("brand") or "").strip() and row.get("tier") not in ALL_NEGATIVE:
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
    from markguard.checkpoint import DEFAULT_MODEL_DIR

    resolved = (target if target.suffix else target / COMBINER_FILE).resolve()
    if DEFAULT_MODEL_DIR.resolve() in resolved.parents:  # the shipped default is refit by benchmarks/fit_defaults.py, never here
        raise MarkguardError(f"{target}: inside the installed markguard's shipped weights; write your combiner to a folder of yours "
                             "(--combiner-out DIR) or leave it out to write beside your index")
    return combiner, (combiner.save(target) if write else target)
