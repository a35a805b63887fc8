"""faiss indexes for similar-cover search: flat vs IVF vs HNSW on synthetic 1 280-d vectors.

    python -m benchmarks.faiss_index                      # 100 000 vectors
    python -m benchmarks.faiss_index --sizes 100000 1000000
    python -m benchmarks.faiss_index --smoke

Vectors imitate image embeddings: Gaussian clusters on a 64-d subspace projected to 1 280-d plus a little noise,
L2-normalised; queries come from the same distribution. Recall@10 is measured against the exact flat index."""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks._timing import machine, report
from covers.knn.faiss_index import INDEX_KINDS, build_index, search


def clustered_vectors(n: int, dim: int, clusters: int, rng: np.random.Generator, latent: int = 64) -> np.ndarray:
    """``n`` float32 vectors like image embeddings: clusters on a ``latent``-dimensional subspace, projected to
    ``dim`` with a little isotropic noise (built in chunks to bound memory). The same ``rng`` seed gives the same
    subspace and centres, so queries drawn with another generator share them."""
    basis_rng = np.random.default_rng(12345)
    projection = basis_rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)
    centres = basis_rng.standard_normal((clusters, latent), dtype=np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        z = centres[rng.integers(0, clusters, m)] + 0.5 * rng.standard_normal((m, latent), dtype=np.float32)
        out[i : i + m] = z @ projection + 0.05 * rng.standard_normal((m, dim), dtype=np.float32)
    return out


def run(
    sizes=(100_000,),
    dim: int = 1280,
    n_queries: int = 1000,
    k: int = 10,
    smoke: bool = False,
    kinds: tuple[str, ...] = INDEX_KINDS,
    nlist: int | None = None,
) -> dict:
    """Build time, queries/s and recall@k per index kind and size (flat is always built: it is the reference)."""
    if smoke:
        sizes, dim, n_queries = (2_000,), 64, 50
    rng = np.random.default_rng(0)
    rows = []
    for n in sizes:
        data = clustered_vectors(n, dim, max(10, n // 1000), rng)
        queries = clustered_vectors(n_queries, dim, max(10, n // 1000), np.random.default_rng(1))
        exact = None
        for kind in ["flat", *(x for x in kinds if x != "flat")]:
            t0 = time.perf_counter()
            index = build_index(data, kind, nlist=nlist)
            build = time.perf_counter() - t0
            t0 = time.perf_counter()
            _, ids = search(index, queries, k)
            qps = n_queries / (time.perf_counter() - t0)
            if kind == "flat":
                exact = ids
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, exact, strict=True)]))
            rows.append({"vectors": n, "index": kind, "build_s": build, "queries_per_s": qps, f"recall@{k}": recall})
            del index
        del data
    return {"machine": machine(), "dim": dim, "queries": n_queries, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--kinds", nargs="+", default=list(INDEX_KINDS), choices=INDEX_KINDS)
    parser.add_argument("--nlist", type=int, help="IVF lists (default ~4*sqrt(N))")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    result = run(tuple(args.sizes), smoke=args.smoke, kinds=tuple(args.kinds), nlist=args.nlist)
    report(result, args.json)


if __name__ == "__main__":
    main()
