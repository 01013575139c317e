"""Recording a model's calls: forward hooks in a context manager, a replay of the traced graph
that keeps chosen intermediate values, eval mode and the plain (hookable) attention path.

Hooks are registered inside a context manager and removed in ``finally``; they return None, so
the model computes exactly what it computes without them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, Optional

import torch
from torch import nn

__all__ = ["Replay", "eval_mode", "forward_replay", "plain_attention", "record_calls"]


@contextlib.contextmanager
def record_calls(named: Mapping[str, nn.Module], sink: dict,
           attention: Optional[Mapping[str, nn.Module]] = None) -> Iterator[None]:
    """Every call of each named module appends ``(input, output)`` to ``sink[name]``.

    ``attention`` maps an ``out_proj`` name to its ``nn.MultiheadAttention``, which applies it
    functionally: the hook on the attention re-runs it with ``out_proj`` as the identity to get
    the projection's input (the heads' concatenated output)."""
    handles = []
    busy = []

    def make(name: str):
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            # clone: a later in-place op (ReLU(inplace=True), +=) would rewrite the records
            sink.setdefault(name, []).append((args[0].detach().clone(), out.detach().clone()))
        return hook

    def make_attention(name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            if busy:   # the re-run below
                return
            E = module.out_proj.weight.shape[0]
            eye = torch.eye(E, dtype=module.out_proj.weight.dtype, device=module.out_proj.weight.device)
            busy.append(True)
            try:
                heads = torch.func.functional_call(
                    module, {"out_proj.weight": eye, "out_proj.bias": torch.zeros_like(eye[0])},
                    args, kwargs)[0]
            finally:
                busy.pop()
            sink.setdefault(name, []).append((heads.detach().clone(), out[0].detach().clone()))
        return hook

    try:
        for name, module in named.items():
            handles.append(module.register_forward_hook(make(name)))
        for name, module in (attention or {}).items():
            handles.append(module.register_forward_hook(make_attention(name), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


class Replay(torch.fx.Interpreter):
    """Runs a traced model node by node, keeping the values of the ``watch`` nodes (residual
    adds) in ``sink["@" + node name]``; the model's own modules run, so hooks fire."""

    def __init__(self, module: torch.fx.GraphModule, watch: set, sink: dict):
        super().__init__(module)
        self.watch, self.sink = watch, sink

    def run_node(self, node: Any) -> Any:
        value = super().run_node(node)
        if node.name in self.watch:
            self.sink.setdefault("@" + node.name, []).append(value.detach().clone())
        return value


def forward_replay(model: nn.Module, replay: Optional[Replay], args: tuple, kwargs: dict) -> Any:
    if replay is None:
        return model(*args, **kwargs)
    placeholders = [n.target for n in replay.module.graph.nodes if n.op == "placeholder"]
    if kwargs:   # keyword arguments in the traced signature's order (defaults kept)
        args = list(args)
        for name in placeholders[len(args):]:
            if name not in kwargs:
                break
            args.append(kwargs.pop(name))
        if kwargs:
            msg = f"inputs give keyword arguments {sorted(kwargs)} the traced forward does not take"
            raise TypeError(msg)
    return replay.run(*args)


@contextlib.contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    modes = [m.training for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@contextlib.contextmanager
def plain_attention() -> Iterator[None]:
    """The fused fast path of nn.MultiheadAttention / TransformerEncoderLayer (taken in eval
    mode without grad) skips the Linear modules' hooks: turned off while capturing."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    try:
        mha.set_fastpath_enabled(False)
        yield
    finally:
        mha.set_fastpath_enabled(before)
