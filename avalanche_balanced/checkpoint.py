"""Checkpoint and resume for SARL-GELU and plugin runs, with plain state dicts.

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill, which
fails on this torch stack; here every piece of state is saved explicitly:
model, optimiser, LR scheduler, the strategy's own state (prototypes, frozen
previous model, similarity network and its optimiser, threshold), the whole
buffer (tensors, groups, reservoir counters, its generator), the training
clock, the evaluator's metric states (forgetting needs earlier accuracies) and
scalar history (the accuracy matrix), and every RNG state (Avalanche's ``RNGManager``).

The file is written to a temporary name and renamed, so a crash while writing leaves the previous
checkpoint intact, and carries a SHA-256 of its content, checked on load (torch's zip reader does
not check its CRCs: a flipped byte would load). A load checks the model, the optimiser, every
plugin's state and the configuration before it assigns anything: it restores all or nothing.
"""
import hashlib
import io
import os
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.distributed as dist
from avalanche.training.determinism.rng_manager import RNGManager
from avalanche.training.plugins import LRSchedulerPlugin

from .features import frozen_copy

__all__ = ["save_checkpoint", "load_checkpoint", "read_checkpoint_file", "write_checkpoint_file", "rng_state",
           "set_rng_state", "non_finite_entries"]

FORMAT_VERSION = 4  # 2: the buffer keeps its grouping rule's state; 3: its replay settings; 4: a checksum
MAGIC = b"avalanche-balanced checkpoint\n"  # then the SHA-256 of the payload (32 bytes), then the payload


def rng_state() -> Dict[str, Any]:
    """States of the global generators Avalanche's ``RNGManager`` manages (Python, NumPy, torch CPU
    and CUDA)."""
    return RNGManager.__getstate__()


def set_rng_state(state: Dict[str, Any]) -> None:
    # Generator states must be CPU byte tensors, whatever map_location moved them to.
    def to_cpu(value):
        if isinstance(value, torch.Tensor):
            return value.cpu()
        if isinstance(value, (list, tuple)):
            return type(value)(to_cpu(v) for v in value)
        if isinstance(value, dict):
            return {k: to_cpu(v) for k, v in value.items()}
        return value
    RNGManager.__setstate__(to_cpu(state))


def _scalar_history(evaluator) -> Dict[str, tuple]:
    """The evaluator's history of scalar metrics (what :func:`accuracy_matrix` and the
    comparison read back); figures and histograms are left out."""
    history = getattr(evaluator, "all_metric_results", {})
    return {name: (list(steps), list(values)) for name, (steps, values) in history.items()
            if all(isinstance(v, (int, float)) for v in values)}


def _metric_states(evaluator) -> Dict[int, bytes]:
    """Pickled state of each evaluator metric that can be pickled on its own.

    Avalanche's metrics (accuracy, forgetting, BWT, ...) are plain objects;
    metrics that point at the strategy (ours read the buffer) keep no state
    between experiences and are skipped.
    """
    states = {}
    for i, metric in enumerate(getattr(evaluator, "metrics", [])):
        try:
            states[i] = pickle.dumps(metric.__dict__)
        except (pickle.PicklingError, TypeError, AttributeError):
            continue
    return states


def _schedulers(strategy):
    return [p for p in strategy.plugins if isinstance(p, LRSchedulerPlugin)]


def non_finite_entries(state, prefix: str = "") -> list:
    """Names of the floating-point tensors in a (nested) state that hold NaN or inf."""
    if isinstance(state, torch.Tensor):
        bad = state.is_floating_point() and not bool(torch.isfinite(state).all())
        return [prefix or "tensor"] if bad else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [name for key, value in items for name in non_finite_entries(value, f"{prefix}/{key}" if prefix else str(key))]


def save_checkpoint(path, strategy, *, config: Optional[dict] = None, extra: Optional[dict] = None) -> None:
    """Write ``strategy``'s whole training state to ``path`` atomically.

    ``config`` (e.g. the run's arguments) is stored and checked on load;
    ``extra`` holds anything the caller wants back (e.g. results so far).
    Under torch DDP every rank must call it: every rank's RNG states are gathered,
    rank 0 alone writes (model, optimiser and buffer are the same on every rank), and
    the ranks wait for the file before going on. A state holding NaN or inf anywhere (weights, optimiser, buffer,
    prototypes, teacher) is refused with ``ValueError`` naming the entries, and
    the file at ``path`` is left as it was: the last checkpoint on disk is
    always the last finite one.
    """
    path = Path(path)
    state = {
        "format": FORMAT_VERSION,
        "config": config or {},
        "extra": extra or {},
        "model": strategy.model.state_dict(),
        "optimizer": strategy.optimizer.state_dict(),
        "schedulers": [p.scheduler.state_dict() for p in _schedulers(strategy)],
        "clock": dict(vars(strategy.clock)),
        "metrics": _metric_states(strategy.evaluator),
        "metric_history": _scalar_history(strategy.evaluator),
        "rng": rng_state(),
    }
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    if distributed:  # each rank's own generators, so that a resumed rank continues its own streams
        state["rank_rng"] = [None] * dist.get_world_size()
        dist.all_gather_object(state["rank_rng"], state["rng"])
    # Plugins with state of their own (the replay plugin: its buffer and counters).
    state["plugins"] = {i: p.state_dict() for i, p in enumerate(strategy.plugins) if hasattr(p, "state_dict")}
    for name in ("similarity_net", "threshold", "prototypes"):
        module = getattr(strategy, name, None)
        if module is not None:
            state[name] = module.state_dict()
    old_model = getattr(strategy, "old_model", None)
    state["old_model"] = old_model.state_dict() if old_model is not None else None
    bad = non_finite_entries({k: state[k] for k in state if k not in ("rng", "metrics", "metric_history")})
    if bad:
        raise ValueError(f"refusing to checkpoint a non-finite state ({', '.join(bad[:5])}"
                         f"{', ...' if len(bad) > 5 else ''}); {path} keeps the last finite one")
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint path {path} is a directory; give a file name")
    if not distributed or dist.get_rank() == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_checkpoint_file(path, state)
    if distributed:
        dist.barrier()  # no rank goes on (or loads) before the file is complete


def load_checkpoint(path, strategy, *, config: Optional[dict] = None) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint` into ``strategy``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the
    checkpoint was written with another ``config`` (the differing keys are
    named) or another buffer configuration. Returns the ``extra`` dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    state = _read(path, strategy.device)
    if state.get("format") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has format {state.get('format')!r}; this version reads "
                         f"format {FORMAT_VERSION} (re-run from the start)")
    if config is not None:
        saved = state.get("config", {})
        differ = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if differ:
            detail = ", ".join(f"{k}: {saved.get(k)!r} (checkpoint) vs {config.get(k)!r} (now)" for k in differ)
            raise ValueError(f"checkpoint {path} is from another configuration: {detail}")
    stateful = {i: p for i, p in enumerate(strategy.plugins) if hasattr(p, "state_dict")}
    _check_fits(path, state, strategy, stateful)  # everything before anything is assigned
    for i, plugin_state in state["plugins"].items():
        stateful[i].load_state_dict(plugin_state)
    strategy.model.load_state_dict(state["model"])
    strategy.optimizer.load_state_dict(state["optimizer"])
    for plugin, sched_state in zip(_schedulers(strategy), state["schedulers"]):
        plugin.scheduler.load_state_dict(sched_state)
    for name in ("similarity_net", "threshold", "prototypes"):
        if name in state:
            getattr(strategy, name).load_state_dict(state[name])
    if state.get("old_model") is not None:
        strategy.old_model = frozen_copy(strategy.model)
        strategy.old_model.load_state_dict(state["old_model"])
    vars(strategy.clock).update(state["clock"])
    metrics = getattr(strategy.evaluator, "metrics", [])
    for i, blob in state["metrics"].items():
        metrics[i].__dict__.update(pickle.loads(blob))
    history = getattr(strategy.evaluator, "all_metric_results", None)
    if history is not None:
        for name, (steps, values) in state.get("metric_history", {}).items():
            history[name] = (list(steps), list(values))
    rank_rng = state.get("rank_rng")
    if rank_rng is not None and dist.is_initialized():
        if len(rank_rng) != dist.get_world_size():
            raise ValueError(f"checkpoint {path} was written by {len(rank_rng)} processes, this run has "
                             f"{dist.get_world_size()}")
        set_rng_state(rank_rng[dist.get_rank()])
    else:
        set_rng_state(state["rng"])
    return state["extra"]


def write_checkpoint_file(path, state: dict) -> None:
    """Write ``state`` to ``path`` with its checksum, atomically (a temporary file renamed; no temporary
    file is left behind, whatever fails)."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + hashlib.sha256(payload).digest() + payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX: readers see the old or the new file, never half
    finally:
        if tmp.exists():
            tmp.unlink()


def read_checkpoint_file(path, device="cpu") -> dict:
    """The state in a checkpoint file, after checking its checksum; ``ValueError`` naming the file
    otherwise."""
    return _read(Path(path), device)


def _read(path: Path, device) -> dict:
    """The checkpoint's state, after checking its checksum; ``ValueError`` naming the file otherwise."""
    data = path.read_bytes()
    head = len(MAGIC) + 32
    if not data.startswith(MAGIC) or len(data) < head:
        raise ValueError(f"checkpoint {path} cannot be read: not a checkpoint of this library, or truncated")
    payload = data[head:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC):head]:
        raise ValueError(f"checkpoint {path} is corrupted: its content does not match its SHA-256 checksum")
    try:
        return torch.load(io.BytesIO(payload), map_location=device, weights_only=False)
    except Exception as err:  # a payload that passed the checksum but is not a state (written by another tool)
        raise ValueError(f"checkpoint {path} cannot be read: {err}") from err


def _tensor_shapes(state: dict) -> dict:
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def _check_fits(path, state: dict, strategy, stateful: dict) -> None:
    """Raise ``ValueError`` unless every part of ``state`` loads into ``strategy``: the model's and the
    strategy's own modules (same keys and shapes), the optimiser (same groups and sizes), the
    stateful plugins (each checks its own state), the schedulers."""
    if set(stateful) != set(state["plugins"]):
        raise ValueError(f"checkpoint {path} has state for plugins {sorted(state['plugins'])}, "
                         f"this strategy has stateful plugins {sorted(stateful)}")
    modules = {"model": strategy.model, **{name: getattr(strategy, name, None) for name in ("similarity_net",)
                                           if name in state}}
    for name, module in modules.items():
        saved, now = _tensor_shapes(state[name]), _tensor_shapes(module.state_dict())
        if saved != now:
            differ = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            raise ValueError(f"checkpoint {path} does not fit this {name}: {', '.join(differ[:5])}"
                             f"{', ...' if len(differ) > 5 else ''} differ (missing, unexpected or of another shape)")
    groups, now = state["optimizer"].get("param_groups", []), strategy.optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in now]:
        raise ValueError(f"checkpoint {path} does not fit this optimizer: parameter groups of sizes "
                         f"{[len(g['params']) for g in groups]} vs {[len(g['params']) for g in now]}")
    if len(state["schedulers"]) != len(_schedulers(strategy)):
        raise ValueError(f"checkpoint {path} has {len(state['schedulers'])} LR schedulers, this strategy "
                         f"{len(_schedulers(strategy))}")
    for i, plugin_state in state["plugins"].items():
        check = getattr(stateful[i], "check_state_dict", None)
        if check is not None:
            try:
                check(plugin_state)
            except ValueError as err:
                raise ValueError(f"checkpoint {path}, plugin {type(stateful[i]).__name__}: {err}") from err
    metrics = getattr(strategy.evaluator, "metrics", [])
    if any(int(i) >= len(metrics) for i in state["metrics"]):
        raise ValueError(f"checkpoint {path} holds metric states for {len(state['metrics'])} metrics, this "
                         f"evaluator has {len(metrics)}")
