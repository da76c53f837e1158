"""Tests of :mod:`phantom.heap`: large allocations reuse freed memory inside ``reused()`` only.

Both probes run in a fresh interpreter: a long-lived test process's heap (other tests'
allocations, threads) is not the one a fine-tuning worker starts from.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from phantom import heap

pytestmark = pytest.mark.skipif(heap._glibc() is None, reason="phantom.heap acts on glibc only")

STEPS = r"""
import json, resource, torch
from phantom import heap
torch.set_num_threads(1)
V, D = 1 << 17, 128                    # a (V, d) embedding of 64 MiB: above glibc's mmap threshold

def faults(warm=2, steps=12):          # minor page faults of `steps` full-FT steps after `warm`
    torch.manual_seed(0)
    E = torch.nn.Parameter(torch.randn(V, D))
    opt = torch.optim.AdamW([E], lr=1e-3, fused=True)
    for t in range(warm + steps):
        if t == warm:
            before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        (E @ E[:3].sum(0)).logsumexp(0).backward()     # a tied head: a dense (V, d) gradient
        opt.step()
        opt.zero_grad(set_to_none=True)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

out = {"outside": faults()}
with heap.reused():
    out["inside"] = faults()
out["pages"] = V * D * 4 // resource.getpagesize()
print(json.dumps(out))
"""

MAPPED = r"""
import ctypes, json, torch
from phantom import heap

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

libc = heap._glibc()
libc.mallinfo2.restype = Mallinfo2

def mmapped(size=512 << 20):           # bytes glibc serves by mmap for an untouched buffer of `size`
    before = libc.mallinfo2().hblkhd
    x = torch.empty(size // 4)
    return libc.mallinfo2().hblkhd - before

out = {"outside": mmapped()}
with heap.reused():
    out["inside"] = mmapped()
try:
    with heap.reused():
        raise RuntimeError
except RuntimeError:
    pass
out["after"] = mmapped()
print(json.dumps(out))
"""


def _probe(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_reused_heap_stops_refaulting_a_full_ft_steps_buffers():
    faults = _probe(STEPS)
    # Outside, glibc mmaps the (V, d) gradient and AdamW's temporary afresh every step and
    # unmaps them on free, so every step faults all their pages.
    assert faults["outside"] >= 12 * faults["pages"]
    # Inside, freed buffers are reused. glibc < 2.38 cannot put an aligned request into a
    # freed chunk of exactly its size, so the heap takes a few steps to settle (measured:
    # 0–3 buffers' worth over these 12 steps, against 24 outside).
    assert faults["inside"] < faults["outside"] / 3


@pytest.mark.skipif(not hasattr(heap._glibc() or object(), "mallinfo2"), reason="mallinfo2 needs glibc ≥ 2.33")
def test_reused_heap_serves_large_blocks_from_the_heap_and_restores_the_defaults_after_an_error():
    mapped = _probe(MAPPED)
    assert mapped["outside"] >= 512 << 20        # the default: a large block is its own mapping
    assert mapped["inside"] == 0                  # inside: from the heap
    assert mapped["after"] >= 512 << 20           # defaults back on exit, even after an error


def test_reused_heap_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(heap, "_glibc", lambda: None)
    with heap.reused():
        assert torch.ones(4).sum() == 4
