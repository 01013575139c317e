"""What a model's graph says about each prunable layer: the one home of that knowledge.

For every ``nn.Linear`` / ``nn.Conv1d`` / ``nn.Conv2d`` the model is traced once with
``torch.fx`` and the uses of the layer's output are followed:

    layer -> [Dropout/Identity] -> [BatchNorm] -> [Dropout/Identity] -> activation
    layer -> [BatchNorm] -> add(., skip) -> ReLU                       (a residual block)

giving a :class:`LayerPattern`: the activation that follows (``"relu"`` is the one Net-Trim's
inequalities use; ``"relu6"``, ``"gelu"``, ``"silu"``, ``"leaky_relu"``, ``"tanh"`` are solved
with the linear program on the pre-activations), the eval-mode BatchNorm folded into the layer's
program (``norm``), and the fx node of a residual add whose other operand is a per-sample offset
known before the ReLU (``offset``). ``nn.TransformerEncoderLayer`` is a leaf for fx; its
``linear1`` takes the layer's own activation.

Layers the toolkit cannot prune (``nn.MultiheadAttention``'s projections, which it applies
functionally; ``Embedding``, recurrent layers, transposed and 3-D convolutions) are listed in
:func:`skipped_layers` with the reason, and so are a layer whose weight is tied to another
module's (the tensor is pruned once: :func:`tied_layers`) and the modules holding weights of a
kind the toolkit does not know (:func:`unknown_weights`, named with their share of the weights
by :func:`warn_unknown_weights`).

When tracing fails (data-dependent control flow) the order inside ``nn.Sequential`` containers is
used instead: it sees module activations and BatchNorms, but no functional ReLU and no residual
add. :class:`GraphWarning` says so once and names the layers left linear.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerPattern", "ModelPlan", "GraphWarning", "analyze", "skipped_layers",
           "PRUNABLE", "ACTIVATION_NAMES", "batchnorm_affine", "flatten_sequential",
           "takes_token_ids", "attention_projections", "UnknownWeightsWarning",
           "owned_parameters", "parameter_counts", "shared_parameters", "tied_layers",
           "unknown_weights", "describe_skipped", "warn_unknown_weights"]

#: Module types Net-Trim prunes.
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d)
#: Activation names ``activations=`` accepts (None: no activation). Only "relu" gets the
#: inequalities; the others are solved with the linear program on the pre-activations.
ACTIVATION_NAMES = ("relu", "relu6", "gelu", "silu", "leaky_relu", "tanh", None)
#: Modules that pass an activation through unchanged in eval mode.
_TRANSPARENT = (nn.Dropout, nn.Identity)
_ACT_MODULES = ((nn.ReLU, "relu"), (nn.ReLU6, "relu6"), (nn.GELU, "gelu"), (nn.SiLU, "silu"),
                (nn.LeakyReLU, "leaky_relu"), (nn.Tanh, "tanh"))
_ACT_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
                  F.relu6: "relu6", F.gelu: "gelu", F.silu: "silu", F.leaky_relu: "leaky_relu",
                  torch.tanh: "tanh", F.tanh: "tanh"}
_ACT_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh"}
_ADD_FUNCTIONS = (operator.add, operator.iadd, torch.add)
_ADD_METHODS = ("add", "add_")
#: Not prunable, with the reason shown in reports.
_UNSUPPORTED = (
    (nn.MultiheadAttention, "the q/k/v input projection of nn.MultiheadAttention "
                            "(in_proj_weight) is a bare parameter, not a layer: not pruned "
                            "(its out_proj is)"),
    (nn.Embedding, "Embedding is a lookup table, not a product with its input"),
    (nn.EmbeddingBag, "EmbeddingBag is a lookup table, not a product with its input"),
    (nn.RNNBase, "recurrent layers (LSTM/GRU/RNN) are not supported"),
    (nn.modules.conv._ConvTransposeNd, "transposed convolutions are not supported"),
    (nn.Conv3d, "3-D convolutions are not supported"),
)


class GraphWarning(UserWarning):
    """The model's graph could not be read fully (fx tracing failed): some layers are linear."""


@dataclass(frozen=True)
class LayerPattern:
    """What follows one layer (see the module docstring).

    Attributes
    ----------
    activation : str or None
        One of :data:`ACTIVATION_NAMES`.
    norm : str or None
        Name of the eval-mode BatchNorm between the layer and its activation.
    offset : str or None
        Name of the fx node adding a skip term before the ReLU (``relu(bn(conv(x)) + skip)``).
    """

    activation: Optional[str] = None
    norm: Optional[str] = None
    offset: Optional[str] = None


@dataclass
class ModelPlan:
    """The graph reading of a whole model (:func:`analyze`).

    Attributes
    ----------
    patterns : dict[str, LayerPattern]
        Every prunable layer of the model.
    skipped : dict[str, str]
        Layers (or modules) not pruned, with the reason.
    traced : bool
        Whether ``torch.fx`` traced the model.
    graph : torch.fx.Graph or None
        The traced graph (replayed to record residual offsets).
    """

    patterns: dict
    skipped: dict = field(default_factory=dict)
    traced: bool = False
    graph: Any = None

    @property
    def needs_graph(self) -> bool:
        """True when some layer's offset must be read from an fx node during capture."""
        return any(p.offset for p in self.patterns.values())


# ---- node tests ---------------------------------------------------------------------------------
def _activation_of(node: Any, modules: Mapping[str, nn.Module]) -> Optional[str]:
    if node.op == "call_module":
        module = modules.get(node.target)
        for kind, name in _ACT_MODULES:
            if type(module) is kind:
                return name
        return None
    if node.op == "call_function":
        return _ACT_FUNCTIONS.get(node.target)
    if node.op == "call_method":
        return _ACT_METHODS.get(node.target)
    return None


def _is_add(node: Any) -> bool:
    tensors = [a for a in node.args if isinstance(a, torch.fx.Node)]
    if len(tensors) != 2 or node.kwargs.get("alpha", 1) != 1:
        return False
    return (node.op == "call_function" and node.target in _ADD_FUNCTIONS) or \
        (node.op == "call_method" and node.target in _ADD_METHODS)


def _is_norm(module: Optional[nn.Module]) -> bool:
    """An eval-mode BatchNorm is a fixed per-channel affine map when it tracks running stats."""
    return isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and module.running_var is not None


def _single_user(node: Any, modules: Mapping[str, nn.Module]) -> Optional[Any]:
    """The only consumer of ``node`` after Dropout/Identity, or None when there are several."""
    users = list(node.users)
    while len(users) == 1 and users[0].op == "call_module" and \
            isinstance(modules.get(users[0].target), _TRANSPARENT):
        users = list(users[0].users)
    return users[0] if len(users) == 1 else None


def _pattern_fx(node: Any, modules: Mapping[str, nn.Module]) -> LayerPattern:
    user = _single_user(node, modules)
    norm = None
    if user is not None and user.op == "call_module" and _is_norm(modules.get(user.target)):
        norm = user.target
        user = _single_user(user, modules)
    if user is None:
        return LayerPattern(norm=norm)
    act = _activation_of(user, modules)
    if act is not None:
        return LayerPattern(activation=act, norm=norm)
    if _is_add(user):
        after = _single_user(user, modules)
        if after is not None and _activation_of(after, modules) == "relu":
            return LayerPattern(activation="relu", norm=norm, offset=user.name)
    return LayerPattern(norm=norm)


def _encoder_activation(layer: nn.TransformerEncoderLayer) -> Optional[str]:
    act = layer.activation
    if isinstance(act, nn.Module):
        return next((name for kind, name in _ACT_MODULES if type(act) is kind), None)
    return _ACT_FUNCTIONS.get(act)


def _encoder_patterns(model: nn.Module) -> dict:
    """``linear1`` of every ``nn.TransformerEncoderLayer`` (a leaf for fx) takes its activation."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer):
            prefix = f"{name}." if name else ""
            found[f"{prefix}linear1"] = LayerPattern(activation=_encoder_activation(module))
    return found


def flatten_sequential(module: nn.Module, prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``(name, module)`` of a Sequential's leaves in order, nested Sequentials opened."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            yield from flatten_sequential(child, full + ".")
        else:
            yield full, child


def _patterns_sequential(model: nn.Module) -> dict:
    found: dict = {}
    containers = [("", model)] if isinstance(model, nn.Sequential) else []
    containers += [(n + ".", m) for n, m in model.named_modules()
                   if n and isinstance(m, nn.Sequential)]
    for prefix, seq in containers:
        chain = list(flatten_sequential(seq, prefix))

        def skip(j):
            while j < len(chain) and isinstance(chain[j][1], _TRANSPARENT):
                j += 1
            return j

        for i, (name, module) in enumerate(chain):
            if not isinstance(module, PRUNABLE) or name in found:
                continue
            j, norm = skip(i + 1), None
            if j < len(chain) and _is_norm(chain[j][1]):
                norm, j = chain[j][0], skip(j + 1)
            act = None
            if j < len(chain):
                act = next((a for kind, a in _ACT_MODULES if type(chain[j][1]) is kind), None)
            found[name] = LayerPattern(activation=act, norm=norm)
    return found


def skipped_layers(model: nn.Module) -> dict[str, str]:
    """``{name: reason}`` of the layers Net-Trim leaves as they are (see the module docstring),
    in model order: the unsupported layer types, the prunable layers whose weight is tied to
    another module's (:func:`tied_layers`), and the modules holding weights of a kind Net-Trim
    does not know (:func:`unknown_weights`).

    ``nn.MultiheadAttention``'s ``out_proj`` is not among them: it is captured at the module's
    own call (:func:`attention_projections`).
    """
    tied, unknown = tied_layers(model), unknown_weights(model)
    skipped = {}
    for name, module in model.named_modules():
        reason = next((why for kind, why in _UNSUPPORTED if isinstance(module, kind)), None)
        reason = reason or tied.get(name) or unknown.get(name, (0, None))[1]
        if reason:
            skipped[name] = reason
    return skipped


def attention_projections(model: nn.Module) -> dict[str, str]:
    """``{out_proj name: its nn.MultiheadAttention's name}``: Linear layers the attention
    applies functionally (their hooks never fire), recorded by a hook on the attention."""
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            prefix = f"{name}." if name else ""
            found[f"{prefix}out_proj"] = name
    return found


def analyze(model: nn.Module, *, warn: bool = True) -> ModelPlan:
    """Read the model's graph: a :class:`LayerPattern` for every prunable layer.

    With ``warn=True`` a failed trace raises one :class:`GraphWarning` naming the layers whose
    activation could not be seen (they are solved as linear layers, which is always safe) and
    pointing to ``activations=``.
    """
    modules = dict(model.named_modules())
    skipped = skipped_layers(model)
    names = [n for n, m in modules.items() if isinstance(m, PRUNABLE) and n not in skipped]
    graph, error = None, None
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure falls back to the structure
        error = exc
    found: dict = {}
    if graph is not None:
        counts: dict = {}
        for node in graph.nodes:
            if node.op == "call_module" and node.target in names:
                counts[node.target] = counts.get(node.target, 0) + 1
                found[node.target] = _pattern_fx(node, modules)
        # a layer called more than once (weight sharing) is linear: its uses may differ
        for name, count in counts.items():
            if count > 1:
                found[name] = LayerPattern()
    else:
        found = _patterns_sequential(model)
    for name, pattern in _encoder_patterns(model).items():
        if name in names:
            found[name] = pattern
    patterns = {n: found.get(n, LayerPattern()) for n in names}
    if graph is None and warn:
        linear = [n for n, p in patterns.items() if p.activation is None]
        msg = (f"torch.fx could not trace the model ({type(error).__name__}: "
               f"{str(error).splitlines()[0] if str(error) else ''}); activations were read from "
               f"nn.Sequential order only, and these layers are solved as linear (no ReLU "
               f"inequalities): {linear}. Declare functional ReLUs with "
               "activations={name: 'relu'}.")
        warnings.warn(msg, GraphWarning, stacklevel=3)
    return ModelPlan(patterns=patterns, skipped=skipped, traced=graph is not None, graph=graph)


def batchnorm_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, c)`` of an eval-mode BatchNorm as the per-channel map ``a * z + c``."""
    var, mean = bn.running_var.detach(), bn.running_mean.detach()
    a = torch.rsqrt(var + bn.eps)
    if bn.weight is not None:
        a = a * bn.weight.detach()
    c = -a * mean
    if bn.bias is not None:
        c = c + bn.bias.detach()
    return a, c


def takes_token_ids(model: nn.Module) -> bool:
    """True when the model's input goes first into an ``nn.Embedding`` (it needs integer ids):
    read from the traced graph, or else from the first module that holds parameters."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable: the first module with parameters decides
        for module in model.modules():
            if next(module.parameters(recurse=False), None) is not None:
                return isinstance(module, (nn.Embedding, nn.EmbeddingBag))
        return False
    modules = dict(model.named_modules())
    first = next((n for n in graph.nodes if n.op == "placeholder"), None)
    return first is not None and any(
        u.op == "call_module" and isinstance(modules.get(u.target), (nn.Embedding, nn.EmbeddingBag))
        for u in first.users)


# ---- which weights: tied parameters and weights in modules the toolkit does not know ----------
class UnknownWeightsWarning(UserWarning):
    """Some of the model's weights sit in modules Net-Trim does not know how to prune (a custom
    layer, transformers' ``Conv1D``): they stay dense. The message names them and their share."""


def _storage(tensor: torch.Tensor) -> Any:
    """Identity of the memory behind ``tensor``: two parameters with the same key share values
    (without memory, a meta tensor say, the tensor object itself is the key)."""
    try:
        pointer = tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):   # no storage (some tensor subclasses)
        pointer = 0
    return (pointer, tensor.device) if pointer else (id(tensor), "object")


def owned_parameters(model: nn.Module) -> dict:
    """``{module name: [(parameter name, tensor), ...]}`` in model order, each parameter (each
    storage: tied weights, views of one tensor) listed once, under the first module holding it
    directly. Modules owning nothing are left out."""
    seen: set = set()
    owned: dict = {}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            key = _storage(param)
            if param.numel() == 0 or key in seen:
                continue
            seen.add(key)
            owned.setdefault(name, []).append((pname, param))
    return owned


def parameter_counts(model: nn.Module, names: Any = None) -> dict:
    """``{module name: (nonzeros, total, shape, kind)}`` of the weights each module owns: its
    parameters of 2 or more dimensions (biases and norm scales excluded, as the prune report
    counts), each tensor for its first holder only (:func:`owned_parameters`: a layer whose
    weight is tied to another's has 0 of 0). ``shape`` is that of its first direct parameter,
    ``kind`` the module's type name in lower case.
    ``names``: the modules wanted (default: every module holding a parameter)."""
    owned = owned_parameters(model)
    modules = dict(model.named_modules())
    wanted = [n for n, m in modules.items() if next(m.parameters(recurse=False), None) is not None] \
        if names is None else [n for n in names if n in modules]
    counts = {}
    for name in wanted:
        params = [(p, t) for p, t in owned.get(name, []) if t.ndim >= 2]
        first = next(modules[name].parameters(recurse=False), None)
        counts[name] = (sum(int((p != 0).sum()) for _, p in params),
                        sum(p.numel() for _, p in params),
                        () if first is None else tuple(first.shape),
                        type(modules[name]).__name__.lower())
    return counts


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """The groups of modules that hold one tensor (one storage) as a direct parameter, each
    group in model order: ``b.weight = a.weight`` gives ``[["a", "b"]]``."""
    holders: dict = {}   # storage -> [module names holding it directly, model order]
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            if param.numel():
                names = holders.setdefault(_storage(param), [])
                if name not in names:
                    names.append(name)
    return [names for names in holders.values() if len(names) > 1]


def tied_layers(model: nn.Module) -> dict[str, str]:
    """``{layer: reason}`` of the prunable layers whose parameters share memory with another
    module's (``b.weight = a.weight``, a language model's output layer tied to its embedding).

    The shared tensor is pruned once: among layers that are all prunable, by the first in model
    order, the later ones listed here; when a module that is not a prunable layer holds it too
    (an ``nn.Embedding``), by none, since pruning it would change that module as well.
    """
    modules = dict(model.named_modules())
    tied: dict = {}
    for names in shared_parameters(model):
        prunable = [n for n in names if isinstance(modules[n], PRUNABLE)]
        other = [n for n in names if n not in prunable]
        for name in prunable:
            if other:
                owner = other[0]
                tied.setdefault(name, (
                    f"its weight is tied to {owner!r} ({type(modules[owner]).__name__}, the same "
                    f"tensor), which Net-Trim does not prune: pruning it would change {owner!r} "
                    "too, so it is left as it is"))
            elif name != prunable[0]:
                tied.setdefault(name, (
                    f"its weight is tied to {prunable[0]!r} (the same tensor): pruned once, as "
                    f"{prunable[0]!r}, and counted in that row"))
    return {n: tied[n] for n in modules if n in tied}


def unknown_weights(model: nn.Module) -> dict[str, tuple[int, str]]:
    """``{module name: (weights, reason)}`` of the modules that own weight parameters (2 or more
    dimensions) Net-Trim does not know how to prune: neither a prunable layer nor a type of
    :func:`skipped_layers`' list (a custom layer, transformers' ``Conv1D``, a bare
    ``nn.Parameter`` of the model). Their weights stay dense."""
    found = {}
    for name, params in owned_parameters(model).items():
        module = model.get_submodule(name)
        if isinstance(module, PRUNABLE) or any(isinstance(module, k) for k, _ in _UNSUPPORTED):
            continue
        weights = [(p, t) for p, t in params if t.ndim >= 2]
        if weights:
            count = sum(t.numel() for _, t in weights)
            shapes = ", ".join(f"{p} {'x'.join(map(str, t.shape))}" for p, t in weights)
            found[name] = (count, f"{type(module).__name__} holds {count} weights ({shapes}) "
                                  "that Net-Trim does not know how to prune: left dense")
    return found


def warn_unknown_weights(model: nn.Module, *, stacklevel: int = 3) -> dict:
    """One :class:`UnknownWeightsWarning` naming the modules of :func:`unknown_weights` and their
    share of the model's weights (the parameters of 2 or more dimensions, each tensor counted
    once); returns ``{name: reason}`` (empty, and no warning, when there are none)."""
    unknown = unknown_weights(model)
    if not unknown:
        return {}
    total = sum(t.numel() for params in owned_parameters(model).values() for _, t in params
                if t.ndim >= 2)
    left = sum(count for count, _ in unknown.values())
    modules = dict(model.named_modules())
    shown = [f"{n or '(the model itself)'!s} ({type(modules[n]).__name__}, {count})"
             for n, (count, _) in list(unknown.items())[:8]]
    more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    msg = (f"{left} of the model's {total} weights ({left / total:.1%}) sit in "
           f"{len(unknown)} module(s) Net-Trim does not know how to prune and stay dense: "
           f"{', '.join(shown)}{more}; they are reported as skipped")
    warnings.warn(msg, UnknownWeightsWarning, stacklevel=stacklevel)
    return {n: reason for n, (_, reason) in unknown.items()}


def describe_skipped(model: nn.Module, skipped: Mapping[str, str]) -> str:
    """``skipped`` (``{name: reason}``) in one line: each module with its reason, the modules of
    :func:`unknown_weights` summed up by type (a language model has dozens)."""
    unknown = unknown_weights(model)
    said = [f"{n!r} ({why})" for n, why in skipped.items() if n not in unknown]
    mine = [n for n in skipped if n in unknown]
    if mine:
        modules = dict(model.named_modules())
        kinds = ", ".join(sorted({type(modules[n]).__name__ for n in mine}))
        names = ", ".join(repr(n) for n in mine[:4]) + (", ..." if len(mine) > 4 else "")
        said.append(f"{len(mine)} module(s) of type {kinds} holding weights Net-Trim does not "
                    f"know how to prune ({names})")
    return "; ".join(said)
