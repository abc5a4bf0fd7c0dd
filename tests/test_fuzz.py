"""A small seeded subset of the fuzz harness (benchmarks/fuzz.py): mutated files of every parser end in
a value or a one-line histomag error, never a traceback, a hang or a dead worker (issue 23, item 2)."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fuzz  # noqa: E402 - the benchmark is the harness; its worker processes import it by this name

#: inputs per parser: enough to meet each parser's refusals, few enough for the suite
N = {"tiff": 40, "png": 40, "jpeg": 40, "dmsl_checkpoint": 12, "mag_checkpoint": 16}
DEFAULT_N = 24


@pytest.mark.parametrize("name", sorted(fuzz.PARSERS))
def test_mutated_inputs_end_in_one_line_errors(name):
    result = fuzz.fuzz_parser(name, N.get(name, DEFAULT_N), seed=23, timeout=10.0)
    found = "; ".join(f"{n} x {result.examples[k][1]} [input {result.examples[k][0]}]"
                      for k, n in result.findings.most_common(3))
    assert not result.seed_problem, result.seed_problem
    assert result.tracebacks == 0 and result.hangs == 0 and result.crashes == 0, found
    assert result.tried == N.get(name, DEFAULT_N)
    # the mutations reach the checks: some inputs are refused (a journal drops damaged lines instead, by design)
    assert result.clean > 0 or name == "journal"


def test_mutations_are_reproducible_and_vary():
    parser = fuzz.PARSERS["index_csv"]
    a, b = fuzz.make_inputs(parser, 6, seed=1), fuzz.make_inputs(parser, 6, seed=1)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert len({x[1]["index.csv"] for x in a}) > 3
    data = bytes(range(256)) * 8
    assert fuzz.mutate_bytes(data, random.Random(0)) != data


def test_a_traceback_a_hang_and_a_memory_bomb_are_findings(monkeypatch):
    """The harness itself: an exception outside the hierarchy, a hang and a memory bomb are each counted."""
    inputs = [(i, {"x.txt": text}, "x.txt") for i, text in enumerate([b"boom", b"hang", b"bomb", b"ok"])]
    monkeypatch.setattr(fuzz, "make_inputs", lambda parser, n, seed: inputs[:n])
    result = fuzz.fuzz_parser("selftest", 4, timeout=3.0, mem_mb=512)
    assert not result.seed_problem
    assert (result.tried, result.ok, result.tracebacks, result.hangs) == (4, 1, 2, 1)
    kinds = " ".join(result.findings)
    assert "KeyError" in kinds and "MemoryError" in kinds and "hang" in kinds
