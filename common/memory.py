"""Peak memory of a training or inference step, found by running the step on fake tensors (no data, no device).

`MemoryTrace` is a dispatch mode that sits on top of PyTorch's `FakeTensorMode`: every operator of the step
(forward, autograd's backward, the optimizer) runs on fake tensors, which carry shapes, dtypes and storage
sizes but no values, and the trace adds up the bytes of the storages alive after each operator; a storage
stops counting when Python frees it, as the caching allocator gets the block back. Nothing is written by hand
about any model: the count is whatever the real code allocates.

What a fake tensor cannot know, the trace supplies:
- Values of small tensors (image sizes, box coordinates, counts; up to `SMALL_NUMEL` elements) are kept
  beside the fake tensors and computed for real, so Python control flow that reads them (`int(t)`,
  `if t.all()`) takes the path the real run takes.
- Operators whose output size depends on values the trace does not have (`nonzero`, boolean indexing, NMS)
  get their upper bound: every element selected, every box kept. Scalars read from such data are taken as
  "no problem found" (`True`, and zero for counts of invalid values or overflow flags). The names of the
  operators that needed this are listed in the result, so an estimate says where it is an upper bound.

Targets. "cpu" counts exact storage sizes, as PyTorch's CPU allocator asks for them, and the copies a transposed
convolution's CPU kernel makes inside (see `MemoryTrace.__torch_dispatch__`). "cuda" rounds every
block up to 512 bytes, as the CUDA caching allocator does, and makes `scaled_dot_product_attention` pick the
kernel a GPU would (flash for 16-bit inputs, memory-efficient for fp32), whose saved tensors differ from the
CPU kernel's. Everything runs on the CPU: a GPU is not needed and not used.

The count is what `torch.cuda.max_memory_allocated` reports. Not counted: the CUDA context and cuDNN / cuBLAS
workspaces (outside PyTorch's tensors), and the caching allocator's fragmentation (`memory_reserved` minus
`memory_allocated`); `CUDA_OVERHEAD_BYTES` and `FRAGMENTATION` stand for them when asking what fits.
"""
from __future__ import annotations

import collections
import contextlib
import weakref
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from torch._subclasses.fake_tensor import DataDependentOutputException, DynamicOutputShapeException, FakeTensorMode
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes, is_traceable_wrapper_subclass
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from .upstream import patched

__all__ = ["MemoryTrace", "MemoryEstimate", "estimate_memory", "fake_module", "fake_process_group", "largest_fitting",
           "measure_peak", "peak_memory_mib", "fits", "gib", "TARGETS", "ATTENTION_KERNELS", "attention_kernel",
           "SMALL_NUMEL", "CUDA_OVERHEAD_BYTES", "FRAGMENTATION"]

TARGETS = ("cuda", "cpu")
# The kernel `scaled_dot_product_attention` uses on the target; "auto" is what a GPU picks by default.
ATTENTION_KERNELS = ("auto", "flash", "efficient", "math")
SMALL_NUMEL = 4096
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to a multiple of 512 bytes
# Per GPU, outside the count: CUDA context and cuDNN / cuBLAS workspaces (about 0.5-1 GiB on recent GPUs).
CUDA_OVERHEAD_BYTES = 1 << 30
# The caching allocator reserves more than it hands out; fragmentation of ~10% is common in detector training.
FRAGMENTATION = 0.10

aten = torch.ops.aten
_NOT_FOUND = object()


def gib(n: float) -> float:
    return n / 2**30


_INDEXING = (aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._unsafe_index_put.default)
# Operators whose result does not depend on the input's values (new_zeros: its dtype; zeros_like: its shape).
_SHAPE_ONLY = {aten.new_zeros.default, aten.new_ones.default, aten.new_full.default, aten.new_empty.default,
               aten.zeros_like.default, aten.ones_like.default, aten.full_like.default, aten.empty_like.default}


def _upper_bound(func, args, kwargs) -> torch.Tensor | tuple | None:
    """A stand-in output as large as `func` can return, for operators whose output size depends on values."""
    x = args[0]
    name = func.name()
    if func is aten.nonzero.default:
        return torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
    if func is aten.masked_select.default:
        return torch.empty((torch.broadcast_shapes(x.shape, args[1].shape).numel(),), dtype=x.dtype, device=x.device)
    if func is aten._unique2.default:  # (values, inverse, counts): every element distinct
        values = torch.empty((x.numel(),), dtype=x.dtype, device=x.device)
        inverse = torch.empty(x.shape, dtype=torch.long, device=x.device)
        return values, inverse, torch.empty_like(values, dtype=torch.long)
    if name == "torchvision::nms":
        return torch.empty((x.shape[0],), dtype=torch.long, device=x.device)
    return None


def _scalar_stand_in(t: torch.Tensor):
    """A data-dependent scalar the trace cannot compute: "nothing wrong found" (True; zero counts / flags)."""
    if t.dtype == torch.bool:
        return True
    return 0.0 if t.is_floating_point() else 0


def _storage_key(t: torch.Tensor) -> int:
    return StorageWeakRef(t.untyped_storage()).cdata


def _plain_tensors(t: torch.Tensor) -> Iterator[torch.Tensor]:
    """The tensors holding t's memory: t, or those a wrapper subclass wraps (a DTensor, as FSDP2's parameters are:
    its local tensor; the operators on it run below the trace, which sees the DTensors they return)."""
    if not is_traceable_wrapper_subclass(t):
        yield t
        return
    for inner in (getattr(t, name) for name in t.__tensor_flatten__()[0]):
        if isinstance(inner, torch.Tensor):  # (a DTensor also flattens to its device mesh)
            yield from _plain_tensors(inner)


class MemoryTrace(TorchDispatchMode):
    """Counts the bytes of live storages under a FakeTensorMode (enter the fake mode first, then this trace).

    Attributes: `now` and `peak` (bytes), `stand_ins` (operator name -> times an upper bound or a stand-in
    scalar was used), `phase_peaks` (name -> peak inside `with trace.phase(name)`)."""

    def __init__(self, target: str = "cuda", attention: str = "auto"):
        super().__init__()
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if attention not in ATTENTION_KERNELS:
            raise ValueError(f"attention must be one of {ATTENTION_KERNELS}, got {attention!r}")
        self.target = target
        # a GPU's default: flash, which takes 16-bit inputs only (attention_kernel gives fp32 the efficient kernel)
        self.attention = "flash" if attention == "auto" else attention
        self.now = 0
        self.peak = 0
        self.phase_peaks: dict[str, int] = {}
        self._phases: list[str] = []  # the phases entered and not left
        self.stand_ins: collections.Counter = collections.Counter()
        self._sizes: dict[int, int] = {}
        self._values = WeakIdKeyDictionary()  # fake tensor -> its real value (small tensors only)
        self._stale: set[int] = set()  # storages whose values were overwritten with unknown data

    # ---------------------------------------------------------------- storage accounting
    def _block(self, nbytes: int) -> int:
        return -(-nbytes // CUDA_BLOCK) * CUDA_BLOCK if self.target == "cuda" else nbytes

    def track(self, t: torch.Tensor) -> None:
        """Count `t`'s storage (once, however many views share it) until it is freed."""
        for plain in _plain_tensors(t):
            self._count(plain.untyped_storage())

    def _count(self, storage: torch.UntypedStorage) -> None:
        key = StorageWeakRef(storage).cdata
        size = self._block(storage.nbytes())
        if key in self._sizes:
            if self._sizes[key] != size:  # resized in place
                self.now += size - self._sizes[key]
                self._sizes[key] = size
        else:
            self._sizes[key] = size
            self.now += size
            weakref.finalize(storage, self._free, key)
        self._reach(self.now)

    def _reach(self, nbytes: int) -> None:
        """Memory in use was `nbytes` at some moment: raise the peaks."""
        self.peak = max(self.peak, nbytes)
        for name in self._phases:
            self.phase_peaks[name] = max(self.phase_peaks[name], nbytes)

    def _free(self, key: int) -> None:
        self.now -= self._sizes.pop(key)
        self._stale.discard(key)

    @contextlib.contextmanager
    def counting_resizes(self) -> Iterator[None]:
        """Within the block a storage resized in place (`UntypedStorage.resize_`, no operator) is counted at its new
        size: FSDP2 frees a unit's gathered parameters by resizing their storages to 0 and re-allocates them so."""
        resize = torch.UntypedStorage.resize_

        def counted(storage, nbytes):
            out = resize(storage, nbytes)
            if storage.device.type == "meta":  # a fake tensor's (the small values kept for real are on the CPU)
                self._count(storage)
            return out

        with patched("storage_resize", counted):
            yield

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the peak reached inside the block as `phase_peaks[name]` (over all the block's entries)."""
        self._phases.append(name)
        self.phase_peaks[name] = max(self.phase_peaks.get(name, 0), self.now)
        try:
            yield
        finally:
            self._phases.remove(name)

    # ---------------------------------------------------------------- values of small tensors
    def _value(self, t: torch.Tensor):
        if is_traceable_wrapper_subclass(t):
            return None  # a DTensor of fake local tensors
        if not isinstance(t, torch._subclasses.FakeTensor):
            return t  # a real tensor (e.g. made from a Python list) is its own value
        if _storage_key(t) in self._stale:
            return None
        return self._values.get(t)

    def _run_for_real(self, func, args, kwargs):
        """func on the values of its tensor arguments, or _NOT_FOUND where one of them has none."""
        missing = False

        def value(a):  # values live on the CPU, whatever device the fake tensors claim
            nonlocal missing
            if isinstance(a, torch.Tensor):
                v = self._value(a)
                if v is None and func in _SHAPE_ONLY:  # only the input's dtype and shape matter
                    return torch.empty(a.shape if a.numel() <= SMALL_NUMEL else 0, dtype=a.dtype)
                missing = missing or v is None
                return v
            return torch.device("cpu") if isinstance(a, torch.device) else a

        with _disable_current_modes():  # real tensors, also the stand-ins made in value()
            real_args, real_kwargs = tree_map(value, (args, kwargs))
            return _NOT_FOUND if missing else func(*real_args, **real_kwargs)

    def _index_by_positions(self, func, args, kwargs):
        """x[mask] (or its index_put) with each boolean mask turned into integer indices: the mask's true
        positions where its values are known, else every element (the upper bound). Returns (output, exact)."""
        indices, exact = [], True
        for i in args[1]:
            if i is None or i.dtype not in (torch.bool, torch.uint8):
                indices.append(i)
                continue
            value = self._value(i)
            if value is None:
                exact = False
                indices += [torch.zeros(i.numel(), dtype=torch.long, device=i.device)] * i.dim()
            else:
                with _disable_current_modes():
                    positions = value.nonzero().unbind(1)
                indices += [torch.empty(p.shape, dtype=torch.long, device=i.device) for p in positions]
        return func(args[0], indices, *args[2:], **kwargs), exact

    def _written(self, func, args):
        schema = func._schema
        return [a for a, s in zip(args, schema.arguments)
                if isinstance(a, torch.Tensor) and s.alias_info is not None and s.alias_info.is_write]

    # ---------------------------------------------------------------- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default):
            real = self._run_for_real(func, args, kwargs)
            if real is not _NOT_FOUND:
                return real
            self.stand_ins[func.name()] += 1
            return _scalar_stand_in(args[0]) if func is not aten.equal.default else True

        inputs = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        try:
            out = func(*args, **kwargs)
            data_dependent = False
        except (DynamicOutputShapeException, DataDependentOutputException):
            out, data_dependent = None, True
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        real = _NOT_FOUND
        # values of small results; and of data-dependent ones whenever the inputs' values are known (e.g. the
        # classes in a real label map)
        if data_dependent or all(t.numel() <= SMALL_NUMEL for t in outs):
            try:
                real = self._run_for_real(func, args, kwargs)
            except Exception:  # e.g. a kernel missing for the CPU; the fake output stands, without values
                real = _NOT_FOUND
        if data_dependent and real is _NOT_FOUND and func in _INDEXING:
            out, exact = self._index_by_positions(func, args, kwargs)
            if not exact:
                self.stand_ins[func.name()] += 1
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        elif data_dependent:
            if real is not _NOT_FOUND:
                device = inputs[0].device
                out = tree_map(lambda r: torch.empty_strided(r.shape, r.stride(), dtype=r.dtype, device=device)
                               if isinstance(r, torch.Tensor) else r, real)
            else:
                out = _upper_bound(func, args, kwargs)
                if out is None:
                    raise RuntimeError(f"memory planning: the output size of {func.name()} depends on values the "
                                       "trace does not have, and no upper bound for it is known")
                self.stand_ins[func.name()] += 1
            outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if func._schema.is_mutable:
            for t in self._written(func, args):
                if real is _NOT_FOUND or self._value(t) is None:
                    self._stale.update(_storage_key(plain) for plain in _plain_tensors(t))
        if real is not _NOT_FOUND:
            for fake, value in zip(tree_flatten(out)[0], tree_flatten(real)[0]):
                if isinstance(fake, torch._subclasses.FakeTensor) and isinstance(value, torch.Tensor):
                    self._values[fake] = value
        for t in outs:
            self.track(t)
        if self.target == "cpu" and func is aten.convolution.default and args[6]:  # args[6]: transposed
            # A transposed convolution on the CPU (oneDNN; the mask head's 2x upsampling, the feature pyramid's)
            # computes into a buffer of oneDNN's own blocked layout, copies it into a dense tensor, and that once
            # more into the contiguous output: two output-sized buffers beside the output, allocated by the
            # kernel through PyTorch's CPU allocator and freed before it returns. The fake kernel allocates the
            # output alone. With 200 RoIs of a 64-channel mask head (the demo detector's inference) that is
            # 2 x 38 MiB at its peak. Not counted: oneDNN first reorders the input and the weight into its layout
            # as well, which shows where the weight is large against the output (a B feature pyramid's
            # deconvolution of one image: 4 MB more). A GPU has none of these copies: cuDNN reads and writes the
            # NCHW tensors directly.
            self._reach(self.now + 2 * outs[0].untyped_storage().nbytes())
        return out


@contextlib.contextmanager
def attention_kernel(kernel: str) -> Iterator[None]:
    """Makes `F.scaled_dot_product_attention` run a GPU's kernel ("flash", "efficient" or "math"), which a fake
    tensor cannot choose itself (PyTorch picks by probing the device). Flash needs 16-bit inputs: fp32 inputs
    get the memory-efficient kernel, as on a GPU. The kernels differ in what they keep for the backward: the
    math path the (N x N) attention probabilities, the fused ones a log-sum-exp per query. A patch of the
    function rather than a mode, so that activation checkpointing's recomputation (in the backward) sees it."""
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def on_gpu(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if attn_mask is not None or enable_gqa:
            return sdpa(q, k, v, attn_mask, dropout_p, is_causal, scale=scale, enable_gqa=enable_gqa)
        chosen = "efficient" if kernel == "flash" and q.dtype not in (torch.float16, torch.bfloat16) else kernel
        if chosen == "flash":
            return aten._scaled_dot_product_flash_attention(q, k, v, dropout_p, is_causal, scale=scale)[0]
        if chosen == "efficient":
            grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
            return aten._scaled_dot_product_efficient_attention(q, k, v, None, grad, dropout_p, is_causal,
                                                                scale=scale)[0]
        return aten._scaled_dot_product_attention_math(q, k, v, None, dropout_p, is_causal, scale=scale)[0]

    with patched("sdpa", on_gpu):
        yield


def fake_module(module: torch.nn.Module, fake_mode: FakeTensorMode, trace: MemoryTrace, device: str = "cpu") -> None:
    """Replace a module's parameters and buffers by fake tensors of the same shapes on `device` (in place),
    counted by trace."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        t = fake_mode.from_tensor(t.detach()).to(device)
        trace.track(t)
        return t

    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[name] = torch.nn.Parameter(fake(p), requires_grad=p.requires_grad)
        for name, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[name] = fake(b)


@dataclass
class MemoryEstimate:
    """Peak bytes of one setting. `phases`: peak per phase (e.g. forward, training step); `resident`: bytes
    alive after the step (weights and what the step left: gradients, EMA); `stand_ins`: operators whose output
    was taken at its upper bound (or a scalar assumed), so the estimate is an upper bound there; `ddp_buckets`:
    DistributedDataParallel's gradient buckets (multi-GPU training), which hold a second copy of every trainable
    parameter's gradient for the whole run (its default, gradient_as_bucket_view=False)."""

    peak: int
    resident: int
    phases: dict[str, int] = field(default_factory=dict)
    stand_ins: dict[str, int] = field(default_factory=dict)
    ddp_buckets: int = 0

    def needed(self) -> int:
        """Bytes a GPU needs for this step: the peak and DDP's buckets, plus fragmentation, plus the CUDA context
        and workspaces."""
        return int((self.peak + self.ddp_buckets) * (1 + FRAGMENTATION)) + CUDA_OVERHEAD_BYTES


def fits(estimate: MemoryEstimate, gpu_bytes: int) -> bool:
    return estimate.needed() <= gpu_bytes


@contextlib.contextmanager
def fake_process_group(world: int) -> Iterator[None]:
    """torch.distributed initialized as rank 0 of `world` processes whose collectives move no data (PyTorch's
    "fake" backend), so that a step sharding its model runs FSDP2's own code alone; `world` 1: nothing."""
    if world == 1:
        yield
        return
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized():
        raise RuntimeError("memory planning of a sharded step makes its own process group: none may exist yet")
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    try:
        yield
    finally:
        dist.destroy_process_group()


def estimate_memory(build: Callable[[], torch.nn.Module], run: Callable[[torch.nn.Module, Callable], None],
                    target: str = "cuda", attention: str = "auto", ddp: bool = False,
                    device: str = "cpu", world: int = 1) -> MemoryEstimate:
    """Peak memory of `run(model, phase)` for the model `build()` returns (built for real, on the CPU, then
    made fake). `run` makes its inputs itself (under the fake mode, so they are fake and counted) and may mark
    phases with `with phase(name):`. ddp: count DDP's gradient buckets (training on several GPUs).
    device: where the fake model lives. "cuda" makes device-dependent code take its GPU path, and needs no GPU
    for a forward pass; autograd's backward on CUDA tensors does, so training is traced on "cpu" (the
    target's allocator rounding and attention kernel still apply). world > 1: `run` is traced as rank 0 of
    that many processes (fake_process_group), e.g. sharding its model (eva02.common.sharding.shard)."""
    model = build()
    buckets = sum(p.untyped_storage().nbytes() for p in model.parameters() if p.requires_grad) if ddp else 0
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    trace = MemoryTrace(target, attention)
    with fake_mode:  # a move to "cuda" outside it would initialize CUDA
        fake_module(model, fake_mode, trace, device)
    kernel = attention_kernel(trace.attention) if target == "cuda" else contextlib.nullcontext()
    # torch._shape_as_tensor writes the sizes into a tensor's memory, which a fake tensor has not got
    shape = patched("shape_as_tensor", lambda t: torch.tensor(list(t.shape)))
    with fake_process_group(world), fake_mode, trace, trace.counting_resizes(), kernel, shape:
        run(model, trace.phase)
    del model
    return MemoryEstimate(peak=trace.peak, resident=trace.now, phases=dict(trace.phase_peaks),
                          stand_ins=dict(trace.stand_ins), ddp_buckets=buckets)


def peak_memory_mib(device: str | torch.device = "cpu") -> float:
    """This process's peak memory so far in MiB, as training logs show it: torch.cuda.max_memory_allocated on a
    GPU, the peak resident set size (ru_maxrss: everything the process touched, not only tensors) on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure_peak(build: Callable[[], torch.nn.Module], run: Callable[[torch.nn.Module, Callable], None],
                 device: str = "cpu", with_build: bool = False) -> int:
    """Measured peak bytes of the same `run(model, phase)` on real tensors, the reference for estimate_memory:
    on the CPU from the profiler's memory timeline (every allocation and free of PyTorch's CPU allocator),
    on a GPU from torch.cuda.max_memory_allocated. with_build (CPU): the timeline starts before `build()`, for a
    run that frees weights the build made (sharding does): the profiler records no free of a block allocated
    before it started."""
    no_phase = lambda name: contextlib.nullcontext()  # noqa: E731
    if device != "cpu":
        model = build().to(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.device(device):
            run(model, no_phase)
        return torch.cuda.max_memory_allocated(device)
    from torch.profiler import ProfilerActivity, profile

    if not with_build:
        model = build()
        resident = sum(t.untyped_storage().nbytes() for t in (*model.parameters(), *model.buffers()))
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        if with_build:
            model, resident = build(), 0
        run(model, no_phase)
    # the allocator's records: +bytes at an allocation, -bytes at a free
    records = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    now = peak = 0
    for e in sorted(records, key=lambda e: e.start_ns()):
        now += e.nbytes()
        peak = max(peak, now)
    return resident + peak


def largest_fitting(estimate_for: Callable[[int], MemoryEstimate], gpu_bytes: int,
                    limit: int = 256) -> tuple[int, dict[int, MemoryEstimate]]:
    """The largest n (1..limit) with fits(estimate_for(n), gpu_bytes), 0 if none: doubling, then bisection
    (peak memory grows with the batch). Returns it with every estimate made on the way."""
    seen: dict[int, MemoryEstimate] = {}

    def ok(n: int) -> bool:
        if n not in seen:
            seen[n] = estimate_for(n)
        return fits(seen[n], gpu_bytes)

    if not ok(1):
        return 0, seen
    low, high = 1, 2
    while high <= limit and ok(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return low, seen
