"""Gradient Agreement Filtering for PyTorch models, with the reference package's interface.

``from gio_core.gaf_torch import step_GAF, train_GAF`` replaces ``from gradient_agreement_filtering
import step_GAF, train_GAF`` (gradient-agreement-filtering 0.1.3): the same arguments, defaults,
result dictionaries and printed lines, so a PyTorch training loop written against the reference
runs with its import line changed. The reference's helpers ``_filter_gradients_cosine_sim`` and
``_compute_gradients`` (which its own tests call) are here too, with the same contracts.

What the results mean, as in the reference:

* ``step_GAF`` returns ``{"train_loss", "cosine_distance", "agreed_count", "train_accuracy"}``:
  ``train_loss`` is the sum over micro-batches of each one's mean loss times its size, and
  ``cosine_distance`` the last one computed (to the running fused gradient). It steps the
  optimizer only when at least one micro-batch after the first agreed.
* ``train_GAF`` samples micro-batches with Python's global ``random`` (as the reference does, so a
  seeded run draws the same ones) and prints (``verbose``) one dictionary per epoch.

Differences: bad arguments raise ``ValueError`` naming them (an empty list of micro-batches, a
threshold outside [0, 2], ``args`` missing a field) where the reference fails further in; one
micro-batch gives ``cosine_distance: None`` (the reference fails with ``UnboundLocalError``);
an empty validation set gives ``val_accuracy: nan`` (the reference divides by zero); ``args``
may also be a dict. The JAX
engine (:mod:`gio_core.gaf`: ``gaf_step``, ``train_gaf``) is what ``gio-spark train`` runs; this
module is the one place in ``gio_core`` that imports torch (the ``embed`` extra installs it).
"""
from __future__ import annotations

import os
import random

import torch

__all__ = ["step_GAF", "train_GAF"]

CPU = torch.device("cpu")       # the reference's default device


def _filter_gradients_cosine_sim(G1, G2, cos_distance_thresh):
    """``(the mean of the two gradients, or None when their cosine distance is above the
    threshold; the distance as a float)``. ``G1``, ``G2``: lists of per-parameter tensors."""
    first = torch.cat([g.reshape(-1) for g in G1])
    second = torch.cat([g.reshape(-1) for g in G2])
    distance = 1 - torch.nn.functional.cosine_similarity(first, second, dim=0)
    if distance > cos_distance_thresh:
        return None, distance.item()
    return [(a + b) / 2 for a, b in zip(G1, G2, strict=True)], distance.item()


def _batch_of(dataset, device):
    """Every item of a (small) dataset as one batch, ``(inputs, labels)`` on ``device``. Read
    through a ``DataLoader``, as the reference reads it: the same collation (dtypes, nested
    items), and the same draw from torch's global generator that creating its iterator makes,
    so that dropout or augmentation after it sees the same random numbers."""
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=len(dataset),
                                                  shuffle=False)))
    return batch[0].to(device), batch[1].to(device)


def _compute_gradients(b, optimizer, model, criterion, device):
    """The gradient of ``criterion`` over the whole micro-batch ``b`` (a dataset, for example a
    ``Subset``): ``(list of per-parameter gradients, loss, labels, outputs)``; the parameters'
    ``.grad`` are left zeroed."""
    inputs, labels = _batch_of(b, device)
    optimizer.zero_grad()
    outputs = model(inputs)
    loss = criterion(outputs, labels)
    loss.backward()
    gradients = [p.grad.detach().clone() for p in model.parameters()]
    optimizer.zero_grad()
    return gradients, loss, labels, outputs


def _wandb_or_fail(wandb):
    if not wandb:
        return None
    if not os.getenv("WANDB_API_KEY"):
        raise RuntimeError("wandb=True needs a Weights & Biases API key: set WANDB_API_KEY, or "
                           "pass wandb=False.")
    import wandb as wandb_module  # the reference logs there; not a dependency of gio-spark

    return wandb_module


def _correct(outputs, labels) -> int:
    return int((outputs.detach().argmax(dim=1) == labels).sum().item())


def step_GAF(model, optimizer, criterion, list_of_microbatches, wandb=True, verbose=True,
             cos_distance_thresh=1.0, device=CPU):
    """One GAF step over ``list_of_microbatches`` (datasets of equal size, for example
    ``Subset``s): the first micro-batch's gradient is fused, pair by pair, with each next one
    whose cosine distance to it is at most ``cos_distance_thresh`` (tau, in [0, 2]); the
    optimizer steps on the fused gradient when at least one agreed. Returns ``{"train_loss",
    "cosine_distance", "agreed_count", "train_accuracy"}`` (see the module's notes)."""
    if len(list_of_microbatches) < 1:
        raise ValueError("list_of_microbatches is empty; give at least one micro-batch (two for "
                         "any filtering).")
    if not 0 <= float(cos_distance_thresh) <= 2:
        raise ValueError(f"cos_distance_thresh must be in [0, 2] (a cosine distance); got "
                         f"{cos_distance_thresh!r}.")
    logger = _wandb_or_fail(wandb)
    model.train()
    fused, loss, labels, outputs = _compute_gradients(list_of_microbatches[0], optimizer, model,
                                                      criterion, device)
    total_loss = loss * labels.size(0)
    correct = _correct(outputs, labels)
    agreed, distance = 0, None
    for i, microbatch in enumerate(list_of_microbatches[1:]):
        gradient, loss_i, labels_i, outputs_i = _compute_gradients(microbatch, optimizer, model,
                                                                   criterion, device)
        candidate, distance = _filter_gradients_cosine_sim(fused, gradient, cos_distance_thresh)
        total_loss = total_loss + loss_i * labels_i.size(0)
        correct += _correct(outputs_i, labels_i)
        if verbose:
            print(f"GAF fuse iter {i}, Cosine Distance: {distance:.4f}")
        if candidate is not None:
            fused, agreed = candidate, agreed + 1
    if agreed:
        with torch.no_grad():
            for param, gradient in zip(model.parameters(), fused, strict=True):
                param.grad = gradient
        optimizer.step()
    result = {"train_loss": total_loss.item(), "cosine_distance": distance,
              "agreed_count": agreed,
              "train_accuracy": correct / (labels.size(0) * len(list_of_microbatches))}
    if verbose:
        print(result)
    if logger is not None:
        logger.log(result)
    return result


def _field(args, name):
    value = args.get(name) if isinstance(args, dict) else getattr(args, name, None)
    if value is None:
        raise ValueError(f"args needs {name} (args.epochs, args.batch_size and "
                         "args.num_batches_to_force_agreement)")
    return value


def _iid_microbatches(dataset, batch_size, count):
    """``count`` micro-batches of ``batch_size`` rows, drawn with Python's global ``random``:
    one shuffle of all indices, cut in order (cycled when the data is short)."""
    indices = list(range(len(dataset)))
    random.shuffle(indices)
    if len(indices) < batch_size * count:
        indices = (indices * ((batch_size * count) // len(indices) + 1))[:batch_size * count]
    return [torch.utils.data.Subset(dataset, indices[i * batch_size:(i + 1) * batch_size])
            for i in range(count)]


def train_GAF(model, args, train_dataset, val_dataset, optimizer, criterion, wandb=True,
              verbose=True, cos_distance_thresh=1.0, device=CPU):
    """Trains ``model`` with :func:`step_GAF` for ``args.epochs`` epochs of ``len(train_dataset)
    // (args.batch_size * args.num_batches_to_force_agreement)`` steps, each on that many i.i.d.
    micro-batches of ``args.batch_size``; after each epoch, the validation loss (the mean over
    ``val_dataset``'s batches) and accuracy. ``args``: a namespace or a dict. Returns None, as
    the reference does; ``verbose`` prints each epoch's dictionary."""
    epochs = int(_field(args, "epochs"))
    batch_size = int(_field(args, "batch_size"))
    count = int(_field(args, "num_batches_to_force_agreement"))
    logger = _wandb_or_fail(wandb)
    model.to(device)
    val_loader = torch.utils.data.DataLoader(val_dataset, batch_size=batch_size, shuffle=False)
    result: dict = {}
    for epoch in range(epochs):
        model.train()
        running, steps = 0.0, len(train_dataset) // (batch_size * count)
        for _ in range(steps):
            result = step_GAF(model, optimizer, criterion,
                              _iid_microbatches(train_dataset, batch_size, count), wandb=wandb,
                              verbose=verbose, cos_distance_thresh=cos_distance_thresh,
                              device=device)
            running += result["train_loss"]
        model.eval()
        val_loss, batches, right, seen = 0.0, 0, 0, 0
        with torch.no_grad():
            for inputs, labels in val_loader:
                inputs, labels = inputs.to(device), labels.to(device)
                outputs = model(inputs)
                val_loss += criterion(outputs, labels).item()
                batches += 1
                right += _correct(outputs, labels)
                seen += labels.size(0)
        message = {"epoch": epoch + 1, "train_loss": running / max(steps, 1),
                   "val_loss": val_loss / max(batches, 1),
                   "train_accuracy": result.get("train_accuracy"),
                   # a float32 division, as the reference's (0.44999998807907104, not 0.45)
                   "val_accuracy": (torch.tensor(right) / seen).item()}
        if verbose:
            print(message)
        if logger is not None:
            try:
                logger.log(message)
            except Exception as err:  # noqa: BLE001 - as the reference: a lost log line only
                print(f"Failed to log to wandb: {err}")
    return None
