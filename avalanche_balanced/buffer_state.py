"""A :class:`~avalanche_balanced.buffer.BalancedBuffer`'s state for checkpoints: what it is
(its configuration, checked on load) and what it holds (tensors, counters, generator, rules)."""
import torch

from .buffer_storage import STORAGE
from .semantic import ClassPrototypes

__all__ = ["STORAGE", "buffer_config", "buffer_state_dict", "load_buffer_state"]



def buffer_config(buffer) -> dict:
    """Every setting a resumed run must share: storage, rules, and the replay distribution's."""
    return dict(grouping=buffer.grouping, insertion=buffer.insertion, similarity=buffer.similarity,
                feature_dtype=str(buffer.feature_dtype), centered=getattr(buffer.similarity_rule, "centered", None),
                eps=buffer.eps, max_ratio=buffer.max_ratio, protect_current=buffer.protect_current,
                uniform_mix=buffer.uniform_mix, balance_weight=buffer.balance_weight,
                hierarchical=buffer.hierarchical, difficulty_weight=buffer.difficulty_weight,
                target_ess=buffer.target_ess, share=buffer.share, replay_order=buffer.replay_order,
                max_size=buffer.max_size)


def buffer_state_dict(buffer) -> dict:
    """Everything needed to continue exactly."""
    state = {name: getattr(buffer, name) for name in STORAGE}
    state.update(current_classes=buffer._current_classes, max_size=buffer.max_size, size=buffer.size,
                 num_seen=buffer.num_seen, step=buffer.step, config=buffer_config(buffer),
                 generator=buffer.generator.get_state(), grouping=buffer.grouping_rule.state_dict(),
                 prototypes=buffer.prototypes.state_dict() if buffer.prototypes is not None else None,
                 replay_pass=buffer._pass)
    return state


def load_buffer_state(buffer, state: dict) -> None:
    """Restore :func:`buffer_state_dict` into ``buffer``; another configuration raises
    ``ValueError`` naming every setting that differs."""
    saved, now = dict(state["config"], max_size=state["max_size"]), buffer_config(buffer)
    saved.setdefault("share", "sample")  # states written before these options existed
    saved.setdefault("replay_order", "independent")
    differ = sorted(k for k in set(saved) | set(now) if saved.get(k, "unrecorded") != now.get(k, "unrecorded"))
    if differ:
        detail = ", ".join(f"{k}: {saved.get(k, 'unrecorded')!r} (state) vs {now.get(k, 'unrecorded')!r} (buffer)"
                           for k in differ)
        raise ValueError(f"buffer state is from another configuration: {detail}")
    if state["examples"] is not None:
        width, feats = state["logits"].shape[1], state["features"].shape[1]
        if buffer.prototypes is None:
            buffer.prototypes = ClassPrototypes(width, feats).to(buffer.device)
        buffer.prototypes.grow(width)  # a head that grew after the strategy was built
        buffer.prototypes.load_state_dict(state["prototypes"])
    for name in STORAGE:
        value = state[name]
        setattr(buffer, name, None if value is None else value.to(buffer.device))
    current = state.get("current_classes")
    buffer._current_classes = None if current is None else current.to(buffer.device)
    buffer.size, buffer.num_seen, buffer.step = state["size"], state["num_seen"], state["step"]
    buffer.generator.set_state(state["generator"].cpu())  # a generator state is a CPU byte tensor
    buffer.grouping_rule.load_state_dict(state["grouping"])
    order, position, contents = state.get("replay_pass", (None, 0, None))
    buffer._pass = (None if order is None else order.to(buffer.device), position, contents)
    buffer.invalidate_caches()
