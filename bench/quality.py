"""Selection quality against the baselines a user would pick instead, at equal budgets.

Cases (each: a pool, a target sample, held-out rows of the target's distribution):

* ``mixture16``, ``mixture384``: 8 Gaussian components, 4,000 pool rows; the target 200 rows of
  components 0, 1, 2 in proportions 0.5 / 0.3 / 0.2; 600 held-out rows.
* ``digits``: scikit-learn's digits (64-D pixels); the target 150 rows with shifted class
  proportions (classes 0-2 three times as likely as the others), 300 held-out rows, the pool the
  rest; budgets 10%, 25% and 50% of the pool.
* ``docstrings``: the standard library's docstrings (the demo's pool) embedded with the bundled
  all-MiniLM-L6-v2; the target 200 docstrings of ``email``, ``http``, ``unittest`` and
  ``asyncio``, 300 more of them held out, the rest of them in the pool with every other package.
* ``text_numpy``, ``text_man5``, ``text_pyspark``, ``text_licences``: passages no one here
  wrote, embedded with the bundled model: the docstrings of numpy, scikit-learn, pyspark and
  sympy (each function's or class's, 150-800 characters), paragraphs of the man pages'
  sections 1, 5 and 8 (three per page) and of the licence texts (``/usr/share/common-licenses``
  and every ``/usr/share/doc/*/copyright``), at most 1,100 of each source (seeded); the target
  150 passages of one source, 200 more held out, the pool every other passage (about 7,900);
  budget 500 rows.

Methods: ``gio_rows`` (``gio_core.select`` on the rows, knn estimator, exact, KL picks up to
the budget), ``gio_rows_fill`` (the ``mmd`` rule, then ``fill="mmd"`` to the budget),
``gio_rows_avg`` (the source's averaged estimator), ``gio_clusters`` and ``gio_clusters_avg``
(the pipeline's cluster path, ``select.refine: clusters``: K-means on both sides
(scikit-learn's here, the pipeline's own there; the pool into ``quantize.pool_k: auto``'s count
for the pool and the budget), cluster sizes as weights, the ``mmd`` rule then ``fill="mmd"`` to
the budget, the chosen clusters exploded to their rows, the last one sampled down to the
budget), ``gio_pipeline`` (the pipeline's default with a row budget: those cluster picks, then
its row step, GIO on the rows of the picked clusters and of those nearest the target, three
times the budget, filled to the budget), ``random``, ``k_center`` (farthest-first),
``datamodels`` (digits only: 2,000 logistic regressions on random halves of the pool, a lasso
path per target row from the masks to the correct-class margins, then the rows with the
largest total positive weight, as ``gio-spark datamodels select`` ranks them),
``nn_round_robin`` (each target row in turn takes
its nearest untaken pool row), and ``dsir`` (hashed n-gram importance resampling, the
``data-selection`` package, text only, minimum length 1 token). At each fixed budget every method
returns exactly that many rows. ``*_mmd_stop`` rows: GIO with its default ``mmd`` rule deciding
the size; the baselines are then also run at that size. ``gio_pipeline_density``: the
pipeline without a budget under ``select.own_size: density`` (the cluster path's own picks and
their neighbours as candidates, then the row step sized by ``gio_core.proportional_size``),
the baselines again at its size. ``heldout_best``: GIO on the rows, filled, at the prefix
(of 40, geometrically spaced) closest to the held-out rows: the size an own stop should find.

Metrics against the held-out rows: share of the selection from the target's domains and their
recall, MMD^2 (RBF, median bandwidth of held-out and selected rows together), the knn KL
(``gio_core.knn_kl``, held-out as the target, its intrinsic dimension), and the accuracy on the
held-out rows of a logistic regression trained on the selection; wall seconds per method.

    python bench/quality.py [--cases mixture16,digits] [--out-dir bench/results/quality]

Writes ``<out-dir>/<case>.md`` (the table), ``<out-dir>/<case>.png`` (MMD and accuracy against
the budget) and appends JSON lines to ``<out-dir>/quality_cpu_2cores.jsonl``.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------------------
# Cases
# ---------------------------------------------------------------------------

def mixture_case(dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, dim)) * 3 / np.sqrt(dim / 8)
    comp = rng.integers(0, 8, 4000)
    pool = (centres[comp] + rng.normal(size=(4000, dim))).astype(np.float32)

    def draw(n):
        c = rng.choice(3, p=(0.5, 0.3, 0.2), size=n)
        return (centres[c] + rng.normal(size=(n, dim))).astype(np.float32), c

    target, tlab = draw(200)
    held, hlab = draw(600)
    in_domain = int(np.isin(comp, [0, 1, 2]).sum())
    return dict(pool=pool, pool_labels=comp, target=target, target_labels=tlab, held=held,
                held_labels=hlab, domains=(0, 1, 2), budgets=[in_domain // 2, in_domain],
                target_k=40)


def digits_case(seed: int = 0):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    rng = np.random.default_rng(seed)
    p = np.where(y <= 2, 3.0, 1.0)
    order = rng.choice(len(x), size=450, replace=False, p=p / p.sum())
    target, held = order[:150], order[150:]
    rest = np.setdiff1d(np.arange(len(x)), order)
    budgets = [int(f * len(rest)) for f in (0.10, 0.25, 0.50)]
    return dict(pool=x[rest], pool_labels=y[rest], target=x[target], target_labels=y[target],
                held=x[held], held_labels=y[held], domains=(0, 1, 2), budgets=budgets,
                target_k=30, datamodels=True)


def docstrings_case(seed: int = 0):
    from jobs.io.demo_data import stdlib_docstrings
    rows = stdlib_docstrings()
    packages = ("email", "http", "unittest", "asyncio")
    texts = [r["text"] for r in rows]
    emb = embed(texts)
    pkg = np.array([r["package"] for r in rows])
    mine = np.flatnonzero(np.isin(pkg, packages))
    rng = np.random.default_rng(seed)
    rng.shuffle(mine)
    target, held = np.sort(mine[:200]), np.sort(mine[200:500])
    rest = np.setdiff1d(np.arange(len(rows)), mine[:500])
    in_domain = int(np.isin(pkg[rest], packages).sum())
    return dict(pool=emb[rest], pool_labels=pkg[rest], target=emb[target],
                target_labels=pkg[target], held=emb[held], held_labels=pkg[held],
                domains=packages, budgets=[in_domain // 2, in_domain, 2 * in_domain],
                target_k=40, pool_texts=[texts[i] for i in rest],
                target_texts=[texts[i] for i in target])


# The text cases: passages no one here wrote, from sources found on any Debian
# machine with the project's environment: four packages' docstrings, three man-page sections,
# licence texts. Each source gives at most SOURCE_ROWS passages (seeded sample).
TEXT_SOURCES = ("numpy", "sklearn", "pyspark", "sympy", "man1", "man5", "man8", "licences")
TEXT_CASES = {"text_numpy": "numpy", "text_man5": "man5", "text_pyspark": "pyspark",
              "text_licences": "licences"}
SOURCE_ROWS = 1100
_TEXTS: dict = {}


def _paragraphs(text: str, least: int = 150, most: int = 800):
    import re
    for part in re.split(r"\n\s*\n", text):
        part = " ".join(part.split())
        if len(part) >= least:
            yield part[:most]


def _docstrings(package: str):
    import ast
    import importlib.util
    root = os.path.dirname(importlib.util.find_spec(package).origin)
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        if "tests" in folder.split(os.sep):
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            try:
                tree = ast.parse(open(os.path.join(folder, name), encoding="utf-8").read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
                    doc = " ".join((ast.get_docstring(node) or "").split())
                    if len(doc) >= 150:
                        yield doc[:800]


def _man_pages(section: str):
    import gzip
    import re
    folder = f"/usr/share/man/{section}"
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        try:
            raw = gzip.open(os.path.join(folder, name), "rt", errors="replace").read()
        except (OSError, EOFError):
            continue
        lines = []
        for line in raw.splitlines():
            if line.startswith((".", "'")):
                lines.append("")                # a macro ends a paragraph
                continue
            line = re.sub(r"\\f[BIRP0-9]|\\f\(..|\\&|\\\(..|\\[*]\(..|\\[*].", "", line)
            lines.append(line.replace("\\-", "-").replace("\\", ""))
        yield from list(_paragraphs("\n".join(lines)))[:3]


def _licences():
    import glob
    seen = set()
    for path in sorted(glob.glob("/usr/share/common-licenses/*")
                       + glob.glob("/usr/share/doc/*/copyright")):
        try:
            text = open(path, encoding="utf-8", errors="replace").read()
        except OSError:
            continue
        for part in list(_paragraphs(text))[:6]:
            if part not in seen:
                seen.add(part)
                yield part


def text_sources(seed: int = 0):
    """``(texts, source of each, embeddings)`` of every text source, embedded once per
    process."""
    if not _TEXTS:
        rng = np.random.default_rng(seed)
        texts, labels = [], []
        for source in TEXT_SOURCES:
            found = sorted(set(_man_pages(source) if source.startswith("man") else
                               _licences() if source == "licences" else _docstrings(source)))
            if len(found) > SOURCE_ROWS:
                found = [found[i] for i in np.sort(rng.choice(len(found), SOURCE_ROWS,
                                                              replace=False))]
            texts += found
            labels += [source] * len(found)
        _TEXTS.update(texts=texts, labels=np.array(labels), emb=embed(texts))
    return _TEXTS["texts"], _TEXTS["labels"], _TEXTS["emb"]


def texts_case(source: str, seed: int = 0, target_rows: int = 150, held_rows: int = 200):
    """One source's passages as the target (150 rows) and held-out rows (200); the pool every
    other passage of every source."""
    texts, labels, emb = text_sources()
    mine = np.flatnonzero(labels == source)
    rng = np.random.default_rng(seed)
    rng.shuffle(mine)
    target, held = np.sort(mine[:target_rows]), np.sort(mine[target_rows:target_rows + held_rows])
    rest = np.setdiff1d(np.arange(len(texts)), mine[:target_rows + held_rows])
    return dict(pool=emb[rest], pool_labels=labels[rest], target=emb[target],
                target_labels=labels[target], held=emb[held], held_labels=labels[held],
                domains=(source,), budgets=[500], target_k=40,
                pool_texts=[texts[i] for i in rest], target_texts=[texts[i] for i in target])


def embed(texts):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jobs.io.encoders import load_model
    model = load_model("bundled", "cpu")
    return np.asarray(model.encode(texts, batch_size=64, normalize_embeddings=True),
                      np.float32)


# ---------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------

def pool_k(case, budget):
    """The pipeline's ``quantize.pool_k: auto`` for this pool and row budget."""
    from jobs.config import SelectSection, auto_pool_k
    return auto_pool_k(len(case["pool"]), SelectSection(max_rows=budget))


def clusters(case, budget):
    """K-means of both sides (scikit-learn; the pipeline uses MLlib's), the pool's into the
    pipeline's automatic count for the budget; cached per count, with the seconds it took."""
    from sklearn.cluster import KMeans
    k = pool_k(case, budget)
    cache = case.setdefault("_clusters", {})
    if k not in cache:
        t = time.perf_counter()
        kp = KMeans(k, n_init=1, random_state=7).fit(case["pool"])
        kt = KMeans(case["target_k"], n_init=1, random_state=8).fit(case["target"])
        cache[k] = dict(pool_c=kp.cluster_centers_.astype(np.float32), labels=kp.labels_,
                        pool_w=np.bincount(kp.labels_, minlength=kp.n_clusters),
                        target_c=kt.cluster_centers_.astype(np.float32),
                        target_w=np.bincount(kt.labels_, minlength=kt.n_clusters),
                        seconds=time.perf_counter() - t)
    return cache[k]


def explode(cl, chosen, budget, seed=0):
    """Rows of the chosen clusters in pick order; the last one sampled down to the budget."""
    rows = []
    rng = np.random.default_rng(seed)
    for c in chosen:
        members = np.flatnonzero(cl["labels"] == c)
        if budget is not None and len(rows) + len(members) > budget:
            members = rng.choice(members, size=budget - len(rows), replace=False)
        rows.extend(members.tolist())
        if budget is not None and len(rows) >= budget:
            break
    return np.asarray(rows, np.int64)


def gio_rows(case, budget, estimator="knn", fill=False):
    from gio_core import select
    if budget is None:
        return select(case["target"], case["pool"], stop_criterion="mmd", dim="auto").indices
    if fill:
        return select(case["target"], case["pool"], estimator=estimator, stop_criterion="mmd",
                      fill="mmd", max_iter=budget, dim="auto").indices
    return select(case["target"], case["pool"], estimator=estimator, stop_criterion="none",
                  max_iter=budget, dim="auto").indices


def gio_clusters(case, budget, estimator="knn"):
    from gio_core import median_bandwidth, select
    cl = clusters(case, budget)
    opts = dict(target_weights=cl["target_w"], pool_weights=cl["pool_w"], dim="auto",
                estimator=estimator)
    opts.update(stop_criterion="mmd", mmd_bandwidth=median_bandwidth(case["target"]))
    if budget is None:
        result = select(cl["target_c"], cl["pool_c"], **opts)
    else:                 # the pipeline's defaults with a row budget: the mmd rule, then fill
        result = select(cl["target_c"], cl["pool_c"], fill="mmd", max_rows=budget,
                        row_counts=cl["pool_w"].astype(np.int64), **opts)
    return explode(cl, result.indices, budget)


def gio_pipeline(case, budget, candidates=3.0):
    """The pipeline's default with a row budget (``select.refine: auto``): the cluster path's
    picks (as :func:`gio_clusters`), then the row step: the rows of those clusters and of the
    pool clusters nearest the target's centroids (``gio_core.candidate_clusters``,
    ``candidates`` times the budget), and GIO on those rows against the target's rows (the
    ``mmd`` rule, filled to the budget, the target rows' bandwidth).

    ``budget`` None: the pipeline under ``select.own_size: density``: the cluster path's own
    picks (the ``mmd`` rule on the centroids), candidates for their rows, and the row step
    sized by ``gio_core.proportional_size`` of the candidates."""
    from gio_core import candidate_clusters, median_bandwidth, proportional_size, select
    cl = clusters(case, budget)
    opts = dict(target_weights=cl["target_w"], pool_weights=cl["pool_w"], dim="auto",
                stop_criterion="mmd", mmd_bandwidth=median_bandwidth(case["target"]))
    if budget is None:
        picked = select(cl["target_c"], cl["pool_c"], **opts).indices
        size = int(cl["pool_w"][np.unique(picked)].sum())
    else:
        picked = select(cl["target_c"], cl["pool_c"], fill="mmd", max_rows=budget,
                        row_counts=cl["pool_w"].astype(np.int64), **opts).indices
        size = budget
    want = min(int(np.ceil(candidates * size)), len(case["pool"]))
    near = candidate_clusters(cl["pool_c"], cl["target_c"], cl["pool_w"], picked, want)
    rows = np.flatnonzero(np.isin(cl["labels"], near))
    if budget is None:
        size = proportional_size(case["target"], case["pool"][rows])
    result = select(case["target"], case["pool"][rows], stop_criterion="mmd", fill="mmd",
                    max_iter=size, dim="auto",
                    mmd_bandwidth=median_bandwidth(case["target"]))
    return rows[result.indices]


def heldout_best(case, points: int = 40):
    """Where GIO on the rows is closest to the held-out rows: its ``mmd`` picks filled on
    (up to 3,000 rows or the pool), the held-out MMD² of ``points`` prefixes spaced
    geometrically from 20 rows; the best prefix's rows."""
    from gio_core import median_bandwidth, mmd_rbf, select
    order = select(case["target"], case["pool"], stop_criterion="mmd", fill="mmd",
                   max_iter=min(len(case["pool"]), 3000), dim="auto",
                   mmd_bandwidth=median_bandwidth(case["target"])).indices
    sizes = np.unique(np.geomspace(20, len(order), points).astype(int))
    best = min(sizes, key=lambda n: mmd_rbf(case["held"], case["pool"][order[:n]]))
    return np.asarray(order[:best])


def dsir(case, budget, seed=0):
    from jobs.stages.evaluate import dsir_rows
    return dsir_rows(case["pool_texts"], case["target_texts"], budget, seed)


DATAMODELS = 2000          # models trained on random halves of the pool (digits only)


def datamodels_fit(case, models=DATAMODELS, seed=0):
    """Datamodels of the target rows: ``models`` logistic regressions, each trained on a
    random half of the pool, their correct-class margins on every target row, and a lasso
    path per target row from the masks to the margins (``gio_core.datamodels``; a tenth of
    the models choose each lambda). Cached on the case, with the seconds it took."""
    import warnings

    from sklearn.linear_model import LogisticRegression

    from gio_core.datamodels import lasso_path
    if "_datamodels" in case:
        return case["_datamodels"]
    t = time.perf_counter()
    pool, labels = case["pool"], case["pool_labels"]
    target, truth = case["target"], case["target_labels"]
    rng = np.random.default_rng(seed)
    masks = rng.random((models, len(pool))) < 0.5
    margins = np.zeros((models, len(target)), np.float32)
    rows = np.arange(len(target))
    for i in range(models):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = LogisticRegression(max_iter=300).fit(pool[masks[i]] / 16.0, labels[masks[i]])
        logits = np.full((len(target), 10), -np.inf)
        logits[:, model.classes_] = model.decision_function(target / 16.0)
        correct = logits[rows, truth].copy()
        logits[rows, truth] = -np.inf
        margins[i] = correct - logits.max(axis=1)
    val = models // 10
    fit = lasso_path(masks[val:], margins[val:], val_masks=masks[:val],
                     val_outputs=margins[:val])
    case["_datamodels"] = (fit.weight, time.perf_counter() - t)
    return case["_datamodels"]


def datamodels(case, budget, seed=0):
    """The pool rows with the largest total positive datamodel weight on the target rows (the
    pipeline's ``gio-spark datamodels select``)."""
    from jobs.datamodels.actions import ranked_examples
    weight, _ = datamodels_fit(case)
    return ranked_examples(weight, budget, seed)


def baselines(case):
    from gio_core.quality import k_center_greedy, nearest_round_robin, random_rows
    out = {
        "random": lambda b: random_rows(len(case["pool"]), b, seed=0),
        "k_center": lambda b: k_center_greedy(case["target"], case["pool"], b),
        "nn_round_robin": lambda b: nearest_round_robin(case["target"], case["pool"], b),
    }
    if "pool_texts" in case:
        out["dsir"] = lambda b: dsir(case, b)
    if case.get("datamodels"):
        out["datamodels"] = lambda b: datamodels(case, b)
    return out


# ---------------------------------------------------------------------------
# Metrics and reports
# ---------------------------------------------------------------------------

def metrics(case, rows):
    from gio_core import knn_kl, mmd_rbf
    from gio_core.quality import domain_share, probe_accuracy
    sel = case["pool"][rows]
    labels = case["pool_labels"][rows]
    out = domain_share(labels, case["domains"], case["pool_labels"])
    out["mmd"] = mmd_rbf(case["held"], sel)
    out["knn_kl"] = knn_kl(case["held"], sel, dim=case["_dim"]) if len(rows) > 5 else None
    out["probe_acc"] = probe_accuracy(sel, labels, case["held"], case["held_labels"])
    return out


def run_case(name, case, emit_row):
    from gio_core import intrinsic_dimension
    case["_dim"] = intrinsic_dimension(case["held"])
    methods = {
        "gio_rows": lambda b: gio_rows(case, b),
        "gio_rows_fill": lambda b: gio_rows(case, b, fill=True),
        "gio_rows_avg": lambda b: gio_rows(case, b, "averaged"),
        "gio_clusters": lambda b: gio_clusters(case, b),
        "gio_clusters_avg": lambda b: gio_clusters(case, b, "averaged"),
        **baselines(case)}
    pipeline = {"gio_pipeline": lambda b: gio_pipeline(case, b)}
    results = []

    def measure(method, fn, budget, label):
        t = time.perf_counter()
        rows = fn(budget)
        wall = time.perf_counter() - t      # K-means and the datamodels' training included,
        # the first time they are needed
        row = {"case": name, "budget": label, "rows": int(len(rows)), "method": method,
               "wall_s": round(wall, 3), **metrics(case, rows)}
        emit_row(row)
        results.append(row)
        return rows

    for budget in case["budgets"]:
        for method, fn in {**methods, **pipeline}.items():
            measure(method, fn, budget, budget)
    # GIO's own stop decides the size; the baselines then get that size. So does the
    # pipeline's select.own_size: density; and the size where GIO on the rows comes closest
    # to the held-out rows is found.
    own = [("gio_rows_mmd_stop", "gio_rows mmd stop", lambda b: methods["gio_rows"](None)),
           ("gio_clusters_mmd_stop", "gio_clusters mmd stop",
            lambda b: methods["gio_clusters"](None)),
           ("gio_pipeline_density", "gio_pipeline_density own size",
            lambda b: gio_pipeline(case, None))]
    for method, label, fn in own:
        rows = measure(method, fn, None, label)
        for base, base_fn in baselines(case).items():
            measure(base, base_fn, len(rows), label)
    measure("heldout_best", lambda b: heldout_best(case), None, "held-out best")
    return results


def markdown(name, results):
    lines = [f"### {name}", "", "| budget | method | rows | share | recall | MMD² | kNN KL | "
             "probe acc | wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        kl = "" if r["knn_kl"] is None else f"{r['knn_kl']:.3f}"
        lines.append(f"| {r['budget']} | {r['method']} | {r['rows']} | {r['share']:.3f} | "
                     f"{r.get('recall', 0):.3f} | {r['mmd']:.5f} | {kl} | "
                     f"{r['probe_acc']:.3f} | {r['wall_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(name, results, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(10, 4))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2)
    fixed = [r for r in results if isinstance(r["budget"], int)]
    for method in dict.fromkeys(r["method"] for r in fixed):
        pts = sorted((r["budget"], r["mmd"], r["probe_acc"]) for r in fixed if r["method"] == method)
        xs = [p[0] for p in pts]
        ax1.plot(xs, [p[1] for p in pts], marker="o", label=method)
        ax2.plot(xs, [p[2] for p in pts], marker="o", label=method)
    ax1.set_yscale("log")
    ax1.set_xlabel("budget (rows)")
    ax1.set_ylabel("MMD² to held-out target rows")
    ax2.set_xlabel("budget (rows)")
    ax2.set_ylabel("probe accuracy on held-out rows")
    ax1.legend(fontsize=7)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="mixture16,mixture384,digits,docstrings,"
                   + ",".join(TEXT_CASES))
    p.add_argument("--out-dir", default="bench/results/quality")
    args = p.parse_args()
    from bench._common import emit
    os.makedirs(args.out_dir, exist_ok=True)
    builders = {"mixture16": lambda: mixture_case(16), "mixture384": lambda: mixture_case(384),
                "digits": digits_case, "docstrings": docstrings_case,
                **{name: (lambda src=src: texts_case(src)) for name, src in TEXT_CASES.items()}}
    for name in args.cases.split(","):
        case = builders[name]()
        results = run_case(name, case, lambda row: emit(
            row, os.path.join(args.out_dir, "quality_cpu_2cores.jsonl")))
        with open(os.path.join(args.out_dir, f"{name}.md"), "w") as f:
            f.write(markdown(name, results))
        plot(name, results, os.path.join(args.out_dir, f"{name}.png"))


if __name__ == "__main__":
    main()
