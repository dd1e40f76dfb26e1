"""The fuzzer's kept inputs, replayed: each must load or be refused with a MarkguardError, never crash.

``tests/fuzz_corpus/<target>/*.bin`` are inputs ``benchmarks/bench_fuzz.py --corpus`` kept: one per new
kind of outcome (a new error-message shape), and any crash. The crashes found while writing the fuzzer
(non-UTF-8 cards, index metadata fields of the wrong type, a brands entry that is not an object) have
their own tests in tests/test_card.py and tests/infer/test_index_meta.py. The index metadata cases
are replayed against a freshly built index, whose files hash differently, so most replay as checksum
refusals.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "fuzz_corpus"
CASES = sorted(CORPUS.glob("*/*.bin"))


def _bench_fuzz():
    sys.path.insert(0, str(ROOT / "benchmarks"))  # bench_fuzz imports bench_scan beside it
    try:
        spec = importlib.util.spec_from_file_location("bench_fuzz", ROOT / "benchmarks" / "bench_fuzz.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory):
    module = _bench_fuzz()
    root = tmp_path_factory.mktemp("fuzz")
    return module, module.targets(module.seeds(), root), root


def test_corpus_covers_every_target(fuzz):
    _, table, _ = fuzz
    assert {p.parent.name for p in CASES} == set(table)


@pytest.mark.parametrize("case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_kept_input_is_loaded_or_refused(fuzz, case):
    module, table, root = fuzz
    fn, _ = table[case.parent.name]
    kind, signature = module.outcome(fn, case.read_bytes(), root / "work")
    assert kind in ("ok", "error_rows", "refused"), signature
