"""Collectives that record themselves in the communication ledger.

All helpers take a ``group`` (a ``torch.distributed`` process group, or ``None`` for a single-rank group) and
a ledger ``kind`` (a name such as ``conv_halo``; the ledger groups by it). They run on gloo (CPU) and NCCL (CUDA)
alike, and gather with ``all_gather_single`` straight into one output tensor (no per-rank list, no copy).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from distri.parallel.ledger import CommLedger


def group_size(group) -> int:
    if group is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size(group)


def _all_gather_flat(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool):
    """Gather ``inp`` (contiguous) of every rank into ``out`` (``n * inp.numel()`` elements, rank-major);
    ``inp`` may be ``out``'s own slot (in place)."""
    return dist.all_gather_single(out.view(-1), inp.view(-1), group=group, async_op=async_op)


def all_gather_stack(tensor: torch.Tensor, group, ledger: CommLedger | None, kind: str) -> torch.Tensor:
    """Blocking all-gather; returns ``[n, *tensor.shape]`` in rank order (one new tensor, no further copy)."""
    n = group_size(group)
    if n == 1:
        return tensor.unsqueeze(0)
    inp = tensor.contiguous()
    out = torch.empty((n, *inp.shape), dtype=inp.dtype, device=inp.device)
    with CommLedger.waiting(ledger, kind, inp.device):
        _all_gather_flat(out, inp, group, async_op=False)
    if ledger is not None:
        ledger.record(kind, "all_gather", inp.numel(), n, inp.element_size())
    return out


def all_gather(
    tensor: torch.Tensor, group, ledger: CommLedger | None, kind: str, dim: int = 0
) -> torch.Tensor:
    """Blocking all-gather; returns the rank-ordered concatenation along ``dim``."""
    if group_size(group) == 1:
        return tensor
    return torch.cat(all_gather_stack(tensor, group, ledger, kind).unbind(0), dim=dim)


def all_reduce(tensor: torch.Tensor, group, ledger: CommLedger | None, kind: str) -> torch.Tensor:
    """Blocking in-place sum all-reduce; returns ``tensor``."""
    n = group_size(group)
    if n == 1:
        return tensor
    with CommLedger.waiting(ledger, kind, tensor.device):
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    if ledger is not None:
        ledger.record(kind, "all_reduce", tensor.numel(), n, tensor.element_size())
    return tensor


class GatheredBuffer:
    """A persistent ``[B, n, *shape]`` buffer that every rank fills in place: rank ``r`` writes its own part
    into ``buffer[:, r]`` and one all-gather per batch element fills the other ranks' parts.

    Used for the keys/values of displaced patch parallelism: ``buffer[b]`` is ``[n, *shape]`` contiguous, so the
    whole image's keys/values of sample ``b`` are a view, with no concatenation. :meth:`exchange` gathers
    blocking (synchronous steps); :meth:`launch` starts the gathers asynchronously for the next step and
    :meth:`wait` (call it before writing this rank's part again) finishes them.
    """

    def __init__(self, group, ledger: CommLedger | None, kind: str, rank: int) -> None:
        self.group, self.ledger, self.kind, self.rank = group, ledger, kind, rank
        self.n = group_size(group)
        self.buffer: torch.Tensor | None = None
        self._handles: list = []

    def own(self, batch: int, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        """This rank's ``[B, *shape]`` part (allocates the buffer on first use or when the shape changes)."""
        self.wait()
        want = (batch, self.n, *shape)
        if self.buffer is None or tuple(self.buffer.shape) != want or self.buffer.dtype != dtype:
            self.buffer = torch.empty(want, dtype=dtype, device=device)
        return self.buffer[:, self.rank]

    def _gather(self, async_op: bool) -> list:
        buf = self.buffer
        handles = []
        for b in range(len(buf)):
            handles.append(_all_gather_flat(buf[b], buf[b, self.rank], self.group, async_op))
            if self.ledger is not None:
                self.ledger.record(
                    self.kind, "all_gather", buf[b, 0].numel(), self.n, buf.element_size(), not async_op
                )
        return handles

    def exchange(self) -> torch.Tensor:
        with CommLedger.waiting(self.ledger, self.kind, self.buffer.device):
            self._gather(async_op=False)
        return self.buffer

    def launch(self) -> None:
        self._handles = self._gather(async_op=True)

    def wait(self) -> None:
        if self._handles:
            with CommLedger.waiting(self.ledger, self.kind, self.buffer.device):
                for h in self._handles:
                    h.wait()
            self._handles = []


class AsyncBuckets:
    """Bucketed asynchronous all-gathers into buffers allocated once.

    Used by the stale (displaced) modes. During a step, layers call :meth:`send` with their fresh tensors
    in a fixed order; tensors are copied into the current bucket's send buffer and, once a bucket holds
    ``bucket_elems`` elements (or at :meth:`flush`), one ``all_gather`` over the whole bucket is started
    asynchronously. At the next step :meth:`recv` waits for the bucket holding the slot (usually long done)
    and returns the gathered ``[n, *shape]`` view.

    The bucket layout and buffers are fixed by the first step that sends (the layer order is the same every
    step) and reused by every later step and pipeline call; a step sending a different layout raises.
    :meth:`restart` (a new pipeline call) keeps them but forgets the received data, so :meth:`ready` is false
    until the next :meth:`flush`.
    """

    def __init__(self, group, ledger: CommLedger | None, bucket_elems: int) -> None:
        self.group = group
        self.ledger = ledger
        self.n = group_size(group)
        self.bucket_elems = max(int(bucket_elems), 1)
        # layout: slot key -> (bucket index, offset, shape, kind)
        self.layout: dict[str, tuple[int, int, tuple[int, ...], str]] = {}
        self.bucket_sizes: list[int] = []
        self.send_bufs: list[torch.Tensor] = []
        self.recv_bufs: list[torch.Tensor] = []
        self.handles: list[object | None] = []
        self.bucket_kinds: list[dict[str, int]] = []
        self._frozen = False
        self._has_data = False
        self._pending: list[tuple[str, torch.Tensor]] = []

    # -- sending -------------------------------------------------------------------------------
    def send(self, key: str, tensor: torch.Tensor, kind: str) -> None:
        if self.n == 1:
            return
        if not self._frozen:
            self._pending.append((key, tensor.detach().clone(), kind))
            return
        b, off, shape, _ = self.layout[key]
        if tuple(tensor.shape) != shape:
            raise RuntimeError(f"async exchange {key}: shape {tuple(tensor.shape)} differs from {shape}")
        self.send_bufs[b][off : off + tensor.numel()].copy_(tensor.reshape(-1))
        if off + tensor.numel() == self.bucket_sizes[b]:
            self._launch(b)

    def flush(self) -> None:
        """End of a step: build the layout on the first call, make sure every bucket was launched."""
        if self.n == 1:
            return
        if not self._frozen:
            self._build_layout()
            for key, t, _ in self._pending:
                b, off, _, _ = self.layout[key]
                self.send_bufs[b][off : off + t.numel()].copy_(t.reshape(-1))
            self._pending.clear()
            for b in range(len(self.bucket_sizes)):
                self._launch(b)
            self._frozen = self._has_data = True
            return
        for b in range(len(self.bucket_sizes)):
            if self.handles[b] is None:
                raise RuntimeError(f"async bucket {b} was not filled this step: the layer order changed")
        self._has_data = True

    def _build_layout(self) -> None:
        b, off = 0, 0
        dtype = device = None
        for key, t, kind in self._pending:
            if key in self.layout:
                raise RuntimeError(f"async slot {key!r} sent twice in one step")
            if off and off + t.numel() > self.bucket_elems:
                self.bucket_sizes.append(off)
                b, off = b + 1, 0
            self.layout[key] = (b, off, tuple(t.shape), kind)
            while len(self.bucket_kinds) <= b:
                self.bucket_kinds.append({})
            self.bucket_kinds[b][kind] = self.bucket_kinds[b].get(kind, 0) + t.numel()
            off += t.numel()
            dtype, device = t.dtype, t.device
        if off:
            self.bucket_sizes.append(off)
        for size in self.bucket_sizes:
            self.send_bufs.append(torch.empty(size, dtype=dtype, device=device))
            self.recv_bufs.append(torch.empty(self.n * size, dtype=dtype, device=device))
            self.handles.append(None)

    def _launch(self, b: int) -> None:
        if self.handles[b] is not None:
            raise RuntimeError(f"async bucket {b} launched twice before being consumed")
        self.handles[b] = _all_gather_flat(self.recv_bufs[b], self.send_bufs[b], self.group, async_op=True)
        if self.ledger is not None:
            esize = self.send_bufs[b].element_size()
            for kind, elems in self.bucket_kinds[b].items():
                self.ledger.record(kind, "all_gather", elems, self.n, esize, blocking=False)

    # -- receiving ----------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when the buffers hold what every rank sent at the previous step of this pipeline call."""
        return self._has_data

    def restart(self) -> None:
        """A new pipeline call: finish outstanding exchanges, keep layout and buffers, forget the data."""
        self.wait_all()
        self._pending.clear()
        self._has_data = False

    def recv(self, key: str) -> torch.Tensor:
        """The ``[n, *shape]`` tensors every rank sent under ``key`` at the last completed step."""
        b, off, shape, kind = self.layout[key]
        h = self.handles[b]
        if h is not None:
            with CommLedger.waiting(self.ledger, kind, self.recv_bufs[b].device):
                h.wait()
            self.handles[b] = None
        size = self.bucket_sizes[b]
        numel = 1
        for s in shape:
            numel *= s
        return self.recv_bufs[b].view(self.n, size)[:, off : off + numel].reshape(self.n, *shape)

    def wait_all(self) -> None:
        for b, h in enumerate(self.handles):
            if h is not None:
                h.wait()
                self.handles[b] = None
