"""Huge-page tensors: the shape, alignment and zero fill the kernels rely on, and the advice
actually given to the kernel (its VmFlags), which is deterministic where the huge pages
themselves are not (they depend on free memory)."""

import gc
import mmap
import sys

import pytest
import torch

from gpteval import hugepages
from gpteval.hugepages import HUGE_PAGE, huge_page_empty


def _vm_flags(addr: int) -> list[str]:
    """VmFlags of the mapping holding `addr`, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                inside = lo <= addr < hi
            elif inside and head == "VmFlags:":
                return line.split()[1:]
    raise AssertionError(f"no mapping holds {addr:#x}")


def test_tensor_is_zeroed_aligned_and_shaped():
    t = huge_page_empty((3, 5000), torch.float32)
    assert t.shape == (3, 5000) and t.dtype == torch.float32 and t.is_contiguous()
    assert t.data_ptr() % HUGE_PAGE == 0
    assert torch.count_nonzero(t) == 0
    one_d = huge_page_empty(7, torch.int64)
    assert one_d.shape == (7,) and one_d.element_size() == 8


def test_memory_lives_as_long_as_the_tensor():
    t = huge_page_empty(1 << 20)
    gc.collect()  # no reference to the mapping is kept but the tensor's
    t.fill_(2.5)
    assert float(t.sum()) == 2.5 * (1 << 20)
    view = t[10:20]
    del t
    gc.collect()
    assert torch.equal(view, torch.full((10,), 2.5))


@pytest.mark.skipif(not sys.platform.startswith("linux") or not hasattr(mmap, "MADV_HUGEPAGE"),
                    reason="MADV_HUGEPAGE is Linux's")
def test_memory_is_advised_huge_pages():
    t = huge_page_empty(HUGE_PAGE // 4)
    assert "hg" in _vm_flags(t.data_ptr())  # the flag MADV_HUGEPAGE sets on the mapping
    plain = mmap.mmap(-1, 2 * HUGE_PAGE)  # the same kind of mapping, not advised
    assert "hg" not in _vm_flags(torch.frombuffer(plain, dtype=torch.uint8).data_ptr())


def test_without_the_advice_the_memory_is_still_usable(monkeypatch):
    monkeypatch.delattr(mmap, "MADV_HUGEPAGE", raising=False)  # as on macOS or Windows
    assert hugepages.advise_huge_pages(mmap.mmap(-1, 4096)) is False
    t = huge_page_empty((4, 25))
    assert t.shape == (4, 25) and torch.count_nonzero(t) == 0
    t += 1
    assert float(t.sum()) == 100.0
