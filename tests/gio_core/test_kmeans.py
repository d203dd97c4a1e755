"""gio_core.kmeans: Lloyd's steps as matrix products, against scikit-learn's KMeans."""
import numpy as np
import pytest
from sklearn.cluster import KMeans

from gio_core import kmeans as km


def blobs(n=3000, d=24, centres=12, seed=0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d)) * 4
    return (c[rng.integers(0, centres, n)] + rng.normal(size=(n, d))).astype(np.float32)


def test_nearest_and_block_stats_are_the_brute_force_ones():
    x, c = blobs(1000), blobs(37, seed=1)
    d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    labels, dist = km.nearest(x, c)
    assert np.array_equal(labels, d2.argmin(1))
    np.testing.assert_allclose(dist, d2.min(1), rtol=1e-6)
    stats = km.block_stats(x, c)
    onehot = np.eye(len(c))[labels]
    np.testing.assert_allclose(stats.sums, onehot.T @ x.astype(np.float64), rtol=1e-10)
    assert np.array_equal(stats.counts, onehot.sum(0)) and stats.counts.sum() == len(x)
    assert stats.inertia == pytest.approx(d2.min(1).sum(), rel=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_a_block_scored_in_pieces_chooses_the_brute_force_centres(monkeypatch, distance):
    """With many centres a block's rows are scored a piece at a time (the scores in cache):
    the pieces' labels, distances and sums are the brute-force ones, for every row of a block
    whose rows do not divide into pieces evenly."""
    assert (km.score_rows(500), km.score_rows(4000), km.score_rows(10**6)) == (4096, 512, 16)
    monkeypatch.setattr(km, "SCORE_BYTES", 64 * 37 * 4)      # 64 rows at k = 37
    assert km.score_rows(37) == 64
    x, c = blobs(1000), blobs(37, seed=1)
    if distance == "cosine":
        x, c = km.normalise(x), km.normalise(c)
    d2 = ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1)
    labels, dist = km.nearest(x, c, distance)
    assert np.array_equal(labels, d2.argmin(1))
    np.testing.assert_allclose(dist, d2.min(1), rtol=1e-6, atol=1e-9)
    stats = km.block_stats(x, c, distance)
    assert np.array_equal(stats.counts, np.bincount(d2.argmin(1), minlength=len(c)))
    np.testing.assert_allclose(stats.sums, np.eye(len(c))[labels].T @ x.astype(np.float64),
                               rtol=1e-10)
    assert stats.inertia == pytest.approx(d2.min(1).sum(), rel=1e-5)


def test_lloyd_from_the_same_start_follows_sklearns_lloyd():
    x = blobs()
    start = km.seed_centres(x, 12, seed=3)
    ours = km.lloyd(x, start, max_iter=50, tol=0.0, blocks=5)
    ref = KMeans(12, init=start, n_init=1, max_iter=50, tol=0.0, algorithm="lloyd").fit(x)
    assert np.array_equal(ours.labels, ref.labels_)
    np.testing.assert_allclose(ours.centres, ref.cluster_centers_, atol=1e-4)
    assert ours.inertia == pytest.approx(ref.inertia_, rel=1e-4)
    assert ours.sizes.sum() == len(x) and ours.iterations < 50     # converged: nothing moved


def test_seeded_start_is_repeatable_and_the_seed_matters():
    x = blobs(500)
    a, b, c = (km.seed_centres(x, 8, s) for s in (5, 5, 6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert all((x == row).all(1).any() for row in a)              # k-means++ picks rows
    with pytest.raises(ValueError, match="k=600 is more than the 500 sample rows"):
        km.seed_centres(x, 600, 0)


def test_blocks_change_only_the_order_of_the_sums():
    x = blobs(2000)
    start = km.seed_centres(x, 10, 1)
    one, many = km.lloyd(x, start, 10, blocks=1), km.lloyd(x, start, 10, blocks=7)
    assert np.array_equal(one.labels, many.labels)
    np.testing.assert_allclose(one.centres, many.centres, atol=1e-6)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_threads_change_nothing_and_parts_are_each_streamed(monkeypatch, distance):
    """Blocks worked on by several threads give the fit of one, to the last bit (each matrix
    product on one BLAS thread, the blocks' sums added in order), and each part's statistics
    are those of the part streamed on its own, as a Spark task streams its partition."""
    monkeypatch.setattr(km, "BLOCK_ROWS", 128)
    x = blobs(3000)
    start = km.seed_centres(x, 12, 4, distance)
    fits = [km.lloyd(x, start, 8, 0.0, distance, blocks=[700, 1, 1299, 1000], threads=t)
            for t in (1, 2, 5)]
    for other in fits[1:]:
        assert np.array_equal(other.centres, fits[0].centres)
        assert np.array_equal(other.labels, fits[0].labels)
        assert other.inertia == fits[0].inertia and other.iterations == fits[0].iterations
    parts = np.split(km.normalise(x) if distance == "cosine" else x, [700, 701, 2000])
    for threads in (1, 3):
        got = km.parts_stats(parts, fits[0].centres, distance, threads)
        for part, stats in zip(parts, got, strict=True):
            streamed = km.stream_stats(iter(np.array_split(part, 3)), fits[0].centres, distance)
            assert np.array_equal(stats.sums, streamed.sums)
            assert np.array_equal(stats.counts, streamed.counts)
            assert stats.inertia == streamed.inertia
        labelled = km.parts_nearest(parts, fits[0].centres, distance, threads)
        assert np.array_equal(np.concatenate([lab for lab, _ in labelled]), fits[0].labels)


def test_fits_side_by_side_agree_and_leave_the_blas_as_it_was(monkeypatch):
    """The one-BLAS-thread limit is the process's: fits in two threads at once keep it until
    the last one ends, get the fit made alone, and the BLAS's threads are restored after."""
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_info
    monkeypatch.setattr(km, "BLOCK_ROWS", 128)
    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    assert before, "NumPy's BLAS is loaded"
    x = blobs(3000)
    start = km.seed_centres(x, 12, 4)
    alone = km.lloyd(x, start, 8, 0.0, threads=2)
    with ThreadPoolExecutor(2) as pool:
        fits = list(pool.map(lambda t: km.lloyd(x, start, 8, 0.0, threads=t), (2, 3, 1, 2)))
    for fit in fits:
        assert np.array_equal(fit.centres, alone.centres)
        assert np.array_equal(fit.labels, alone.labels)
    assert [(i["internal_api"], i["num_threads"]) for i in threadpool_info()] == before


def test_cosine_keeps_centres_on_the_sphere_and_an_unchosen_centre_in_place():
    x = blobs(800)
    start = km.normalise(np.vstack([km.seed_centres(x, 6, 2), np.full((1, x.shape[1]), -1e3)]))
    fit = km.lloyd(x, start, 20, distance="cosine")
    np.testing.assert_allclose(np.linalg.norm(fit.centres[fit.sizes > 0], axis=1), 1, atol=1e-6)
    xn = km.normalise(x)
    assert np.array_equal(fit.labels, (xn @ fit.centres.T).argmax(1))
    far = fit.centres[-1]
    if fit.sizes[-1] == 0:
        np.testing.assert_allclose(far, start[-1], atol=1e-7)


def test_stream_stats_equal_block_stats_whatever_the_batches(monkeypatch):
    monkeypatch.setattr(km, "BLOCK_ROWS", 64)
    x, c = blobs(1000), blobs(11, seed=2)
    whole = km.block_stats(x, c)
    for cuts in ([1000], [10] * 100, [63, 1, 500, 0, 436], [700, 300]):
        parts = np.split(x, np.cumsum(cuts)[:-1])
        got = km.stream_stats(iter(parts), c)
        assert np.array_equal(got.sums, whole.sums), cuts
        assert np.array_equal(got.counts, whole.counts) and got.inertia == whole.inertia
    assert km.stream_stats([], c).counts.sum() == 0


def test_stream_nearest_labels_each_block_as_the_statistics_cut_the_rows(monkeypatch):
    monkeypatch.setattr(km, "BLOCK_ROWS", 64)
    x, c = blobs(1000), blobs(11, seed=2)
    whole, _ = km.nearest(x, c)
    stats = km.block_stats(x, c)
    for cuts in ([1000], [10] * 100, [63, 1, 500, 0, 436], [700, 300]):
        parts = np.split(x, np.cumsum(cuts)[:-1])
        got = list(km.stream_nearest(iter(parts), c))
        assert [len(g) for g in got] == cuts
        assert np.array_equal(np.concatenate(got), whole), cuts
        assert np.array_equal(np.bincount(np.concatenate(got), minlength=11), stats.counts)
    assert list(km.stream_nearest([], c)) == []
