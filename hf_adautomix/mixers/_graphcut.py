"""The multi-label grid graph cut behind PuzzleMix: gco-wrapper when installed (the authors' solver), else our own
α-β swap, each move an exact s-t min-cut by `scipy.sparse.csgraph.maximum_flow`.

Our swap solver mirrors GCO's (all-0 start, GCO's pair order, free sites keep α) and returned gco's exact labelling
on every problem compared (300 random grids; the authors' full pipeline on 320 batches), ~15x slower.
"""

from __future__ import annotations


def _import_gco():
    try:
        import gco  # gco-wrapper; note: it sets numpy.int/float/bool aliases on import (numpy >= 1.24 removed them)

        return gco
    except ImportError:
        return None


def grid_energy(labels, unary, pairwise, cost_v, cost_h) -> int:
    """Energy Σ_p D_p(l_p) + Σ_(p,q) w_pq V(l_p, l_q) of a labelling of an (h, w) grid (gco's `cut_grid_graph` model).

    Args:
        labels: (h, w) int labels; unary: (h, w, L); pairwise: (L, L); cost_v: (h−1, w) weights of (i, j)–(i+1, j);
            cost_h: (h, w−1) weights of (i, j)–(i, j+1). numpy arrays.
    """
    import numpy as np

    labels = np.asarray(labels)
    u = np.take_along_axis(unary, labels[..., None], axis=-1).astype(np.int64).sum()
    v = (cost_v.astype(np.int64) * pairwise[labels[:-1, :], labels[1:, :]]).sum()
    h = (cost_h.astype(np.int64) * pairwise[labels[:, :-1], labels[:, 1:]]).sum()
    return int(u + v + h)


def alpha_beta_swap(unary, pairwise, cost_v, cost_h, max_iter: int = 100):
    """Multi-label grid graph cut by α-β swap (Boykov, Veksler & Zabih 2001), each move an exact s-t min-cut.

    Our own, so PuzzleMix runs without gco-wrapper (a C++ build). It mirrors GCO's `swap`: all sites start at label
    0; one sweep visits the pairs (a, b), a < b, in GCO's order (a ascending, b descending); each move's min-cut is
    applied, with sites that are free in the residual graph keeping label a (GCO's default segment); sweeps repeat
    while the energy decreases. Integer energies (numpy arrays, shapes as in `grid_energy`); returns (h, w) labels.
    """
    import numpy as np
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, maximum_flow

    height, width, n_labels = unary.shape
    n = height * width
    d = unary.reshape(n, n_labels).astype(np.int64)
    idx = np.arange(n).reshape(height, width)
    e_from = np.concatenate([idx[:-1, :].ravel(), idx[:, :-1].ravel()])
    e_to = np.concatenate([idx[1:, :].ravel(), idx[:, 1:].ravel()])
    e_w = np.concatenate([cost_v.ravel(), cost_h.ravel()]).astype(np.int64)
    pairwise = np.asarray(pairwise, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    pairs = [(a, b) for a in range(n_labels) for b in range(n_labels - 1, -1, -1) if a < b]

    def energy(lab):
        return int(d[np.arange(n), lab].sum() + (e_w * pairwise[lab[e_from], lab[e_to]]).sum())

    def swap_move(a, b):
        in_set = (labels == a) | (labels == b)
        nodes = np.flatnonzero(in_set)
        if nodes.size == 0:
            return
        # cost of each active site taking a or b, incl. its edges to fixed neighbours outside the set
        cost_a, cost_b = d[nodes, a].copy(), d[nodes, b].copy()
        local = np.full(n, -1, dtype=np.int64)
        local[nodes] = np.arange(nodes.size)
        for src, dst in ((e_from, e_to), (e_to, e_from)):
            out = in_set[src] & ~in_set[dst]
            np.add.at(cost_a, local[src[out]], e_w[out] * pairwise[a, labels[dst[out]]])
            np.add.at(cost_b, local[src[out]], e_w[out] * pairwise[b, labels[dst[out]]])
        inner = in_set[e_from] & in_set[e_to]
        m = nodes.size
        s, t = m, m + 1
        base = np.minimum(cost_a, cost_b)
        # source side = label a: cutting s→p (p takes b) costs cost_b, cutting p→t (p takes a) costs cost_a
        w_in = e_w[inner] * pairwise[a, b]
        rows = np.concatenate([np.full(m, s), np.arange(m), local[e_from[inner]], local[e_to[inner]]])
        cols = np.concatenate([np.arange(m), np.full(m, t), local[e_to[inner]], local[e_from[inner]]])
        caps = np.concatenate([cost_b - base, cost_a - base, w_in, w_in])
        keep = caps > 0
        graph = csr_matrix((caps[keep], (rows[keep], cols[keep])), shape=(m + 2, m + 2), dtype=np.int64)
        graph.sum_duplicates()
        if graph.data.size and graph.data.max() >= 2**31:
            raise OverflowError("graph-cut capacities overflow int32.")
        graph = graph.astype(np.int32)
        flow = maximum_flow(graph, s, t).flow
        residual = (graph - flow).tocsr()
        residual.data[residual.data < 0] = 0
        residual.eliminate_zeros()
        # sites that can still reach the sink take b; the rest (source tree and free sites) take a
        to_sink = np.zeros(m + 2, dtype=bool)
        to_sink[breadth_first_order(residual.T.tocsr(), t, directed=True, return_predecessors=False)] = True
        labels[nodes] = np.where(to_sink[:m], b, a)

    new = energy(labels)
    for _ in range(max_iter):
        old = new
        for a, b in pairs:
            swap_move(a, b)
        new = energy(labels)
        if new >= old:
            break
    return labels.reshape(height, width)
