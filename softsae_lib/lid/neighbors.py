"""Exact k-nearest neighbours in Euclidean space, blocked torch matmuls, certified against cancellation.

``knn(x, k)`` returns, for each of the N rows of ``x`` (N, D), the distances (N, K) float64 and
indices (N, K) long of its K nearest *other* rows, sorted ascending; ``knn(q, k, reference=r)``
searches the rows of ``r`` for each row of ``q`` (held-out points; no self-exclusion).

Algorithm
---------
1. Centre the data on the reference mean (accumulated in float64, subtracted in the working dtype:
   float32 for float32/16 inputs, float64 for float64). Distances are translation invariant and
   centring shrinks the norms that drive the cancellation error of step 2.
2. Candidate selection with the expanded form d̃² = ‖a‖² + ‖b‖² − 2 a·b, one matmul per block of
   ``block_size`` rows against the reference (a tile of at most 2²⁶ elements; the block shrinks for
   very large N). Each row keeps a pool of the M = K + ``extra`` smallest d̃² seen (``extra``
   = 8 by default). In self mode the symmetry d(i, j) = d(j, i) halves the flops: the pools start
   from each block's diagonal tile, then the stripe of block I against all later rows is multiplied
   once and feeds both the pools of block I (along rows) and of the later rows (along columns);
   only entries below a row's current M-th value are merged (a comparison, not a top-k).
3. Exact re-ranking: the K best candidates' distances are recomputed as direct difference norms
   ‖a − b‖ in float64 (no cancellation; exact differences for float32 inputs) and sorted.
4. Certification: the error of d̃² is at most E = (D + 16)·u·(‖a‖ + ‖b‖)² (u the unit round-off of
   the matmul: 2⁻²⁴ for float32 with ``torch.get_float32_matmul_precision() == "highest"``, 2⁻¹¹
   / 2⁻⁸ for the TF32 / bf16 settings, 2⁻⁵³ for float64; ‖·‖ of the centred data, the bound uses
   the largest reference norm). A row is certified when its (K+1)-th smallest d̃² − E ≥ the largest
   exact d² of its K selected points: no other point can then be closer. Otherwise all M candidates
   are re-ranked exactly and certified with the M-th d̃²; rows that still fail
   (tiny separations far from the data mean, where the expanded form loses every digit) are redone:
   their d̃² row is recomputed and *all* points with d̃² ≤ d²_K + E are re-ranked exactly, which
   provably contains the true K nearest. The result is therefore exact (up to the float64
   rounding of step 3) for any data, and as fast as the plain expanded form when cancellation is
   harmless.

Cost: N²D float32 multiply-adds (half of the full Gram matrix) plus O(N·K·D) for step 3; memory:
a working-dtype copy of the data, one tile, and (N, M) pools. Ties (equal distances) are broken
arbitrarily.

Why torch matmul blocks rather than faiss: one compiled dependency less (faiss ships separate CPU
and GPU builds), the very same code runs on CPU and CUDA (the device of the input), and it is exact:
faiss's ``IndexFlatL2`` ranks by the same expanded-form float32 distances without re-ranking or
certification, so its small distances are destroyed by cancellation. Brute force is the standard
exact method at the dimensions of this study (tree indices degrade for D ≳ 20), and approximate
indices (IVF, HNSW) would change the local-ID estimates.

Duplicates
----------
Identical points have distance 0, which makes ln(T_K/T_j) infinite in the MLE and T2/T1 undefined in
TwoNN. ``duplicates`` decides what happens when a zero distance is found:

- ``"error"`` (default): raise ``ValueError`` naming how many points / zero-distance pairs.
- ``"warn"``: keep the zero distances, warn with the counts.
- ``"exclude"``: each point's neighbours are the K nearest points at *positive* distance (copies of
  the point itself are skipped; copies of a neighbour count separately), warn with the counts.
- ``"dedupe"``: neighbours are searched among the distinct points only (``deduplicate``); a group of
  copies is represented by its first occurrence, and copies get identical rows. Warns with the counts.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

from softsae_lib.lid.exact import _exact_sq, _unit_roundoff
from softsae_lib.lid.low_rank import choose_rank, knn_low_rank, low_rank_basis

Duplicates = Literal["error", "warn", "exclude", "dedupe"]
Method = Literal["auto", "brute"] | int
_DUPLICATES = ("error", "warn", "exclude", "dedupe")
_TILE_ELEMS = 1 << 26  # upper bound on the elements of one distance tile


def _check(x: Tensor, name: str) -> Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.float32)
    elif x.dtype in (torch.float16, torch.bfloat16):
        x = x.to(torch.float32)
    # A sum is finite when every entry is; only when it is not (NaN/inf, or finite values whose
    # sum overflows) is the elementwise check paid for (110 ms vs 7 ms at 20000 x 768).
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return x


def deduplicate(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Distinct rows of ``x``.

    Args:
        x: (N, D) tensor.
    Returns:
        ``(x_unique, inverse, n_removed)``: x_unique (U, D) the distinct rows in lexicographic order
        (as ``torch.unique(dim=0)``), inverse (N,) long with ``x == x_unique[inverse]``, and
        n_removed = N − U, the number of redundant copies.
    """
    x = _check(x, "x")
    xu, inv = torch.unique(x, dim=0, return_inverse=True)
    return xu, inv, x.shape[0] - xu.shape[0]


class _Searcher:
    """Shared state of one exact search of the rows of ``q`` among the rows of ``r``."""

    def __init__(self, q: Tensor, r: Tensor, k: int, exclude_self: bool, extra: int) -> None:
        self.q, self.r, self.k, self.exclude_self = q, r, k, exclude_self
        self.avail = r.shape[0] - int(exclude_self)
        if not 1 <= k <= self.avail:
            raise ValueError(f"k={k} must be in [1, {self.avail}] (number of available neighbours)")
        self.m = min(k + max(extra, 1), self.avail)  # ≥ K + 1 candidates unless all points are
        self.work = torch.float64 if q.dtype == torch.float64 else torch.float32
        mean = r.mean(0, dtype=torch.float64)
        self.rc, rn64 = self._centre(r, mean)
        self.qc, qn64 = (self.rc, rn64) if exclude_self else self._centre(q, mean)
        self.rn = rn64.to(self.work)
        self.qn64 = qn64
        coef = (q.shape[1] + 16) * _unit_roundoff(self.work) * 1.01
        self.bound = coef * (qn64.sqrt() + rn64.max().sqrt()) ** 2  # (Nq,) error bound on d̃²
        self.dist = torch.empty(q.shape[0], k, dtype=torch.float64, device=q.device)
        self.idx = torch.empty(q.shape[0], k, dtype=torch.long, device=q.device)

    def _centre(self, x: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
        """x − mean in the working dtype (its rounding is covered by the error bound) and its squared
        row norms in float64."""
        out = x.to(self.work) - mean.to(self.work)
        return out, torch.linalg.vector_norm(out, dim=1, dtype=torch.float64).square_()

    def approx_rows(self, rows: Tensor) -> Tensor:
        """d̃² − ‖q‖² of the given query rows against every reference row, self excluded. (n, Nr)."""
        d2 = torch.addmm(self.rn, self.qc[rows], self.rc.T, beta=1, alpha=-2)
        if self.exclude_self:
            d2[torch.arange(len(rows), device=d2.device), rows] = math.inf
        return d2

    def finish(self, rows: Tensor, approx: Tensor, cand: Tensor) -> None:
        """Exact re-ranking + certification of the candidates (n, M) of the query rows ``rows``.

        ``approx`` holds the candidates' d̃² (any dtype), sorted ascending along dim 1. Every point
        outside the candidates has d̃² ≥ approx[:, -1].
        """
        k, m = self.k, cand.shape[1]
        approx = approx.to(torch.float64)
        if m == self.avail:  # every point is a candidate
            ex, order = _exact_sq(self.q, self.r, rows, cand).sort(dim=1, stable=True)
            self.dist[rows], self.idx[rows] = ex[:, :k].sqrt(), cand.gather(1, order)[:, :k]
            return
        bound = self.bound[rows]
        ex = _exact_sq(self.q, self.r, rows, cand[:, :k])
        # the K smallest by d̃² are the exact K nearest if no other point can be closer:
        # every other j has d² ≥ d̃²_j − E ≥ approx[:, k] − E.
        bad = (approx[:, k] - bound < ex.amax(1)).nonzero().squeeze(1)
        ex, order = ex.sort(dim=1, stable=True)
        idx = cand[:, :k].gather(1, order)
        if bad.numel():
            ex_m, order_m = _exact_sq(self.q, self.r, rows[bad], cand[bad]).sort(dim=1, stable=True)
            ex[bad], idx[bad] = ex_m[:, :k], cand[bad].gather(1, order_m)[:, :k]
            worse = approx[bad, -1] - bound[bad] < ex_m[:, k - 1]
            if bool(worse.any()):
                b2 = bad[worse]
                ex[b2], idx[b2] = self._redo(rows[b2], ex_m[worse, k - 1] + bound[b2])
        self.dist[rows], self.idx[rows] = ex.sqrt(), idx

    def _redo(self, rows: Tensor, thresh: Tensor) -> tuple[Tensor, Tensor]:
        """Rows whose selection is not certified: re-rank every point with d̃² ≤ thresh exactly."""
        ex_out = torch.empty(len(rows), self.k, dtype=torch.float64, device=rows.device)
        cand_out = torch.empty(len(rows), self.k, dtype=torch.long, device=rows.device)
        step = max(1, _TILE_ELEMS // max(1, self.r.shape[0]))
        for s in range(0, len(rows), step):
            rr = rows[s : s + step]
            d2 = self.approx_rows(rr)
            over = (d2.to(torch.float64) + self.qn64[rr, None]) <= thresh[s : s + step, None]
            mm = min(self.avail, max(self.m, int(over.sum(1).max())))
            cand = d2.topk(mm, dim=1, largest=False, sorted=False).indices
            ex, order = _exact_sq(self.q, self.r, rr, cand).sort(dim=1, stable=True)
            ex_out[s : s + step] = ex[:, : self.k]
            cand_out[s : s + step] = cand.gather(1, order)[:, : self.k]
        return ex_out, cand_out

    def run_reference(self, block_size: int) -> None:
        nq, nr = self.q.shape[0], self.r.shape[0]
        step = max(1, min(block_size, _TILE_ELEMS // max(1, nr)))
        for s in range(0, nq, step):
            rows = torch.arange(s, min(nq, s + step), device=self.q.device)
            vals, cand = self.approx_rows(rows).topk(self.m, dim=1, largest=False, sorted=True)
            self.finish(rows, vals.to(torch.float64) + self.qn64[rows, None], cand)

    def run_self(self, block_size: int) -> None:
        """Symmetric search (module docstring, step 2): diagonal tiles, then one stripe per row block."""
        n, m, dev = self.q.shape[0], self.m, self.q.device
        b = max(1, min(block_size, _TILE_ELEMS // n))
        starts = list(range(0, n, b))
        self.pool_v = torch.full((n, m), math.inf, dtype=self.work, device=dev)
        self.pool_i = torch.zeros((n, m), dtype=torch.long, device=dev)
        for s in starts:
            e = min(n, s + b)
            tile = torch.addmm(self.rn[s:e], self.rc[s:e], self.rc[s:e].T, beta=1, alpha=-2)
            tile.add_(self.rn[s:e, None]).diagonal().fill_(math.inf)
            v, i = tile.topk(min(m, e - s), dim=1, largest=False, sorted=False)
            self.pool_v[s:e, : v.shape[1]], self.pool_i[s:e, : v.shape[1]] = v, i + s
        self.tau = self.pool_v.amax(1)
        buf = torch.empty(b * n, dtype=self.work, device=dev)  # reused: no page faults per stripe
        for s in starts:
            e = min(n, s + b)
            if e == n:
                break
            stripe = buf[: (e - s) * (n - e)].view(e - s, n - e)
            torch.addmm(self.rn[e:], self.rc[s:e], self.rc[e:].T, beta=1, alpha=-2, out=stripe)
            stripe.add_(self.rn[s:e, None])  # full d̃² between rows s:e and e:n
            self._merge(s, stripe, e)
            self._merge(e, stripe, s, transposed=True)
        for s in starts:
            e = min(n, s + b)
            v, j = self.pool_v[s:e].sort(dim=1)
            self.finish(torch.arange(s, e, device=dev), v, self.pool_i[s:e].gather(1, j))
        del self.pool_v, self.pool_i, self.tau

    def _merge(self, s: int, tile: Tensor, src0: int, transposed: bool = False) -> None:
        """Merge the entries of ``tile`` below τ into the pools of the points s, s+1, … (its rows, or its
        columns if ``transposed``; the candidates src0, src0+1, … are the other axis). Few entries pass
        when τ is tight (the usual case) and are gathered sparsely; else a dense top-k per point."""
        dim = 0 if transposed else 1
        nt, ns = tile.shape[1 - dim], tile.shape[dim]
        tau = self.tau[s : s + nt]
        mask = tile < (tau[None, :] if transposed else tau[:, None])
        total = int(torch.count_nonzero(mask))
        if total == 0:
            return
        if total > 4 * self.m * nt:
            pad_v, pad_i = tile.topk(min(self.m, ns), dim=dim, largest=False, sorted=False)
            if transposed:
                pad_v, pad_i = pad_v.T, pad_i.T
            tgt_rows = torch.arange(nt, device=tile.device)
        else:
            r, c = mask.nonzero(as_tuple=True)  # lexicographic: grouped by tile row
            vals = tile[r, c]
            tgt, src = (c, r) if transposed else (r, c)
            if transposed:  # group by target
                order = torch.argsort(tgt, stable=True)
                tgt, src, vals = tgt[order], src[order], vals[order]
            cnt = torch.bincount(tgt, minlength=nt)
            tgt_rows = cnt.nonzero().squeeze(1)
            slot = torch.empty_like(cnt)
            slot[tgt_rows] = torch.arange(len(tgt_rows), device=cnt.device)
            pos = torch.arange(total, device=tgt.device) - (cnt.cumsum(0) - cnt)[tgt]
            width = int(cnt.max())
            pad_v = torch.full((len(tgt_rows), width), math.inf, dtype=tile.dtype, device=tile.device)
            pad_i = torch.zeros((len(tgt_rows), width), dtype=torch.long, device=tile.device)
            pad_v[slot[tgt], pos] = vals
            pad_i[slot[tgt], pos] = src
        g = tgt_rows + s
        all_v = torch.cat([self.pool_v[g], pad_v], 1)
        all_i = torch.cat([self.pool_i[g], pad_i + src0], 1)
        v, j = all_v.topk(self.m, dim=1, largest=False, sorted=False)
        self.pool_v[g], self.pool_i[g] = v, all_i.gather(1, j)
        self.tau[g] = v.amax(1)


def _exact_knn(q: Tensor, r: Tensor, k: int, exclude_self: bool, block_size: int, extra: int,
               method: Method = "brute"):
    if exclude_self and method != "brute" and k + 3 <= q.shape[0]:
        chosen = choose_rank(q, k) if method == "auto" else low_rank_basis(q, int(method))
        if chosen is not None:
            def brute(a: Tensor, b: Tensor | None, kk: int, self_: bool):
                return _exact_knn(a, a if b is None else b, kk, self_, block_size, extra)

            return knn_low_rank(q, k, chosen[1], extra, brute)[:2]
    searcher = _Searcher(q, r, k, exclude_self, extra)
    if exclude_self:
        searcher.run_self(block_size)
    else:
        searcher.run_reference(block_size)
    return searcher.dist, searcher.idx


def _groups(inverse: Tensor, n_unique: int) -> tuple[Tensor, Tensor, Tensor]:
    """counts (U,), original indices grouped by unique row (N,), start of each group in that order (U,)."""
    counts = torch.bincount(inverse, minlength=n_unique)
    order = torch.sort(inverse, stable=True).indices
    starts = torch.cumsum(counts, 0) - counts
    return counts, order, starts


def _expand(du: Tensor, iu: Tensor, counts: Tensor, order: Tensor, starts: Tensor) -> tuple[Tensor, Tensor]:
    """Neighbour lists over unique rows → the first K original points, copies counted separately."""
    k = du.shape[1]
    c = counts[iu]
    cum = c.cumsum(1)
    pos = torch.arange(k, device=du.device).expand_as(cum).contiguous()
    slot = torch.searchsorted(cum, pos, right=True)
    within = pos - (cum.gather(1, slot) - c.gather(1, slot))
    return du.gather(1, slot), order[starts[iu.gather(1, slot)] + within]


def _knn_inputs(x: Tensor, reference: Tensor | None, duplicates: Duplicates) -> tuple[Tensor, Tensor, bool]:
    """Checked x (N, D) and reference r (Nr, D; x in self mode) of one dtype, and whether it is self mode."""
    if duplicates not in _DUPLICATES:
        raise ValueError(f"duplicates must be one of {_DUPLICATES}, got {duplicates!r}")
    x = _check(x, "x")
    self_mode = reference is None
    r = x if self_mode else _check(reference, "reference")
    if r.shape[1] != x.shape[1] or r.device != x.device:
        raise ValueError("reference must have the same number of columns and device as x")
    if not self_mode and r.dtype != x.dtype:
        r = r.to(torch.promote_types(r.dtype, x.dtype))
        x = x.to(r.dtype)
    return x, r, self_mode


def _coinciding_queries(x: Tensor, ru: Tensor, k: int, counts: Tensor, n_removed: int, block_size: int,
                        extra: int) -> tuple[Tensor, Tensor, Tensor, str]:
    """Reference mode: each query's K + 1 nearest distinct reference points (one more, to drop a coinciding
    one), du (N, K+1) float64 and iu (N, K+1) long into ``ru`` (U, D), the queries that coincide (N,) bool,
    and the message counting them."""
    if k + 1 > ru.shape[0]:
        raise ValueError(f"k={k}: the reference has only {ru.shape[0]} distinct points")
    du, iu = _exact_knn(x, ru, k + 1, False, block_size, extra)  # at most one zero per row
    zero_rows = du[:, 0] == 0
    msg = (f"knn: {int(zero_rows.sum())} of {x.shape[0]} query points coincide with a reference point "
           f"({int(counts[iu[zero_rows, 0]].sum())} zero-distance query-reference pairs); the reference "
           f"has {n_removed} redundant copies")
    return du, iu, zero_rows, msg


def _resolve_duplicates(x: Tensor, r: Tensor, k: int, self_mode: bool, duplicates: Duplicates,
                        ded: tuple[Tensor, Tensor, int] | None, dist: Tensor | None, idx: Tensor | None,
                        block_size: int, extra: int, method: Method) -> tuple[Tensor, Tensor]:
    """:func:`knn` once zero distances are possible: raise, warn, or search again among distinct points.

    ``ded`` is ``deduplicate(r)`` if already computed; ``dist``, ``idx`` (N, K) the plain search's result
    if it ran, kept by "warn". Returns dist (N, K) float64, idx (N, K) long into x or r. The warnings'
    stacklevel=3 names the line that called :func:`knn`."""
    ru, inv, n_removed = ded if ded is not None else deduplicate(r)
    counts, order, starts = _groups(inv, ru.shape[0])
    if self_mode:
        dup = counts > 1
        msg = (f"knn: {int(counts[dup].sum())} of {x.shape[0]} points have an exact duplicate "
               f"({int((counts * (counts - 1) // 2).sum())} zero-distance pairs, {int(dup.sum())} groups, "
               f"{n_removed} redundant copies)")
    else:
        du, iu, zero_rows, msg = _coinciding_queries(x, ru, k, counts, n_removed, block_size, extra)
    if duplicates == "error":
        raise ValueError(
            msg + ". Zero distances break the ID estimators: pass duplicates='exclude' (neighbours at "
            "positive distance), 'dedupe' (neighbours among distinct points), 'warn' (keep zeros), "
            "or call deduplicate() first."
        )
    if duplicates == "warn":
        warnings.warn(msg + "; zero distances kept (duplicates='warn').", stacklevel=3)
        return dist, idx
    if self_mode:
        if k > ru.shape[0] - 1:
            raise ValueError(f"{msg}; k={k} exceeds the {ru.shape[0] - 1} other distinct points")
        du, iu = _exact_knn(ru, ru, k, True, block_size, extra, method)
        du, iu = du[inv], iu[inv]
    else:  # drop the coinciding reference point where there is one, else the (K+1)-th
        cols = torch.arange(k, device=x.device) + zero_rows.long()[:, None]
        du, iu = du.gather(1, cols), iu.gather(1, cols)
    if duplicates == "dedupe":
        dist, idx = du, order[starts[iu]]
        what = "neighbours searched among the distinct points, copies share the first occurrence's index"
    else:
        dist, idx = _expand(du, iu, counts, order, starts)
        what = "zero-distance neighbours skipped, the K nearest points at positive distance returned"
    warnings.warn(f"{msg}; duplicates={duplicates!r}: {what}.", stacklevel=3)
    return dist, idx


def knn(
    x: Tensor,
    k: int,
    *,
    reference: Tensor | None = None,
    duplicates: Duplicates = "error",
    block_size: int = 2048,
    extra: int = 8,
    method: Method = "auto",
) -> tuple[Tensor, Tensor]:
    """Exact K nearest neighbours (Euclidean), memory-bounded; see the module docstring.

    Args:
        x: (N, D) query points (float; computed on ``x.device``).
        k: number of neighbours K.
        reference: optional (Nr, D) points to search (same device). ``None``: search ``x`` itself,
            excluding each point from its own list (by index; its copies are handled by ``duplicates``).
        duplicates: "error" | "warn" | "exclude" | "dedupe", what to do with zero distances (module
            docstring). In reference mode a zero distance means a query coincides with a reference point;
            "exclude" / "dedupe" then skip the coinciding reference point(s), "dedupe" also merges copies
            within the reference set.
        block_size: rows per distance tile (tiles are further capped at 2²⁶ elements).
        extra: candidates selected beyond K before the exact re-ranking.
        method: "brute" (this module's search), an int r (self mode: the exact rank-r filter of
            :mod:`softsae_lib.lid.low_rank`), or "auto" (the filter when the PCA spectrum makes it
            pay, :func:`~softsae_lib.lid.low_rank.choose_rank`; else brute). Results are exact either way.
    Returns:
        ``(dist, idx)``: dist (N, K) float64 sorted ascending, idx (N, K) long into ``x`` (or ``reference``).
    """
    x, r, self_mode = _knn_inputs(x, reference, duplicates)
    ded = deduplicate(r) if duplicates == "dedupe" else None
    dist = idx = None
    if ded is None or ded[2] == 0:  # plain search; duplicates only matter if a zero distance shows up
        dist, idx = _exact_knn(x, r, k, self_mode, block_size, extra, method)
        if not bool((dist[:, 0] == 0).any()):
            return dist, idx
    return _resolve_duplicates(x, r, k, self_mode, duplicates, ded, dist, idx, block_size, extra, method)
