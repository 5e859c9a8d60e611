"""CPU tensors on transparent huge pages, for buffers that are streamed end to end.

A batch-1 decode step reads every weight once: hundreds of MB, front to back.  On 4 KiB
pages that is a TLB miss every 4 KiB, and in a virtual machine each miss walks two page
tables (guest and host).  Measured on the 2-core KVM guest gpteval is developed on
(Linux 6.18, THP in "madvise" mode): a 256 MiB `sum` read at 62-65 GB/s from memory
advised MADV_HUGEPAGE against 48-60 GB/s from torch's own allocations (which are not
advised unless THP_MEM_ALLOC_ENABLE is set), and fused-decode's decode step read its weights
at 56 GB/s instead of 50; on one core, a C GEMV over 377 MB streamed 25-32 GB/s on huge
pages against 21-22 on 4 KiB pages.

Used by the bandwidth ceilings (measure/ceilings.py) and by fused-decode's weight copy, so
that a kernel reading huge pages is held to a ceiling measured on huge pages.  Where the
kernel refuses the advice (THP "never", no THP support) the memory is ordinary anonymous
memory, and where there is no such advice (not Linux) an ordinary torch allocation: still
correct, only slower.
"""

from __future__ import annotations

import mmap

import torch

HUGE_PAGE = 2 * 2 ** 20  # x86-64 and arm64 (4 KiB base pages): the size THP maps


def huge_page_empty(shape: tuple[int, ...] | int, dtype: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """A zero-filled contiguous CPU tensor whose memory starts on a 2 MiB boundary and was
    advised MADV_HUGEPAGE before its first touch (the advice only takes effect on pages
    not yet faulted in).  The mapping lives as long as the tensor (torch.frombuffer holds
    a reference to it) and is zero-filled by the kernel, like any fresh anonymous memory."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if getattr(mmap, "MADV_HUGEPAGE", None) is None:  # not Linux: nothing to advise
        return torch.zeros(shape, dtype=dtype)
    numel = 1
    for d in shape:
        numel *= d
    nbytes = numel * torch.empty((), dtype=dtype).element_size()
    # one huge page more than needed, so that the tensor can start on a 2 MiB boundary:
    # mmap only promises 4 KiB alignment, and a huge page must be aligned to its size
    region = mmap.mmap(-1, max(nbytes, 1) + HUGE_PAGE,
                       flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advise_huge_pages(region)
    raw = torch.frombuffer(region, dtype=torch.uint8)
    start = -raw.data_ptr() % HUGE_PAGE
    return raw[start:start + nbytes].view(dtype).view(shape)


def advise_huge_pages(region: mmap.mmap) -> bool:
    """Ask the kernel to back `region` with transparent huge pages; False where it cannot
    (no MADV_HUGEPAGE on this platform, or a kernel without THP)."""
    advice = getattr(mmap, "MADV_HUGEPAGE", None)
    if advice is None:
        return False
    try:
        region.madvise(advice)
    except OSError:  # EINVAL: a kernel built without transparent huge pages
        return False
    return True

