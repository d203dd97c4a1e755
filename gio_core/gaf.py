"""Gradient Agreement Filtering (GAF): fuse only the micro-batch gradients that agree.

A GAF step computes one gradient per micro-batch, compares them by cosine distance
(``1 - cos``, in [0, 2]) and fuses only those within ``cos_distance_thresh`` (tau); when none
agree it takes no step. Gradients of mislabelled examples point elsewhere than those of clean
ones, so they are left out, which makes training robust to label noise.

Two fusions, side by side:

* ``"pairwise"`` -- exactly the reference package's ``step_GAF`` (gradient-agreement-filtering
  0.1.3): start from the first micro-batch's gradient; for each next one, if its cosine distance
  to the running gradient is at most tau, replace the running gradient by the pair's average
  (so later agreeing gradients weigh more: 1/2, 1/4, ...); step only if at least one agreed. The
  result depends on the micro-batches' order.
* ``"mean"`` -- the plain mean of every micro-batch gradient whose cosine distance to the mean of
  the *other* micro-batches' gradients is at most tau; step only if at least two agree. Every
  agreeing gradient weighs the same and the order does not matter.

Functional core: :func:`gaf_step` is a pure function of arrays and pytrees (jit it, or let
:func:`make_gaf_step` do it), with every micro-batch gradient computed in one ``vmap``.

Example:
    >>> import optax
    >>> opt = optax.sgd(0.1)
    >>> params, opt_state, metrics = gaf_step(loss_fn, opt, params, opt.init(params),
    ...                                        microbatches, cos_distance_thresh=0.97)
"""
from __future__ import annotations

import io
import time
from functools import partial
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
from tqdm.auto import tqdm

FUSIONS = ("pairwise", "mean")
COS_EPS = 1e-8            # as torch.nn.functional.cosine_similarity


class GAFMetrics(NamedTuple):
    """What one GAF step did (arrays; ``float(...)``/``int(...)`` them on the host)."""
    loss: jax.Array                  # mean loss over the micro-batches
    losses: jax.Array                # [n] each micro-batch's loss
    cosine_distances: jax.Array      # pairwise: [n - 1], to the running gradient; mean: [n]
    agreed_count: jax.Array          # pairwise: micro-batches fused after the first; mean: agreeing
    stepped: jax.Array               # whether the parameters changed
    aux: Any                         # the loss function's aux, averaged over micro-batches


def check_fusion(fusion) -> str:
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {fusion!r}.")
    return fusion


def check_threshold(cos_distance_thresh) -> float:
    if isinstance(cos_distance_thresh, bool) or not isinstance(
            cos_distance_thresh, (int, float, np.floating, np.integer)):
        raise ValueError(f"cos_distance_thresh must be a number in [0, 2]; got "
                         f"{cos_distance_thresh!r}.")
    tau = float(cos_distance_thresh)
    if not 0.0 <= tau <= 2.0:
        raise ValueError(f"cos_distance_thresh must be in [0, 2] (a cosine distance); got {tau}.")
    return tau


def microbatch_count(microbatches) -> int:
    """The number of micro-batches: the leading axis, which every leaf must share."""
    leaves = jax.tree_util.tree_leaves(microbatches)
    if not leaves:
        raise ValueError("microbatches is empty: give a pytree of arrays whose leading axis "
                         "indexes the micro-batches.")
    if any(np.ndim(leaf) == 0 for leaf in leaves):
        raise ValueError("every leaf of microbatches must have the micro-batch index as its "
                         "leading axis; got a scalar leaf.")
    sizes = {int(np.shape(leaf)[0]) for leaf in leaves}
    if len(sizes) != 1:
        raise ValueError(f"every leaf of microbatches must have the micro-batch index as its "
                         f"leading axis, of one size; got leading sizes {sorted(sizes)}.")
    (n,) = sizes
    if n < 2:
        raise ValueError(f"GAF needs at least 2 micro-batches to compare; got {n}.")
    return n


def stack_microbatches(batches: list):
    """A list of micro-batch pytrees -> one pytree with the micro-batch index leading.

    Raises:
      ValueError: micro-batches of unequal shape (GAF compares equal-sized micro-batches).
    """
    if len(batches) < 2:
        raise ValueError(f"GAF needs at least 2 micro-batches to compare; got {len(batches)}.")
    shapes = [jax.tree_util.tree_map(np.shape, b) for b in batches]
    for i, s in enumerate(shapes[1:], start=1):
        if s != shapes[0]:
            raise ValueError(f"micro-batch {i} has shapes {s}, micro-batch 0 {shapes[0]}; give "
                             "micro-batches of equal shape.")
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)


def _cosine_distance(a, b):
    cos = jnp.dot(a, b) / jnp.maximum(jnp.linalg.norm(a) * jnp.linalg.norm(b), COS_EPS)
    return 1.0 - cos


def _fuse_pairwise(flat, tau):
    def body(carry, g):
        current, agreed = carry
        dist = _cosine_distance(current, g)
        ok = dist <= tau
        current = jnp.where(ok, (current + g) / 2, current)
        return (current, agreed + ok.astype(jnp.int32)), dist
    (fused, agreed), dists = jax.lax.scan(body, (flat[0], jnp.zeros((), jnp.int32)), flat[1:])
    return fused, dists, agreed, agreed > 0


def _fuse_mean(flat, tau):
    n = flat.shape[0]
    others = (jnp.sum(flat, axis=0)[None, :] - flat) / (n - 1)
    dists = jax.vmap(_cosine_distance)(flat, others)
    ok = dists <= tau
    agreed = jnp.sum(ok.astype(jnp.int32))
    fused = jnp.sum(jnp.where(ok[:, None], flat, 0.0), axis=0) / jnp.maximum(agreed, 1)
    return fused, dists, agreed, agreed >= 2


def _returns_aux(loss_fn, params, microbatches) -> bool:
    first = jax.tree_util.tree_map(lambda x: x[0], microbatches)
    out = jax.eval_shape(loss_fn, params, first)
    return isinstance(out, tuple)


def gaf_step(loss_fn: Callable, optimizer: optax.GradientTransformation, params, opt_state,
             microbatches, *, cos_distance_thresh: float = 1.0, fusion: str = "pairwise"):
    """One GAF step.

    Args:
      loss_fn: ``loss_fn(params, batch)`` -> scalar loss, or ``(loss, aux)`` (aux: a pytree of
        arrays, for example ``{"accuracy": ...}``, averaged over the micro-batches).
      optimizer: an optax transformation; ``opt_state`` its state.
      microbatches: a pytree whose leaves have the micro-batch index as leading axis (at
        least 2 micro-batches, all of one shape: see :func:`stack_microbatches`).
      cos_distance_thresh: tau in [0, 2]: 0 fuses only identical directions, 1 orthogonal or
        better, 2 everything.
      fusion: ``pairwise`` (the reference's) or ``mean`` (see the module's docstring).
    Returns:
      ``(params, opt_state, GAFMetrics)``: unchanged params and state when nothing agreed.
    """
    tau = check_threshold(cos_distance_thresh)
    check_fusion(fusion)
    microbatch_count(microbatches)
    has_aux = _returns_aux(loss_fn, params, microbatches)
    return _gaf_step(loss_fn, optimizer, has_aux, fusion, params, opt_state, microbatches, tau)


def _gaf_step(loss_fn, optimizer, has_aux, fusion, params, opt_state, microbatches, tau):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=has_aux)
    value, grads = jax.vmap(grad_fn, in_axes=(None, 0))(params, microbatches)
    losses, aux = value if has_aux else (value, None)
    _, unravel = ravel_pytree(params)
    flat = jax.vmap(lambda g: ravel_pytree(g)[0])(grads)
    fuse = _fuse_pairwise if fusion == "pairwise" else _fuse_mean
    fused, dists, agreed, stepped = fuse(flat, tau)
    updates, new_state = optimizer.update(unravel(fused), opt_state, params)
    new_params = optax.apply_updates(params, updates)
    pick = partial(jax.tree_util.tree_map, lambda new, old: jnp.where(stepped, new, old))
    metrics = GAFMetrics(jnp.mean(losses), losses, dists, agreed, stepped,
                         None if aux is None else jax.tree_util.tree_map(
                             lambda a: jnp.mean(a, axis=0), aux))
    return pick(new_params, params), pick(new_state, opt_state), metrics


def make_gaf_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *,
                  cos_distance_thresh: float = 1.0, fusion: str = "pairwise", has_aux=None):
    """A jitted ``step(params, opt_state, microbatches) -> (params, opt_state, metrics)``
    for fixed ``loss_fn``, optimizer, tau and fusion (compiled once per micro-batch shape).
    ``has_aux``: whether ``loss_fn`` returns ``(loss, aux)``; None finds out on first call."""
    tau = check_threshold(cos_distance_thresh)
    check_fusion(fusion)
    compiled: dict = {}

    def step(params, opt_state, microbatches):
        if "fn" not in compiled:
            microbatch_count(microbatches)
            aux = has_aux if has_aux is not None else _returns_aux(loss_fn, params, microbatches)
            compiled["fn"] = jax.jit(partial(_gaf_step, loss_fn, optimizer, aux, fusion))
        return compiled["fn"](params, opt_state, microbatches, tau)

    return step


# ---------------------------------------------------------------------------
# Models, losses, optimizers and data helpers
# ---------------------------------------------------------------------------

def classification_loss(apply_fn: Callable, x_key: str = "x", y_key: str = "y"):
    """``loss_fn(params, batch) -> (mean softmax cross-entropy, {"accuracy": ...})`` for a
    model ``apply_fn(params, x) -> logits`` and integer labels."""
    def loss_fn(params, batch):
        logits = apply_fn(params, batch[x_key])
        labels = batch[y_key]
        loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
        accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
        return loss, {"accuracy": accuracy}
    return loss_fn


def mlp(sizes, seed: int = 0):
    """A small multi-layer perceptron: ``(params, apply_fn)`` with ReLU between the layers,
    He-initialised from ``seed``. ``sizes``: [inputs, hidden..., outputs]; [d, c] is logistic
    regression."""
    keys = jax.random.split(jax.random.PRNGKey(seed), len(sizes) - 1)
    params = [{"w": jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), "b": jnp.zeros(n)}
              for k, m, n in zip(keys, sizes[:-1], sizes[1:], strict=True)]
    return params, mlp_apply


def mlp_apply(params, x):
    """The logits of the network :func:`mlp` builds (any number of layers)."""
    for layer in params[:-1]:
        x = jax.nn.relu(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


PARAMS_FORMAT = "gio-spark-mlp-npz-1"


def mlp_to_bytes(params) -> bytes:
    """An :func:`mlp`'s parameters as bytes (an ``.npz`` archive: ``w0, b0, w1, b1, ...``)."""
    buf = io.BytesIO()
    arrays: dict[str, Any] = {}
    for i, layer in enumerate(params):
        arrays[f"w{i}"] = np.asarray(layer["w"], np.float32)
        arrays[f"b{i}"] = np.asarray(layer["b"], np.float32)
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def mlp_from_bytes(data: bytes) -> list:
    """The parameters :func:`mlp_to_bytes` wrote (a list of ``{"w", "b"}`` layers)."""
    with np.load(io.BytesIO(bytes(data)), allow_pickle=False) as archive:
        layers = len(archive.files) // 2
        return [{"w": jnp.asarray(archive[f"w{i}"]), "b": jnp.asarray(archive[f"b{i}"])}
                for i in range(layers)]


class Probe(NamedTuple):
    """A trained classifier on feature vectors: standardisation (``mean``, ``scale``), an
    :func:`mlp` and the class names its outputs stand for."""
    params: Any
    classes: tuple
    mean: np.ndarray
    scale: np.ndarray

    def logits(self, x) -> np.ndarray:
        z = (np.asarray(x, np.float32) - self.mean) / self.scale
        return np.asarray(_logits(self.params, jnp.asarray(z, jnp.float32)))

    def predict(self, x) -> np.ndarray:
        """The predicted class name of every row of ``x``."""
        return np.asarray(self.classes, dtype=object)[np.argmax(self.logits(x), axis=-1)]

    def accuracy(self, x, labels) -> float:
        return float(np.mean(self.predict(x) == np.asarray(labels, dtype=object)))


_logits = jax.jit(mlp_apply)


OPTIMIZERS = ("sgd", "sgd+nesterov", "adam", "adamw", "rmsprop")


def make_optimizer(name: str, learning_rate: float, *, momentum: float = 0.9,
                   weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """The reference examples' optimizers, from optax, with an injectable learning rate (so a
    plateau schedule can lower it): ``sgd`` (with ``momentum``, 0 for none), ``sgd+nesterov``,
    ``adam``, ``adamw`` (``weight_decay``), ``rmsprop``."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}.")
    if not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0; got {learning_rate!r}.")

    def build(learning_rate):
        if name == "sgd":
            return optax.sgd(learning_rate, momentum=momentum or None)
        if name == "sgd+nesterov":
            return optax.sgd(learning_rate, momentum=momentum, nesterov=True)
        if name == "adam":
            return optax.adam(learning_rate)
        if name == "adamw":
            return optax.adamw(learning_rate, weight_decay=weight_decay)
        return optax.rmsprop(learning_rate)
    return optax.inject_hyperparams(build)(learning_rate=learning_rate)


def flip_labels(labels, fraction: float, num_classes: int, seed: int = 0):
    """``labels`` with ``fraction`` of them (chosen at random, seeded) changed to another class
    (uniform among the others). Returns ``(noisy labels, boolean mask of the flipped)``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1]; got {fraction!r}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    flipped = np.zeros(len(labels), bool)
    flipped[rng.permutation(len(labels))[:int(round(fraction * len(labels)))]] = True
    shift = rng.integers(1, num_classes, len(labels))
    noisy = np.where(flipped, (labels + shift) % num_classes, labels)
    return noisy, flipped


def _sample_microbatches(rng, n_rows: int, batch_size: int, count: int) -> np.ndarray:
    """The reference's i.i.d. micro-batches: one shuffle, ``count`` consecutive slices of
    ``batch_size`` (the shuffled order repeated when the set is smaller). ``[count, batch]``."""
    order = rng.permutation(n_rows)
    if n_rows < batch_size * count:
        order = np.tile(order, (batch_size * count) // n_rows + 1)
    return order[:batch_size * count].reshape(count, batch_size)


def _plain_step(loss_fn, optimizer, has_aux, params, opt_state, batch):
    value, grads = jax.value_and_grad(loss_fn, has_aux=has_aux)(params, batch)
    loss, aux = value if has_aux else (value, None)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, aux


class Plateau(NamedTuple):
    """Reduce-on-plateau, as the reference examples' ``val_plateau``: multiply the learning rate
    by ``factor`` after ``patience`` epochs without a validation loss below the best by more
    than ``threshold`` (relative), not below ``min_lr``."""
    factor: float = 0.1
    patience: int = 10
    threshold: float = 1e-4
    min_lr: float = 0.0


def train_gaf(loss_fn: Callable, params, optimizer: optax.GradientTransformation, train,
              val=None, *, epochs: int = 1, batch_size: int = 32,
              num_batches_to_force_agreement: int = 2, cos_distance_thresh: float = 1.0,
              fusion: str = "pairwise", gaf: bool = True, seed: int = 0,
              plateau: Plateau | None = None, progress: bool = False, wandb: bool = False,
              flipped=None):
    """The reference's ``train_GAF`` loop on arrays: per epoch ``N // (batch_size * n)`` steps,
    each on ``n = num_batches_to_force_agreement`` i.i.d. micro-batches of ``batch_size`` rows,
    then validation.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss`` or ``(loss, aux)`` (see
        :func:`classification_loss`; an ``accuracy`` in aux is reported).
      train, val: pytrees of arrays with the row index leading (for example ``{"x", "y"}``).
      gaf: False trains plainly on the same rows (one step on all ``n`` micro-batches together):
        the baseline with the same data budget.
      plateau: lower the learning rate on a validation-loss plateau (needs ``val`` and an
        optimizer from :func:`make_optimizer`).
      wandb: log each epoch's record to Weights & Biases (the package must be installed and a
        run started; never a hard dependency).
      flipped: optional boolean mask of training rows whose labels were flipped: each epoch
        then reports ``memorised``, the share of them the model predicts with the flipped label.
    Returns:
      ``(params, records)``: one dict per epoch (epoch, lr, train_loss, train_accuracy,
      val_loss, val_accuracy, steps, steps_taken, mean_agreed, seconds[, memorised]).
    Raises:
      ValueError: bad arguments; FloatingPointError: a NaN or inf loss, naming the epoch and step.
    """
    check_threshold(cos_distance_thresh)
    check_fusion(fusion)
    n = int(num_batches_to_force_agreement)
    if gaf and n < 2:
        raise ValueError(f"num_batches_to_force_agreement must be at least 2 for GAF; got {n}.")
    if batch_size < 1 or epochs < 1:
        raise ValueError("batch_size and epochs must be at least 1.")
    rows = {int(np.shape(leaf)[0]) for leaf in jax.tree_util.tree_leaves(train)}
    if len(rows) != 1:
        raise ValueError(f"every array of train must have the same number of rows; got {rows}.")
    (n_rows,) = rows
    steps = n_rows // (batch_size * n)
    if steps < 1:
        raise ValueError(f"{n_rows} training rows make no step of {n} micro-batches of "
                         f"{batch_size}; lower batch_size or num_batches_to_force_agreement.")
    if plateau is not None and val is None:
        raise ValueError("plateau needs val (it watches the validation loss).")
    if wandb:
        import wandb as wandb_module          # optional: only when asked
    host = jax.tree_util.tree_map(np.asarray, train)
    has_aux = _returns_aux(loss_fn, params, jax.tree_util.tree_map(lambda x: x[None, :2], host))
    opt_state = optimizer.init(params)
    if gaf:
        step_fn = jax.jit(partial(_gaf_step, loss_fn, optimizer, has_aux, fusion))
    else:
        step_fn = jax.jit(partial(_plain_step, loss_fn, optimizer, has_aux))
    eval_fn = jax.jit(lambda p, b: loss_fn(p, b))
    rng = np.random.default_rng(seed)
    records: list = []
    best, waited = np.inf, 0
    for epoch in tqdm(range(1, epochs + 1), desc="GAF" if gaf else "train", disable=not progress):
        t0 = time.perf_counter()
        losses, accs, taken, agreed = [], [], [], []
        for _ in range(steps):
            idx = _sample_microbatches(rng, n_rows, batch_size, n)
            if gaf:
                mbs = jax.tree_util.tree_map(lambda x, i=idx: x[i], host)
                params, opt_state, m = step_fn(params, opt_state, mbs, cos_distance_thresh)
                losses.append(m.loss)
                taken.append(m.stepped)
                agreed.append(m.agreed_count)
                aux = m.aux
            else:
                flat_idx = idx.reshape(-1)
                batch = jax.tree_util.tree_map(lambda x, i=flat_idx: x[i], host)
                params, opt_state, loss, aux = step_fn(params, opt_state, batch)
                losses.append(loss)
            if aux is not None and "accuracy" in aux:
                accs.append(aux["accuracy"])
        losses_h = np.asarray(jnp.stack(losses))
        bad = np.flatnonzero(~np.isfinite(losses_h))
        if bad.size:
            raise FloatingPointError(f"the training loss became {losses_h[bad[0]]} at epoch "
                                     f"{epoch}, step {bad[0] + 1} of {steps}; lower the learning "
                                     "rate or check the data for NaN/inf.")
        record = {"epoch": epoch, "train_loss": float(losses_h.mean()),
                  "train_accuracy": float(np.mean(accs)) if accs else None,
                  "steps": steps, "steps_taken": int(np.sum(taken)) if gaf else steps,
                  "mean_agreed": float(np.mean(agreed)) if gaf else None}
        hyper = getattr(opt_state, "hyperparams", None)
        record["lr"] = float(hyper["learning_rate"]) if hyper else None
        if val is not None:
            out = eval_fn(params, val)
            vloss, vaux = out if isinstance(out, tuple) else (out, None)
            record["val_loss"] = float(vloss)
            record["val_accuracy"] = (float(vaux["accuracy"]) if vaux is not None
                                      and "accuracy" in vaux else None)
        if flipped is not None:
            record["memorised"] = _memorised(eval_fn, params, host, flipped)
        record["seconds"] = round(time.perf_counter() - t0, 4)
        if plateau is not None and hyper:
            if record["val_loss"] < best * (1 - plateau.threshold):
                best, waited = record["val_loss"], 0
            else:
                waited += 1
                if waited > plateau.patience:
                    hyper["learning_rate"] = jnp.maximum(hyper["learning_rate"] * plateau.factor,
                                                         plateau.min_lr)
                    waited = 0
        records.append(record)
        if wandb:
            wandb_module.log(record)
    return params, records


def _memorised(eval_fn, params, train, flipped) -> float | None:
    """The share of flipped training rows predicted with their (wrong) training label."""
    flipped = np.asarray(flipped, bool)
    if not flipped.any():
        return 0.0
    rows = jax.tree_util.tree_map(lambda x: x[flipped], train)
    out = eval_fn(params, rows)
    if not isinstance(out, tuple) or "accuracy" not in out[1]:
        return None
    return float(out[1]["accuracy"])


PROBE_MODELS = ("logistic", "mlp")


def probe_sizes(model: str, hidden, dim: int, classes: int) -> list[int]:
    """The layer sizes of a probe: ``[dim, classes]`` for ``logistic``, ``[dim, *hidden,
    classes]`` for ``mlp``."""
    return [int(dim)] + ([int(h) for h in hidden] if model == "mlp" else []) + [int(classes)]


def fit_probe(x: np.ndarray, labels, val_x: np.ndarray, val_labels, classes, *,
              model: str = "logistic", hidden=(128,), method: str = "gaf", epochs: int = 30,
              batch_size: int = 32, microbatches: int = 2, cos_distance_thresh: float = 0.97,
              fusion: str = "pairwise", optimizer: str = "sgd", learning_rate: float = 0.01,
              momentum: float = 0.9, weight_decay: float = 1e-4, plateau: bool = False,
              plateau_factor: float = 0.1, plateau_patience: int = 10, standardize: bool = True,
              label_noise: float = 0.0, seed: int = 0, progress: bool = False):
    """Trains a classifier on feature vectors with GAF (``method="gaf"``) or plain SGD on the
    same rows (``"sgd"``); returns ``(Probe, epoch records)`` (see :func:`train_gaf`).

    Args:
      x, val_x: training and validation features, float32 ``[n, d]`` and ``[m, d]``.
      labels, val_labels: class names, ``[n]`` and ``[m]``, each one of ``classes``.
      classes: the class names, in the order of the probe's outputs.
      standardize: scale features by the training rows' mean and standard deviation.
      label_noise: flip this share of the training labels first (experiments).

    Raises:
      ValueError: options :func:`train_gaf` refuses (too few rows for a step, ...).
      FloatingPointError: the training diverged.
    """
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[v] for v in labels], np.int32)
    yv = np.array([index[v] for v in val_labels], np.int32)
    flipped = None
    if label_noise > 0:
        y, flipped = flip_labels(y, label_noise, len(classes), seed)
        y = y.astype(np.int32)
    if standardize:
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-6] = 1.0
    else:
        mean, scale = np.zeros(x.shape[1], np.float32), np.ones(x.shape[1], np.float32)
    mean, scale = mean.astype(np.float32), scale.astype(np.float32)
    params, apply_fn = mlp(probe_sizes(model, hidden, x.shape[1], len(classes)), seed=seed)
    opt = make_optimizer(optimizer, learning_rate, momentum=momentum, weight_decay=weight_decay)
    schedule = Plateau(factor=plateau_factor, patience=plateau_patience) if plateau else None
    params, records = train_gaf(
        classification_loss(apply_fn), params, opt,
        {"x": (x - mean) / scale, "y": y}, {"x": (val_x - mean) / scale, "y": yv},
        epochs=epochs, batch_size=batch_size, num_batches_to_force_agreement=microbatches,
        cos_distance_thresh=cos_distance_thresh, fusion=fusion, gaf=method == "gaf", seed=seed,
        plateau=schedule, progress=progress, flipped=flipped)
    return Probe(params, tuple(classes), mean, scale), records
