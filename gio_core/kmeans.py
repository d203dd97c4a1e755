"""K-means as matrix products: the numerics of the quantize stage's ``lloyd`` engine.

Lloyd's algorithm spends its time finding each row's nearest centre. Written as
``argmin_c |c|^2 - 2 x.c`` over a block of rows, that is one matrix product (BLAS level 3) per
block, which is what scikit-learn does and what MLlib (one dot product per row and centre, level
1) does not. The functions here are pure NumPy; the Spark stage (:mod:`jobs.stages.quantize`) calls
:func:`block_stats` inside its tasks, adds the blocks' statistics in partition order on the
driver and calls :func:`update`, and :func:`lloyd` runs the same steps in memory (the oracle the
stage is tested against, and the fit for data that fits on one machine).

Start: k-means++ (scikit-learn's :func:`sklearn.cluster.kmeans_plusplus`, seeded) on a sample
of the rows, :func:`seed_centres`. The caller chooses the sample (the stage takes the rows with
the least hash of their ids, so neither the row order nor the layout changes it).

Distances: ``euclidean`` (squared Euclidean, the K-means objective) or ``cosine`` (spherical
K-means: rows and centres on the unit sphere, nearest by the largest dot product, centres the
normalised means).

Stopping: after ``max_iter`` updates or when no centre moved by more than ``tol`` (Euclidean
distance between a centre and its update, MLlib's rule). A centre no row chose keeps its place;
the caller drops clusters left empty.
"""
from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

BLOCK_ROWS = 4096     # rows per block: its sums are added as one, in row order
SCORE_BYTES = 8 << 20   # a block's rows are scored in pieces of at most this many bytes of scores
IN_FLIGHT_BYTES = 1 << 30   # threads are fewer where their blocks' scores would pass this


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:          # not on Linux
        return max(1, os.cpu_count() or 1)


_blas = {"lock": threading.Lock(), "users": 0, "controller": None, "limit": None}


@contextmanager
def _one_blas_thread():
    """The BLAS on one thread while any caller is inside (the limit is the process's: the
    first caller in sets it, the last one out restores what was there)."""
    with _blas["lock"]:
        if _blas["users"] == 0:
            if _blas["controller"] is None:
                from threadpoolctl import ThreadpoolController
                _blas["controller"] = ThreadpoolController()
            _blas["limit"] = _blas["controller"].limit(limits=1, user_api="blas")
        _blas["users"] += 1
    try:
        yield
    finally:
        with _blas["lock"]:
            _blas["users"] -= 1
            if _blas["users"] == 0:
                _blas["limit"].restore_original_limits()
                _blas["limit"] = None


class Stats(NamedTuple):
    """One block's (or a sum of blocks') contribution to an update."""
    sums: np.ndarray      # [k, d] float64: the sum of the rows nearest each centre
    counts: np.ndarray    # [k] int64: how many rows chose each centre
    inertia: float        # the sum of the rows' squared distances to their centre

    def __add__(self, other: "Stats") -> "Stats":      # type: ignore[override]
        return Stats(self.sums + other.sums, self.counts + other.counts,
                     self.inertia + other.inertia)


def empty_stats(k: int, dim: int) -> Stats:
    return Stats(np.zeros((k, dim)), np.zeros(k, np.int64), 0.0)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (all-zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1).astype(x.dtype)


def _block(block: np.ndarray, c: np.ndarray, c_sq: np.ndarray, c64: np.ndarray,
           distance: str, with_sums: bool
           ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
    """One block of :func:`_scan_many`: its rows' nearest centres, squared distances and, when
    ``with_sums``, its rows added by centre: the centres chosen and their sums (float64)."""
    from scipy.sparse import csr_matrix
    n = len(block)
    best = np.empty(n, np.intp)
    picked = np.empty(n, np.float32)         # the chosen centre's score: x.c, or |c|^2 - 2 x.c
    step = score_rows(len(c))
    for lo in range(0, n, step):
        scores = block[lo:lo + step] @ c.T     # the matrix product: [rows, k]
        if distance == "cosine":
            got = np.argmax(scores, axis=1)
        else:
            scores *= -2.0
            scores += c_sq[None, :]
            got = np.argmin(scores, axis=1)
        best[lo:lo + step] = got
        picked[lo:lo + step] = scores[np.arange(len(got)), got]
    rows = block.astype(np.float64)
    if not with_sums:
        diff = rows - c64[best]
        return best, np.einsum("ij,ij->i", diff, diff), None
    picked = picked.astype(np.float64)
    if distance == "cosine":                 # picked = x.c
        picked = c_sq[best] - 2.0 * picked
    d2 = np.maximum(np.einsum("ij,ij->i", block, block) + picked, 0.0)
    # The sums of the centres the block chose (at most its rows), each centre's rows in row order
    chosen, counts = np.unique(best, return_counts=True)
    order = np.argsort(best, kind="stable")
    indptr = np.zeros(len(chosen) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    return best, d2, (chosen, csr_matrix((np.ones(n), order, indptr),
                                         shape=(len(chosen), n)) @ rows)


def score_rows(k: int) -> int:
    """How many of a block's rows are scored at a time against ``k`` centres: a power of two,
    so that their ``rows x k`` float32 scores stay within :data:`SCORE_BYTES`, in cache while
    the nearest centre is chosen (512 rows at k = 4,000; the whole block up to k = 512), at
    most :data:`BLOCK_ROWS`, at least 16. The pieces depend on ``k`` alone, so every caller
    (the driver, a Spark task) cuts a block alike and gets the same result; against scoring
    the whole block at once they may change a score's last bit (a BLAS kernel's order of
    adding can depend on the product's shape)."""
    rows = 16
    while rows * 2 <= BLOCK_ROWS and rows * 2 * k * 4 <= SCORE_BYTES:
        rows *= 2
    return rows


def _scan_many(pieces: Sequence[np.ndarray], centres: np.ndarray, distance: str,
               sums: Sequence[np.ndarray] | None = None, threads: int | None = None
               ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One pass over each of ``pieces``, :data:`BLOCK_ROWS` rows at a time from its first:
    each row's nearest centre, its squared distance to it and, when ``sums`` is given (an
    array per piece, which pieces may share), the piece's rows added into ``sums[i]`` by centre.

    Everything of a block is done while it is in cache: the matrix product, the choice, the
    distance and the block's sums (a sparse one-hot matrix of the block's choices times the
    block, in float64, each centre's rows added in row order), which are then added to its
    piece's sums in block order, pieces in order. Each matrix product runs on one BLAS thread;
    ``threads`` blocks are worked on at once, of any piece (None: :func:`cores`; fewer where
    their scores, float32, :func:`score_rows` rows at a time, would pass
    :data:`IN_FLIGHT_BYTES`). So the result depends only on the pieces and their order, never
    on the threads, here or in the
    BLAS (whose multi-threaded products can differ in the last bit from single-threaded ones;
    this holds for the BLAS libraries threadpoolctl controls: OpenBLAS, MKL, BLIS), and nothing
    of the size of all the rows is allocated but the labels. Without ``sums`` (an assignment) the distance is
    exact, float64 from the row and its centre, since near-copies are told apart by it; with
    them (an iteration, whose distances only add up to the objective) it is read off the
    matrix product, ``|x|^2 + |c|^2 - 2 x.c`` in float32 (about 1e-7 of a unit row's scale).
    """
    xs = [np.asarray(x, np.float32) for x in pieces]
    c = np.asarray(centres, np.float32)
    c64 = c.astype(np.float64)
    c_sq = np.einsum("ij,ij->i", c, c)
    out = [(np.empty(len(x), np.int32), np.empty(len(x), np.float64)) for x in xs]
    blocks = [(i, lo) for i, x in enumerate(xs) for lo in range(0, len(x), BLOCK_ROWS)]
    per_block = 2 * score_rows(len(c)) * len(c) * 4 + len(c) * c.shape[1] * 8
    threads = max(1, min(cores() if threads is None else threads,
                         IN_FLIGHT_BYTES // max(per_block, 1)))

    def work(block: tuple[int, int]):
        i, lo = block
        return _block(xs[i][lo:lo + BLOCK_ROWS], c, c_sq, c64, distance, sums is not None)

    def take(block: tuple[int, int], got) -> None:
        (i, lo), (best, dist, part) = block, got
        out[i][0][lo:lo + len(best)] = best
        out[i][1][lo:lo + len(best)] = dist
        if sums is not None:
            chosen, added = part               # in block order, whoever computed it
            sums[i][chosen] += added

    with _one_blas_thread():
        if threads <= 1 or len(blocks) <= 1:
            for block in blocks:
                take(block, work(block))
        else:
            from collections import deque
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(threads) as pool:
                # 2 blocks a thread in flight (bounded memory for the blocks' sums), taken in order
                waiting: deque = deque()
                for block in blocks:
                    waiting.append((block, pool.submit(work, block)))
                    if len(waiting) >= 2 * threads:
                        done, future = waiting.popleft()
                        take(done, future.result())
                while waiting:
                    done, future = waiting.popleft()
                    take(done, future.result())
    return out


def _scan(x: np.ndarray, centres: np.ndarray, distance: str, sums: np.ndarray | None = None,
          threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_scan_many` of one piece of rows."""
    return _scan_many([x], centres, distance, None if sums is None else [sums], threads)[0]


def parts_stats(parts: Sequence[np.ndarray], centres: np.ndarray, distance: str = "euclidean",
                threads: int | None = None) -> list[Stats]:
    """:func:`stream_stats` of each of ``parts`` (to the last bit), their blocks worked on
    ``threads`` at a time."""
    k, dim = centres.shape
    sums = [np.zeros((k, dim)) for _ in parts]
    scanned = _scan_many(parts, centres, distance, sums, threads)
    return [Stats(total, np.bincount(labels, minlength=k).astype(np.int64), float(d2.sum()))
            for total, (labels, d2) in zip(sums, scanned, strict=True)]


def parts_nearest(parts: Sequence[np.ndarray], centres: np.ndarray, distance: str = "euclidean",
                  threads: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`nearest` of each of ``parts``, their blocks worked on ``threads`` at a time."""
    return _scan_many(parts, centres, distance, None, threads)


def nearest(x: np.ndarray, centres: np.ndarray, distance: str = "euclidean",
            threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's nearest centre and its squared Euclidean distance to it.

    ``x`` [n, d] and ``centres`` [k, d], float32; for ``cosine`` both already unit-length.
    ``threads``: blocks worked on at once (None: every core; the result is the same for any
    number).
    Returns ``(labels int32 [n], d2 float64 [n])``.
    """
    return _scan(x, centres, distance, threads=threads)


def block_stats(x: np.ndarray, centres: np.ndarray, distance: str = "euclidean") -> Stats:
    """The sums, counts and inertia of one block of rows under the given centres."""
    return stream_stats([x], centres, distance)


def _aligned(blocks: Iterable[np.ndarray], seen=None) -> Iterator[np.ndarray]:
    """The rows of ``blocks`` end to end, in pieces that start every :data:`BLOCK_ROWS` rows
    from the first (all whole blocks but the last), whatever the blocks' sizes. ``seen`` is
    called with each block's length as the block is taken."""
    pending: list[np.ndarray] = []
    held = 0
    for block in blocks:
        if seen is not None:
            seen(len(block))
        if len(block) == 0:
            continue
        pending.append(np.asarray(block, np.float32))
        held += len(block)
        if held >= BLOCK_ROWS:
            x = pending[0] if len(pending) == 1 else np.concatenate(pending)
            whole = held - held % BLOCK_ROWS
            yield x[:whole]
            pending, held = ([x[whole:]], held - whole) if held > whole else ([], 0)
    if held:
        yield pending[0] if len(pending) == 1 else np.concatenate(pending)


def stream_stats(blocks: Iterable[np.ndarray], centres: np.ndarray,
                 distance: str = "euclidean") -> Stats:
    """:func:`block_stats` of the rows of ``blocks`` one after another, taken as they come.

    The rows are cut into :data:`BLOCK_ROWS` from the first, whatever the blocks' sizes, so the
    result is that of the blocks put end to end, to the last bit: an Arrow task gets the same
    statistics of its partition however Spark batched it.
    """
    k, dim = centres.shape
    sums = np.zeros((k, dim))
    scanned = [_scan(rows, centres, distance, sums, 1) for rows in _aligned(blocks)]
    labels = np.concatenate([got[0] for got in scanned]) if scanned else np.zeros(0, np.int32)
    inertia = float(np.concatenate([got[1] for got in scanned]).sum()) if scanned else 0.0
    return Stats(sums, np.bincount(labels, minlength=k).astype(np.int64), inertia)


def stream_nearest(blocks: Iterable[np.ndarray], centres: np.ndarray,
                   distance: str = "euclidean") -> Iterator[np.ndarray]:
    """:func:`nearest`'s labels for each of ``blocks`` in turn, cut into :data:`BLOCK_ROWS`
    from the first row as :func:`stream_stats` cuts them: the labels of a partition are the
    same however Spark batched it, and the same as the statistics' (which decide the sizes)."""
    from collections import deque
    sizes: deque = deque()          # blocks taken whose labels are not handed out yet
    done: deque = deque()           # computed labels not yet handed out
    ready = 0

    def hand_out(n: int) -> np.ndarray:
        parts, left = [], n
        while left:
            head = done[0]
            if len(head) <= left:
                parts.append(done.popleft())
                left -= len(head)
            else:
                parts.append(head[:left])
                done[0] = head[left:]
                left = 0
        return np.concatenate(parts) if parts else np.zeros(0, np.int32)

    for rows in _aligned(blocks, sizes.append):
        done.append(_scan(rows, centres, distance, None, 1)[0])
        ready += len(rows)
        while sizes and sizes[0] <= ready:
            ready -= sizes[0]
            yield hand_out(sizes.popleft())
    while sizes:                    # empty blocks at the end
        yield hand_out(sizes.popleft())


def update(centres: np.ndarray, stats: Stats, distance: str = "euclidean"
           ) -> tuple[np.ndarray, float]:
    """New centres from the summed statistics and how far the furthest centre moved."""
    new = np.array(centres, np.float64)
    taken = stats.counts > 0
    new[taken] = stats.sums[taken] / stats.counts[taken, None]
    if distance == "cosine":
        new[taken] = normalise(new[taken])
    new = new.astype(np.float32)
    moved = new.astype(np.float64) - np.asarray(centres, np.float64)
    shift = float(np.sqrt((moved ** 2).sum(axis=1)).max()) if len(new) else 0.0
    return new, shift


def seed_centres(sample: np.ndarray, k: int, seed: int, distance: str = "euclidean"
                 ) -> np.ndarray:
    """k-means++ on ``sample`` (rows in a fixed order), seeded: the starting centres [k, d]."""
    from sklearn.cluster import kmeans_plusplus
    sample = np.asarray(sample, np.float64)      # scikit-learn's float64 path is the faster here
    if k > len(sample):
        raise ValueError(f"k={k} is more than the {len(sample)} sample rows")
    centres, _ = kmeans_plusplus(sample, k, random_state=np.random.RandomState(seed % 2 ** 32))
    centres = centres.astype(np.float32)
    return normalise(centres) if distance == "cosine" else centres


class Fit(NamedTuple):
    centres: np.ndarray    # [k, d] float32
    labels: np.ndarray     # [n] int32: each row's nearest of the final centres
    sizes: np.ndarray      # [k] int64: rows per centre (0: empty)
    inertia: float         # the objective under the final centres
    iterations: int        # updates made


def lloyd(x: np.ndarray, start: np.ndarray, max_iter: int = 20, tol: float = 1e-4,
          distance: str = "euclidean", blocks: int | Sequence[int] = 1,
          normalised: bool = False, threads: int | None = None) -> Fit:
    """Lloyd's iterations in memory from ``start``; the stage's steps on one machine.

    ``blocks``: a number of equal consecutive parts, or the parts' lengths, whose statistics are
    added in order, as the stage adds its partitions'. ``normalised``: for ``cosine``, the rows
    are unit-length already (scaled again they could move by a rounding). ``threads``: blocks
    of rows worked on at once (None: every core); the fit is the same to the last bit for any
    number.
    """
    x = np.asarray(x, np.float32)
    if distance == "cosine" and not normalised:
        x = normalise(x)
    centres = np.asarray(start, np.float32)
    if isinstance(blocks, int):
        lengths = [len(part) for part in np.array_split(np.arange(len(x)), blocks)]
    else:
        if sum(blocks) != len(x):
            raise ValueError(f"blocks of {sum(blocks)} rows for {len(x)} rows")
        lengths = list(blocks)
    ends = np.cumsum([0, *lengths])
    parts = [x[lo:hi] for lo, hi in zip(ends[:-1], ends[1:], strict=True)]    # views, no copy
    iterations = 0
    for _ in range(max_iter):
        stats = empty_stats(*centres.shape)
        for part in parts_stats(parts, centres, distance, threads):     # in the parts' order
            stats = stats + part
        centres, shift = update(centres, stats, distance)
        iterations += 1
        if shift <= tol:
            break
    # Each part labelled on its own, cut into blocks from its first row as its statistics were
    labelled = parts_nearest(parts, centres, distance, threads)
    labels = np.concatenate([got[0] for got in labelled]) if labelled else np.zeros(0, np.int32)
    d2 = np.concatenate([got[1] for got in labelled]) if labelled else np.zeros(0)
    return Fit(centres, labels, np.bincount(labels, minlength=len(centres)).astype(np.int64),
               float(d2.sum()), iterations)
