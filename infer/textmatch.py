"""Text match: which registered brand, if any, a piece of text read in a photo names, allowing look-alike letters and a few typos.

Counterfeits spell the brand almost right ("ADIBAS", "Adldas", "NlKE"): the match folds case,
accents and letters that look alike, then allows an edit distance that grows with the name's
length. Short names must match exactly after folding: at four letters one edit already turns
"nike" into "mike" and "bike", words a listing may well show; the rule holds for the read text's
length too ("Sano" is not "Osano"). The one edit a name of 3-4 letters allows is two neighbours
swapped ("NKIE"): a counterfeiter's typo, which real words rarely are. The policy is ``max_distance``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import combinations

# Multi-letter look-alikes, applied before case folding because they hold in one case only:
# lower-case "rn" reads as "m" and "cl" as "d"; "RN" and "CL" do not look like "M" and "D".
_PAIRS_CASED = (("rn", "m"), ("cl", "d"), ("vv", "w"), ("VV", "W"), ("Vv", "W"))
# Single characters that print (or OCR) as one another, after case folding: each maps to one representative.
_LOOKALIKE = str.maketrans({
    "0": "o", "1": "l", "i": "l", "|": "l", "!": "l", "5": "s", "$": "s",
    "8": "b", "@": "a", "€": "e", "ı": "l", "ł": "l", "ø": "o",
})
_WORD = re.compile(r"(?:[^\W_]|[$@€!|])+", re.UNICODE)  # letters, digits and the symbols that stand for letters ("N!KE")
MIN_NAME_CHARS = 2  # a one-character name (after folding) would match any stray letter the OCR reads


def fold(text: str, pairs: bool = True) -> str:
    """``text`` as the matcher compares it: compatibility forms, accents, look-alikes and case folded, letters and digits
    only; ``pairs``: with the two-letter look-alikes ("rn" as "m") folded too."""
    text = unicodedata.normalize("NFKC", text)
    for a, b in _PAIRS_CASED if pairs else ():
        text = text.replace(a, b)
    text = unicodedata.normalize("NFKD", text.casefold())
    text = "".join(c for c in text if not unicodedata.combining(c))  # "adidás" is "adidas"
    text = text.translate(_LOOKALIKE)
    return "".join(c for c in text if c.isalnum())


SHORT_CHARS = 4  # names up to this long (folded) allow no substitution, insertion or deletion: "mike" is not "nike"
SHORT_SWAP_CHARS = 3  # but from this length two swapped neighbours still name the brand: "NKIE" is Nike, a typo no word makes


def _transpositions(word: str) -> list[str]:
    """``word`` with each pair of different neighbouring letters swapped."""
    return [word[:i] + word[i + 1] + word[i] + word[i + 2:] for i in range(len(word) - 1) if word[i] != word[i + 1]]


def max_distance(folded_length: int) -> int:
    """Edits allowed against a name of this folded length: none up to 4 letters (but a swap of neighbours from 3 letters:
    ``Lexicon.match``), one to 8, two to 12, then three."""
    if folded_length <= SHORT_CHARS:
        return 0
    if folded_length <= 8:
        return 1
    if folded_length <= 12:
        return 2
    return 3


def edit_distance(a: str, b: str, limit: int | None = None) -> int:
    """Levenshtein distance with adjacent transpositions (optimal string alignment); past ``limit`` returns ``limit + 1``."""
    if a == b:
        return 0
    if limit is not None and abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] | None = None
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, cb in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb))
            if prev2 is not None and j > 1 and ca == b[j - 2] and a[i - 2] == cb:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        if limit is not None and min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    d = prev[-1]
    return d if limit is None or d <= limit else limit + 1


def _deletions(word: str, depth: int) -> set[str]:
    """Every string ``word`` becomes with up to ``depth`` letters deleted (itself included)."""
    out = {word}
    for k in range(1, min(depth, len(word)) + 1):
        out.update("".join(c for i, c in enumerate(word) if i not in drop) for drop in combinations(range(len(word)), k))
    return out


@dataclass(frozen=True)
class TextMatch:
    """A read text that names a brand: which of its names it matched, and how many edits apart (after folding)."""

    brand: str
    alias: str  # the registered name it matched, as written in brands.yaml
    text: str  # the words of the read text that matched, as read
    distance: int  # edits between the folded words and the folded name

    def to_json(self) -> dict:
        return {"brand": self.brand, "alias": self.alias, "text": self.text, "distance": self.distance}


class Lexicon:
    """Every registered brand's names, folded, indexed for matching read text within each name's allowed distance.

    Candidates come from a symmetric-deletion index (two strings within k edits share a string
    reached by at most k deletions from each), so a read text costs a few dictionary look-ups
    however many brands there are; each candidate is then confirmed with the exact distance.
    """

    def __init__(self, names: Mapping[str, Iterable[str]]):
        self._names: list[tuple[str, str, str, int]] = []  # (brand, name as written, folded, allowed distance)
        self._by_deletion: dict[str, set[int]] = {}
        self._short: dict[str, set[int]] = {}  # names of 3-4 folded letters, exact: their one allowed edit is a transposition
        self.max_words = 1
        for brand, brand_names in names.items():
            for name in dict.fromkeys(brand_names):
                # the cased look-alikes fold "Hornet" to "homet" but "HORNET" to "hornet": keep every spelling's fold
                for folded in dict.fromkeys(fold(v) for v in (name, name.lower(), name.upper())):
                    if len(folded) < MIN_NAME_CHARS:
                        continue  # a brand whose names fold to (almost) nothing is simply not text-matched
                    k = max_distance(len(folded))
                    self._names.append((brand, name, folded, k))
                    for d in _deletions(folded, k):
                        self._by_deletion.setdefault(d, set()).add(len(self._names) - 1)
                    if k == 0 and len(folded) >= SHORT_SWAP_CHARS:
                        self._short.setdefault(folded, set()).add(len(self._names) - 1)
                    self.max_words = max(self.max_words, len(_WORD.findall(name)))
        self.max_k = max((n[3] for n in self._names), default=0)
        self.max_len = max((len(n[2]) + n[3] for n in self._names), default=0)

    @classmethod
    def from_brands(cls, brands: Mapping[str, Mapping]) -> Lexicon:
        """From brand metadata as in brands.yaml or an index's ``markguard.json``: ``name`` (default: the id), ``aliases``, ``wordmarks``."""
        return cls({b: [str(m.get("name") or b), *(m.get("aliases") or []), *(m.get("wordmarks") or [])] for b, m in brands.items()})

    @classmethod
    def from_gallery(cls, gallery) -> Lexicon:
        return cls({b.id: b.names for b in gallery.brands.values()})

    @property
    def brands(self) -> set[str]:
        return {n[0] for n in self._names}

    def __len__(self) -> int:
        """Folded names indexed (a name may fold two ways, by case)."""
        return len(self._names)

    def match(self, text: str | None) -> list[TextMatch]:
        """Every brand ``text`` names, best (fewest edits, then longest name) first; one match a brand.

        The text is cut into words, and every run of consecutive words (up to the longest name's
        word count, plus one: OCR splits words) is compared, joined without spaces, so "COCA COLA",
        "Coca-Cola" and "cocacola" read alike. Text with no letters or digits matches nothing.
        """
        words = [w for w in _WORD.findall(text or "") if any(c.isalnum() for c in w)]  # "!!!" is no word
        best: dict[str, tuple[tuple[int, int], TextMatch]] = {}
        for start in range(len(words)):
            for end in range(start + 1, min(len(words), start + self.max_words + 1) + 1):
                read = " ".join(words[start:end])
                joined = "".join(words[start:end])
                # "rn" may stand for "m" or be an "r" and an "n" ("Falbrnio": "Falbrino" with two letters swapped): both
                variants = dict.fromkeys((fold(joined), fold(joined, pairs=False)))
                if all(len(v) > self.max_len for v in variants):
                    break  # longer runs only grow
                for folded in variants:
                    if MIN_NAME_CHARS <= len(folded) <= self.max_len:
                        self._match_folded(folded, read, best)
        return [m for _, m in sorted(best.values(), key=lambda kv: (kv[0], kv[1].brand))]

    def _match_folded(self, folded: str, read: str, best: dict) -> None:
        """Every name within its allowed edits of one folded read, into ``best`` (brand -> (key, match)) where better."""
        # a name within its k edits is at most k letters longer, so k can be no more than that length allows
        depth = min(self.max_k, max_distance(len(folded) + self.max_k))
        candidates = set().union(*(self._by_deletion.get(d, ()) for d in _deletions(folded, depth)))
        for i in candidates:
            brand, name, target, k = self._names[i]
            k = min(k, max_distance(len(folded)))  # a short read is held to the short-name rule too: "Sano" is not "Osano"
            d = edit_distance(folded, target, k)
            if d <= k:
                key = (d, -len(target))
                if brand not in best or key < best[brand][0]:
                    best[brand] = (key, TextMatch(brand, name, read, d))
        if SHORT_SWAP_CHARS <= len(folded) <= SHORT_CHARS:  # "NKIE": two neighbours swapped, the one edit a short name allows
            for swapped in _transpositions(folded):
                for i in self._short.get(swapped, ()):
                    brand, name, target, _ = self._names[i]
                    if brand not in best or (1, -len(target)) < best[brand][0]:
                        best[brand] = ((1, -len(target)), TextMatch(brand, name, read, 1))

    def best(self, text: str | None) -> TextMatch | None:
        found = self.match(text)
        return found[0] if found else None
