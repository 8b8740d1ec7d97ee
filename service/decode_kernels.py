"""Compiled inner loops of :mod:`service.decode` (numba, ``nogil``). Private to that module,
but for the compile settings (:func:`kernel_jit`, :data:`DOT_MATH`) that
:mod:`service.adaptation_kernels` shares.

Everything here works on the flat encoding of :mod:`service.tree` (leaves ``0..V-1``, internal
node ``n`` has internal index ``i = n - V``, children in CSR ``child_ptr`` / ``children``, child
``j`` of node ``i`` has parameter row ``child_ptr[i] + j - i`` and the last child has logit 0).
Log-probabilities are float64; weights and hidden vectors stay float32 and dot products
accumulate (exact) float64 products in float64, so that ties and near-ties rank as in the
float64 brute force.

The best-first frontier is an array-based binary max-heap on path log-probability, held in two
parallel arrays (``heap_lp``, ``heap_node``) owned by the caller; a search stops when they are
nearly full, the caller grows them and resumes it, as it does between deadline chunks.

Filters use empty arrays for "off" so that every call has the same argument types (one
compilation per kernel): ``leaf_rank`` (V,) with a range ``[lo, hi)`` for prefix filtering,
``banned`` (V,) bool, and ``node_marks``, a bitset over node ids marking the nodes above
matching leaves: node ``n`` is bit ``n & 63`` of the uint64 word ``n >> 6`` (``marks_words(N)``
words; 8 KiB at V = 33k, so a few hundred prefixes' marks stay in cache and in memory).

Caching: kernels are compiled with ``cache=True``; numba takes its cache directory from the
``NUMBA_CACHE_DIR`` environment variable (read when numba is first imported). Without any
writable cache location they are compiled in memory instead of failing at import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils as _cgutils
from numba.extending import intrinsic

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")

IntArray = npt.NDArray[np.int64]
MarkArray = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]
F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]
FactorArrays = tuple[IntArray, IntArray, IntArray, F32Array, IntArray, F32Array]
""":attr:`service.tree.Factors.kernel_arrays`: ``(node_factor, rank, proj_ptr, proj, rows_ptr,
rows)``; ``node_factor`` is empty for a tree without factored nodes."""

# Reassociation lets LLVM vectorise the dot product; NaN/inf semantics stay strict because the
# search compares against -inf thresholds. The helpers are inlined into the searches at numba's
# level (a call passing five arrays costs ~45 ns, as much as the dot product), and inlined code
# takes its caller's flags, so every kernel that computes logits carries them.
DOT_MATH = {"reassoc", "contract", "nsz", "arcp"}


def kernel_jit(**options: Any) -> Callable[[F], F]:
    """``numba.njit`` as every kernel of the service is compiled (also
    :mod:`service.adaptation_kernels`): ``nogil``, cached on disk, no reference counting."""
    # Kernels only borrow their caller's arrays and never allocate, so they run without numba's
    # reference counting (``_nrt=False``): with it, every array handed to an inlined helper (the
    # heap, the filters, the weights) cost an atomic incref/decref pair per call, about a
    # quarter of a top-10 search (28.4 -> 22.3 µs median at V = 33k). An allocation in a kernel
    # would fail to compile rather than leak.
    options = {"nogil": True, "_nrt": False, **options}

    def wrap(fn: F) -> F:
        try:
            return cast(F, njit(cache=True, **options)(fn))
        except RuntimeError:  # numba found no writable cache location: compile in memory
            return cast(F, njit(**options)(fn))

    return wrap


def entry_point(kernel: Callable[..., R], args: tuple[Any, ...]) -> Callable[..., R]:
    """``kernel``'s compiled code for the types of ``args`` (compiled or loaded once), called
    without numba's dispatcher.

    The dispatcher works out every argument's type on every call: ~0.6 µs of a 1.2 µs call
    with :func:`start_search`'s 19 arguments, on a search that takes ~18 µs. The entry point
    converts its arguments to the compiled types *without checking them*, so its caller must
    pass the same dtypes, dimensions and (C-contiguous) layouts every time (the filters' empty
    "off" arrays in the module docstring exist for this); a mismatch would read memory wrongly.
    """
    types = tuple(numba.typeof(arg) for arg in args)  # type: ignore[no-untyped-call]
    dispatcher: Any = kernel  # typed as the Python function it compiles
    return cast(Callable[..., R], dispatcher.compile(types))


# -- scalar helpers ----------------------------------------------------------------------------


@kernel_jit(fastmath=DOT_MATH, inline="always")
def row_logit(weight: F32Array, bias: F32Array, row: int, h: F32Array) -> float:
    """``weight[row] . h + bias[row]`` accumulated in float64."""
    acc = 0.0
    w = weight[row]
    for t in range(w.shape[0]):
        acc += np.float64(w[t]) * np.float64(h[t])
    return float(acc + bias[row])


_CACHE_LINE_BYTES = 64
cgutils: Any = _cgutils  # numba's code-generation helpers are untyped


def _prefetch_row(typingctx: Any, matrix: Any, row: Any) -> Any:
    """Start loading ``matrix[row]`` (a C-contiguous 2-d array) into the CPU's caches without
    waiting for it: one ``llvm.prefetch`` per cache line of the row. A hint only: it computes
    nothing, and a prefetch never faults."""
    sig = types.void(matrix, row)

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        matrix_type = signature.args[0]
        array = context.make_array(matrix_type)(context, builder, args[0])
        i64, i32 = ir.IntType(64), ir.IntType(32)
        start = cgutils.get_item_pointer(
            context, builder, matrix_type, array, [args[1], ir.Constant(i64, 0)]
        )
        byte_ptr = ir.IntType(8).as_pointer()
        # declare_intrinsic mangles the name for the pointer type of this llvmlite's LLVM
        # (``llvm.prefetch.p0i8`` with typed pointers, ``llvm.prefetch.p0`` with opaque ones).
        prefetch = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_ptr], ir.FunctionType(ir.VoidType(), [byte_ptr, i32, i32, i32])
        )
        base = builder.bitcast(start, byte_ptr)
        columns = cgutils.unpack_tuple(builder, array.shape, 2)[1]
        row_bytes = builder.mul(columns, ir.Constant(i64, matrix_type.dtype.bitwidth // 8))
        step = ir.Constant(i64, _CACHE_LINE_BYTES)
        with cgutils.for_range_slice(builder, ir.Constant(i64, 0), row_bytes, step) as (at, _):
            # (address, read = 0, keep in every cache level = 3, data = 1)
            hint = [ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)]
            builder.call(prefetch, [builder.gep(base, [at]), *hint])
        return context.get_dummy_value()

    return sig, codegen


prefetch_row = cast(Callable[[F32Array, int], None], intrinsic(_prefetch_row))


_POW2_NEG = np.ldexp(1.0, -np.arange(1076))
"""``2 ** -n`` for ``n = 0 .. 1075``: the scale of :func:`exp_nonpositive` (a compile-time
constant of every kernel that inlines it)."""


@kernel_jit(fastmath=DOT_MATH, inline="always")
def exp_nonpositive(x: float) -> float:
    """``exp(x)`` for ``x <= 0``, to ~1e-15 relative, in straight-line code that vectorises.

    A wide node normalises over all its children: with libm's ``exp`` (a call per child, which
    no loop vectorises) that took 70 % of expanding a 23k-word cluster. Here ``x = n ln 2 + r``
    with ``|r| <= ln 2 / 2`` (``ln 2`` split in two, Cody & Waite), ``exp(r)`` is its Taylor
    polynomial to ``r ** 13`` (truncation below 1e-17) and ``2 ** n`` comes from a table.
    Below -708 (where ``exp`` leaves double range) it returns ``exp(-708)``, 3e-308.
    """
    v = max(x, -708.0)
    n = np.floor(v * 1.4426950408889634 + 0.5)
    r = (v - n * 6.93147180369123816490e-01) - n * 1.90821492927058770002e-10
    p = 1.6059043836821613e-10  # 1 / 13!
    p = p * r + 2.08767569878681e-09
    p = p * r + 2.505210838544172e-08
    p = p * r + 2.755731922398589e-07
    p = p * r + 2.7557319223985893e-06
    p = p * r + 2.48015873015873e-05
    p = p * r + 0.0001984126984126984
    p = p * r + 0.001388888888888889
    p = p * r + 0.008333333333333333
    p = p * r + 0.041666666666666664
    p = p * r + 0.16666666666666666
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return float(p * _POW2_NEG[int(-n)])


@kernel_jit(fastmath=DOT_MATH, inline="always")
def factored_logits(
    factors: FactorArrays,
    f: int,
    bias: F32Array,
    first_row: int,
    rows: int,
    h: F32Array,
    out: F64Array,
) -> None:
    """``out[j] = Q_f[j] . (P_f h) + bias[first_row + j]`` for ``j < rows``; ``P_f h`` is kept
    at the end of ``out``, past every node's children (the caller sizes it so)."""
    _, rank, proj_ptr, proj, rows_ptr, q = factors
    r = rank[f]
    d = h.shape[0]
    # 2-d views of the flat arrays: loops over a view's row vectorise, flat offsets measured
    # 2-6x slower (no SIMD over the rank for r = 16).
    p_f = proj[proj_ptr[f] : proj_ptr[f + 1]].reshape((r, d))
    q_f = q[rows_ptr[f] : rows_ptr[f + 1]].reshape((rows, r))
    u = out[out.shape[0] - r :]
    for a in range(r):
        p_a = p_f[a]
        acc = 0.0
        for t in range(d):
            acc += np.float64(p_a[t]) * np.float64(h[t])
        u[a] = acc
    for j in range(rows):
        q_j = q_f[j]
        acc = 0.0
        for a in range(r):
            acc += np.float64(q_j[a]) * u[a]
        out[j] = acc + bias[first_row + j]


@kernel_jit(fastmath=DOT_MATH, inline="always")
def child_log_probs(
    child_ptr: IntArray,
    weight: F32Array,
    bias: F32Array,
    factors: FactorArrays,
    h: F32Array,
    node_index: int,
    base: float,
    out: F64Array,
) -> int:
    """Write ``base + log P(child j | node)`` for every child into ``out``; return the count."""
    start = child_ptr[node_index]
    count = child_ptr[node_index + 1] - start
    first_row = start - node_index
    node_factor = factors[0]
    if node_factor.shape[0] > 0 and node_factor[node_index] >= 0:
        factored_logits(factors, node_factor[node_index], bias, first_row, count - 1, h, out)
    elif count == 2:  # the common binary node: a sigmoid
        x = row_logit(weight, bias, first_row, h)
        # log sigma(x) and log sigma(-x) from one log(1 + exp(-|x|)), finite for any finite x.
        # log, not log1p: the rounding of 1 + e costs at most 1.1e-16 in absolute terms, which
        # is all a sum of path log-probs needs, and log1p took ~10 % of a top-10 search.
        soft = np.log(1.0 + np.exp(-abs(x)))
        out[0] = base - soft + min(x, 0.0)
        out[1] = base - soft - max(x, 0.0)
        return 2
    else:
        for j in range(count - 1):
            out[j] = row_logit(weight, bias, first_row + j, h)
    peak = 0.0  # the reference child's logit
    for j in range(count - 1):
        peak = max(peak, out[j])
    out[count - 1] = 0.0
    total = 0.0
    for j in range(count):
        total += exp_nonpositive(out[j] - peak)
    norm = base - peak - np.log(total)
    for j in range(count):
        out[j] += norm
    return int(count)


def marks_words(num_nodes: int) -> int:
    """Length of a ``node_marks`` bitset over ``num_nodes`` nodes."""
    return (num_nodes + 63) >> 6


@kernel_jit(inline="always")
def is_marked(node_marks: MarkArray, node: int) -> bool:
    return bool((node_marks[node >> 6] >> np.uint64(node & 63)) & np.uint64(1))


@kernel_jit(inline="always")
def admissible(
    node: int,
    lp: float,
    num_leaves: int,
    leaf_rank: IntArray,
    lo: int,
    hi: int,
    banned: BoolArray,
    node_marks: MarkArray,
    min_lp: float,
) -> bool:
    """Can ``node`` (reached with path log-prob ``lp``) still yield a qualifying word?"""
    if not lp >= min_lp:  # also rejects NaN
        return False
    if node_marks.shape[0] > 0 and not is_marked(node_marks, node):
        return False
    if node < num_leaves:
        if banned.shape[0] > 0 and banned[node]:
            return False
        if leaf_rank.shape[0] > 0:
            rank = leaf_rank[node]
            return bool(lo <= rank < hi)
    return True


# -- the heap ----------------------------------------------------------------------------------


@kernel_jit(inline="always")
def heap_push(heap_lp: F64Array, heap_node: IntArray, size: int, lp: float, node: int) -> int:
    """Insert into a heap that has room for it; return the new size."""
    pos = size
    while pos > 0:
        up = (pos - 1) >> 1
        if heap_lp[up] >= lp:
            break
        heap_lp[pos] = heap_lp[up]
        heap_node[pos] = heap_node[up]
        pos = up
    heap_lp[pos] = lp
    heap_node[pos] = node
    return size + 1


@kernel_jit(inline="always")
def heap_replace_top(
    heap_lp: F64Array, heap_node: IntArray, size: int, lp: float, node: int
) -> None:
    """Replace the top entry (read it first) of a non-empty heap by ``(lp, node)``.

    Needs one free slot past the heap, which the searches always leave: it holds a ``-inf``
    sentinel, so that both children of a node can be compared without checking that the right
    one exists, and the larger is picked by arithmetic instead of a branch. Which child is
    larger is a coin flip the CPU cannot predict; the branch cost ~6 % of a top-10 search at
    V = 33k with the hidden vector changing from search to search.
    """
    heap_lp[size] = -np.inf
    pos = 0
    while True:
        child = 2 * pos + 1
        if child >= size:
            break
        child += int(heap_lp[child + 1] > heap_lp[child])
        if heap_lp[child] <= lp:
            break
        heap_lp[pos] = heap_lp[child]
        heap_node[pos] = heap_node[child]
        pos = child
    heap_lp[pos] = lp
    heap_node[pos] = node


@kernel_jit(inline="always")
def heap_pop(heap_lp: F64Array, heap_node: IntArray, size: int) -> int:
    """Remove the top entry (read it first); return the new size."""
    size -= 1
    if size > 0:
        heap_replace_top(heap_lp, heap_node, size, heap_lp[size], heap_node[size])
    return size


WIDE_NODE = 16
"""Children from which an expansion first finds the floor of :func:`leaf_floor`."""


@kernel_jit(inline="always")
def leaf_floor(
    children: IntArray,
    start: int,
    count: int,
    lps: F64Array,
    num_leaves: int,
    leaf_rank: IntArray,
    lo: int,
    hi: int,
    banned: BoolArray,
    node_marks: MarkArray,
    min_lp: float,
    need: int,
    scratch: F64Array,
    base: int,
) -> float:
    """The ``need``-th largest log-prob among a node's admissible leaf children (``-inf`` if
    there are fewer), found with a min-heap of ``need`` entries at ``scratch[base:]``.

    The ``need`` words still to find all score at least this, so leaf children below it can
    never be among them and are not pushed: an adaptive softmax's root has thousands of leaf
    children, and pushing them all cost more than scoring them (measured 2,000 pushes per
    root expansion at V = 33k for a top-10).
    """
    filled = 0
    for j in range(count):
        child = children[start + j]
        value = lps[j]
        if child >= num_leaves or (filled == need and value <= scratch[base]):
            continue
        if not admissible(child, value, num_leaves, leaf_rank, lo, hi, banned, node_marks, min_lp):
            continue
        if filled < need:  # sift up
            pos = filled
            filled += 1
            while pos > 0:
                up = (pos - 1) >> 1
                if scratch[base + up] <= value:
                    break
                scratch[base + pos] = scratch[base + up]
                pos = up
        else:  # replace the smallest and sift down
            pos = 0
            while True:
                low = 2 * pos + 1
                if low >= need:
                    break
                if low + 1 < need and scratch[base + low + 1] < scratch[base + low]:
                    low += 1
                if scratch[base + low] >= value:
                    break
                scratch[base + pos] = scratch[base + low]
                pos = low
        scratch[base + pos] = value
    return scratch[base] if filled == need else -np.inf


# -- the searches ------------------------------------------------------------------------------


@kernel_jit(fastmath=DOT_MATH)
def best_first(
    child_ptr: IntArray,
    children: IntArray,
    weight: F32Array,
    bias: F32Array,
    factors: FactorArrays,
    h: F32Array,
    num_leaves: int,
    leaf_rank: IntArray,
    lo: int,
    hi: int,
    banned: BoolArray,
    node_marks: MarkArray,
    min_lp: float,
    heap_lp: F64Array,
    heap_node: IntArray,
    size: int,
    out_ids: IntArray,
    out_lp: F64Array,
    n_out: int,
    k: int,
    expansions: int,
    mass: float,
    stop_at: int,
    buf: F64Array,
) -> tuple[int, int, int, float]:
    """Pop the frontier until ``k`` words are found, it empties, ``stop_at`` expansions are
    done, or the heap arrays are too full for another expansion (the caller grows them).

    Only admissible nodes are ever pushed, so every leaf popped qualifies, and since a child's
    path log-prob never exceeds its parent's, leaves come off in exact descending order.
    ``mass`` is the frontier's total path probability plus a bound on the leaves a wide node
    left below its floor, which together bound the probability of every qualifying word not
    yet popped. An expansion moves a node's probability to its children, so it is kept
    without summing the heap: it only drops by what leaves the frontier, the words popped and
    the children pruned (1.0 for a search that pushed the root).
    Returns ``(size, n_out, expansions, mass)``: only scalars, since boxing arrays back into
    Python costs about a microsecond each.
    """
    room = heap_lp.shape[0] - buf.shape[0] - 1  # keeps space for one expansion + a held node
    # The best child of an expansion is usually the next node to pop: keep it in (node, lp)
    # instead of a push and a pop whenever nothing on the heap beats it.
    node, lp = -1, 0.0
    while n_out < k:
        if node < 0:
            if size == 0:
                break
            node, lp = heap_node[0], heap_lp[0]
            if node >= num_leaves and (expansions >= stop_at or size > room):
                node = -1  # stays on the heap; a leaf on top could still be emitted
                break
            size = heap_pop(heap_lp, heap_node, size)
        if node < num_leaves:
            out_ids[n_out] = node
            out_lp[n_out] = lp
            n_out += 1
            mass -= np.exp(lp)
            node = -1
            continue
        if expansions >= stop_at or size > room:
            break  # the held node goes back on the heap below
        expansions += 1
        index = node - num_leaves
        if size > 0 and heap_node[0] >= num_leaves:
            # The heap's top is the node expanded next unless a child of this one beats it:
            # fetching its row from memory now overlaps this expansion instead of stalling the
            # next one. A one- or two-letter completion at V = 33k expands ~550 nodes across the
            # tree, and the first load of each row was a third of its time; this took ~10 % off
            # its mean and ~20 % off its p99 (benchmarks/kernel_ab.py). Prefetching the
            # children's rows instead lost: the better child is mostly expanded at once.
            top = heap_node[0] - num_leaves
            prefetch_row(weight, child_ptr[top] - top)
        count = child_log_probs(child_ptr, weight, bias, factors, h, index, lp, buf)
        start = child_ptr[index]
        wide = count >= WIDE_NODE
        floor = -np.inf
        if wide and k - n_out < count:
            # Past the heap's sentinel slot, the room kept for an expansion is free scratch.
            floor = leaf_floor(
                children, start, count, buf, num_leaves, leaf_rank, lo, hi, banned,
                node_marks, min_lp, k - n_out, heap_lp, size + 1,
            )  # fmt: skip
        # A wide node's children that leave the frontier are most of them: their mass is the
        # node's minus the kept children's, which costs an exp per kept child, not per child.
        parent_lp, kept, below_floor = lp, 0.0, 0
        node = -1
        for j in range(count):
            child = children[start + j]
            if child < num_leaves and buf[j] < floor:
                below_floor += 1
                continue
            if not admissible(
                child, buf[j], num_leaves, leaf_rank, lo, hi, banned, node_marks, min_lp
            ):
                if not wide:
                    mass -= exp_nonpositive(buf[j])
                continue
            if wide:
                kept += exp_nonpositive(buf[j])
            if node < 0:
                node, lp = child, buf[j]
                continue
            # Hold the better of the two and push the other, by selects rather than a branch
            # on which child is more probable (unpredictable too: ~1 % of a search).
            better = buf[j] > lp
            push_lp, push_node = (lp, node) if better else (buf[j], child)
            node, lp = (child, buf[j]) if better else (node, lp)
            size = heap_push(heap_lp, heap_node, size, push_lp, push_node)
        if wide:
            # Leaves below the floor cannot be among the k words, but neither are they returned,
            # and a search stopped early may return words less probable than they are: keep a
            # bound on their mass (each is below the floor; together at most the node's mass
            # not kept), so ``mass`` bounds every qualifying word not returned.
            left = exp_nonpositive(parent_lp) - kept
            mass += min(below_floor * np.exp(floor), max(left, 0.0)) - left
        if node >= 0 and size > 0 and heap_lp[0] > lp:
            # The heap's top beats the held node: swap them in one sift instead of a push
            # and a pop (this alone was ~9 % of a top-10 search at V = 33k).
            next_node, next_lp = heap_node[0], heap_lp[0]
            heap_replace_top(heap_lp, heap_node, size, lp, node)
            node, lp = next_node, next_lp
    if node >= 0:  # stopped while holding a node: the frontier includes it
        size = heap_push(heap_lp, heap_node, size, lp, node)
    return size, n_out, expansions, max(mass, 0.0)  # rounding may leave -1e-17 for 0


@kernel_jit(fastmath=DOT_MATH)
def greedy_fill(
    child_ptr: IntArray,
    children: IntArray,
    weight: F32Array,
    bias: F32Array,
    factors: FactorArrays,
    h: F32Array,
    num_leaves: int,
    leaf_rank: IntArray,
    lo: int,
    hi: int,
    banned: BoolArray,
    node_marks: MarkArray,
    min_lp: float,
    heap_lp: F64Array,
    heap_node: IntArray,
    size: int,
    out_ids: IntArray,
    out_lp: F64Array,
    n_out: int,
    k: int,
    expansions: int,
    budget: int,
    buf: F64Array,
) -> tuple[int, int]:
    """After an early stop, fill the free slots by greedy descents from the best frontier nodes.

    Each descent follows the most probable admissible child down to a leaf. Descents start
    from distinct frontier nodes, so the words are distinct. A descent can dead-end (a subtree
    whose words are all banned), so the descents share a ``budget`` of expansions (the caller
    gives free slots * tree depth: one full descent per slot) and may leave slots empty when
    it runs out. The filled words are sorted by probability among themselves (they all rank
    below the exact ones). Returns ``(n_out, expansions)``.
    """
    first_fill = n_out
    limit = expansions + budget
    while size > 0 and n_out < k and expansions < limit:
        node = heap_node[0]
        lp = heap_lp[0]
        size = heap_pop(heap_lp, heap_node, size)
        while node >= num_leaves and expansions < limit:
            expansions += 1
            index = node - num_leaves
            count = child_log_probs(child_ptr, weight, bias, factors, h, index, lp, buf)
            start = child_ptr[index]
            best = -1
            for j in range(count):
                child = children[start + j]
                if (best < 0 or buf[j] > lp) and admissible(
                    child, buf[j], num_leaves, leaf_rank, lo, hi, banned, node_marks, min_lp
                ):
                    best = child
                    lp = buf[j]
            node = best
        if 0 <= node < num_leaves:  # not a dead end, nor cut short by the budget
            out_ids[n_out] = node
            out_lp[n_out] = lp
            n_out += 1
    for a in range(first_fill + 1, n_out):  # insertion sort: at most k entries
        b = a
        while b > first_fill and out_lp[b - 1] < out_lp[b]:
            out_lp[b - 1], out_lp[b] = out_lp[b], out_lp[b - 1]
            out_ids[b - 1], out_ids[b] = out_ids[b], out_ids[b - 1]
            b -= 1
    return n_out, expansions


@kernel_jit()
def mark_ancestors(
    order: IntArray,
    lo: int,
    hi: int,
    parent: IntArray,
    banned: BoolArray,
    node_marks: MarkArray,
    value: bool,
) -> None:
    """Set (``value``) or clear the marks of the leaves ``order[lo:hi]`` and all their ancestors;
    banned leaves are left unmarked.

    A walk stops at the first node already in the wanted state, so the cost is the number of
    nodes changed; clearing a prefix's marks this way undoes exactly what marking it did.
    """
    for r in range(lo, hi):
        node = order[r]
        if value and banned.shape[0] > 0 and banned[node]:
            continue
        while node >= 0 and is_marked(node_marks, node) != value:
            node_marks[node >> 6] ^= np.uint64(1) << np.uint64(node & 63)
            node = parent[node]


@kernel_jit(fastmath=DOT_MATH)
def path_log_probs(
    child_ptr: IntArray,
    parent: IntArray,
    node_edge: IntArray,
    weight: F32Array,
    bias: F32Array,
    factors: FactorArrays,
    h: F32Array,
    num_leaves: int,
    ids: IntArray,
    buf: F64Array,
    out: F64Array,
) -> None:
    """``out[n] = log P(ids[n] | h)``: the branch log-probs on the leaf's path, leaf upwards."""
    for n in range(ids.shape[0]):
        node = ids[n]
        total = 0.0
        while parent[node] >= 0:
            index = parent[node] - num_leaves
            child_log_probs(child_ptr, weight, bias, factors, h, index, 0.0, buf)
            total += buf[node_edge[node] - child_ptr[index]]
            node = parent[node]
        out[n] = total


@kernel_jit(fastmath=DOT_MATH)
def start_search(
    child_ptr: IntArray,
    children: IntArray,
    weight: F32Array,
    bias: F32Array,
    factors: FactorArrays,
    h: F32Array,
    num_leaves: int,
    leaf_rank: IntArray,
    lo: int,
    hi: int,
    banned: BoolArray,
    node_marks: MarkArray,
    min_lp: float,
    heap_lp: F64Array,
    heap_node: IntArray,
    out_ids: IntArray,
    out_lp: F64Array,
    k: int,
    stop_at: int,
    buf: F64Array,
) -> tuple[int, int, int, float]:
    """Push the root if it can yield a qualifying word and run :func:`best_first`."""
    root = child_ptr.shape[0] - 2 + num_leaves
    size, mass = 0, 0.0
    if k > 0 and min_lp <= 0.0 and (node_marks.shape[0] == 0 or is_marked(node_marks, root)):
        heap_lp[0], heap_node[0], size, mass = 0.0, root, 1, 1.0
    return best_first(
        child_ptr, children, weight, bias, factors, h, num_leaves, leaf_rank, lo, hi, banned,
        node_marks, min_lp, heap_lp, heap_node, size, out_ids, out_lp, 0, k, 0, mass, stop_at,
        buf,
    )  # fmt: skip
