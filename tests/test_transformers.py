"""Hugging Face transformers models without glue: OPT, GPT-2 (its transposed Conv1D), BERT and
ViT pruned by nettrim.prune and prune_baseline, block by block; the LM head and tied embeddings
left dense with a note. Models are built from tiny configs: nothing is downloaded."""

import importlib
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import nettrim  # noqa: E402
from nettrim.baselines import prune_baseline  # noqa: E402
from nettrim.model import blocks as blocks_module  # noqa: E402
from nettrim.model.capture import layer_matrix, prunable_layers  # noqa: E402
from nettrim.model.surgery import set_layer_weight  # noqa: E402

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()

pytestmark = pytest.mark.filterwarnings("ignore::nettrim.GraphWarning",
                                        "ignore::nettrim.CalibrationWarning")


def opt(tie=True):
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, ffn_dim=32, num_attention_heads=2,
        max_position_embeddings=32, word_embed_proj_dim=16, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, tie_word_embeddings=tie)
    return transformers.OPTForCausalLM(config).eval()


def gpt2():
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=2, n_head=2,
                                     n_positions=32, bos_token_id=1, eos_token_id=2)
    return transformers.GPT2LMHeadModel(config).eval()


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=32)
    return transformers.BertForSequenceClassification(config).eval()


def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16,
                                    num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=32, num_labels=3)
    return transformers.ViTForImageClassification(config).eval()


def tokens(n=40, length=8, seed=1):
    return torch.randint(3, 50, (n, length), generator=torch.Generator().manual_seed(seed))


MODELS = {"opt": (opt, tokens), "gpt2": (gpt2, tokens), "bert": (bert, tokens),
          "vit": (vit, lambda: torch.randn(40, 3, 16, 16,
                                           generator=torch.Generator().manual_seed(1)))}


# ---- transformers' Conv1D ----------------------------------------------------------------------
def test_conv1d_is_a_transposed_linear_read_and_written_as_out_by_in():
    layer = gpt2().transformer.h[0].mlp.c_fc          # Conv1D(nf=64, nx=16): weight (16, 64)
    assert tuple(layer.weight.shape) == (16, 64)
    W = layer_matrix(layer)
    assert tuple(W.shape) == (64, 16) and torch.equal(W, layer.weight.detach().T)
    new = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    set_layer_weight(layer, new)
    x = torch.randn(5, 16)
    with torch.no_grad():
        assert torch.allclose(layer(x), x @ new.T + layer.bias, atol=1e-6)
    with pytest.raises(ValueError, match=r"shape \(M, N\) = \(64, 16\)"):
        set_layer_weight(layer, torch.randn(16, 32))


def test_gpt2_conv1d_layers_are_pruned_and_the_model_computes_with_them():
    model, x = gpt2(), tokens()
    result = nettrim.prune(model, x, sparsity=0.5, mode="cascade")
    names = [r.name for r in result.report if r.status != "SKIPPED"]
    assert names == [f"transformer.h.{i}.{part}" for i in range(2)
                     for part in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    for name in names:
        layer = result.model.get_submodule(name)
        assert type(layer).__name__ == "Conv1D"
        assert float((layer.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    # the reported per-layer error is what the written-back layer computes on its inputs
    captured = nettrim.capture(result.model, x, layers=["transformer.h.0.mlp.c_proj"])
    data = captured["transformer.h.0.mlp.c_proj"]
    layer = result.model.get_submodule("transformer.h.0.mlp.c_proj")
    assert torch.allclose(data.pre, data.X @ layer_matrix(layer).T + layer.bias, atol=1e-5)
    programs = {r.name: r.program for r in result.report}
    assert programs["transformer.h.0.mlp.c_fc"] == "linear(gelu)"


# ---- the four families, both drivers -----------------------------------------------------------
@pytest.mark.parametrize("family", sorted(MODELS))
def test_families_prune_with_nettrim_and_the_baselines_on_the_same_layers(family):
    build, data = MODELS[family]
    model, x = build(), data()
    result = nettrim.prune(model, x, sparsity=0.5, mode="cascade")
    pruned = [r.name for r in result.report if r.status != "SKIPPED"]
    assert pruned == list(prunable_layers(model))
    assert all(r.status in ("OPTIMAL", "OPTIMAL_INACCURATE") for r in result.report
               if r.status != "SKIPPED")
    assert all(abs(r.sparsity - 0.5) < 0.01 for r in result.report if r.status != "SKIPPED")
    assert 0.0 < result.output_error < 0.5
    for method in ("sparsegpt", "alps"):
        base = prune_baseline(model, x, method, 0.5)
        assert [r.name for r in base.report if r.status != "SKIPPED"] == pruned
        assert {r.name for r in base.report if r.status == "SKIPPED"} == \
            {r.name for r in result.report if r.status == "SKIPPED"}
        assert 0.0 < base.output_error < 1.0


def test_opt_fc1_is_relu_aware_and_the_projections_linear():
    model, x = opt(), tokens()
    patterns = nettrim.graph.analyze(model, example=x).patterns
    assert patterns["model.decoder.layers.0.fc1"].activation == "relu"
    assert patterns["model.decoder.layers.0.fc2"].activation is None
    assert patterns["model.decoder.layers.1.self_attn.q_proj"].activation is None
    result = nettrim.prune(model, x, sparsity="2:4", mode="cascade")
    programs = {r.name: r.program for r in result.report}
    assert "relu" in programs["model.decoder.layers.0.fc1"]
    for r in result.report:
        if r.status != "SKIPPED":
            W = layer_matrix(result.model.get_submodule(r.name))
            assert ((W == 0).reshape(W.shape[0], -1, 4).sum(2) == 2).all(), r.name


# ---- the LM head and tied embeddings -----------------------------------------------------------
def test_tied_lm_head_is_skipped_with_a_note():
    model, x = opt(tie=True), tokens()
    result = nettrim.prune(model, x, sparsity=0.5)
    head = next(r for r in result.report if r.name == "lm_head")
    assert head.status == "SKIPPED" and "tied to 'model.decoder.embed_tokens'" in head.note
    assert torch.equal(result.model.lm_head.weight, model.lm_head.weight)
    with pytest.raises(TypeError, match="tied to 'model.decoder.embed_tokens'"):
        nettrim.prune(model, x, sparsity=0.5, layers=["lm_head"])


def test_untied_lm_head_is_skipped_by_default_and_pruned_when_named():
    model, x = opt(tie=False), tokens()
    result = nettrim.prune(model, x, sparsity=0.5)
    head = next(r for r in result.report if r.name == "lm_head")
    assert head.status == "SKIPPED" and "language-model head" in head.note
    named = nettrim.prune(model, x, sparsity=0.5,
                          layers=["lm_head", "model.decoder.layers.1.fc2"])
    assert [r.name for r in named.report if r.status != "SKIPPED"] == [
        "model.decoder.layers.1.fc2", "lm_head"]
    assert float((named.model.lm_head.weight == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert "lm_head" not in named.skipped


# ---- block by block ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["parallel", "cascade"])
def test_block_by_block_equals_the_whole_model_capture(mode, monkeypatch):
    model, x = opt(), tokens()
    blockwise = nettrim.prune(model, x, sparsity=0.6, mode=mode)
    base = prune_baseline(model, x, "sparsegpt", 0.6, sequential=mode == "cascade")
    monkeypatch.setattr(blocks_module.BlockRunner, "for_model",
                        classmethod(lambda cls, *a, **k: None))
    whole = nettrim.prune(model, x, sparsity=0.6, mode=mode)
    base_whole = prune_baseline(model, x, "sparsegpt", 0.6, sequential=mode == "cascade")
    for a, b in ((blockwise, whole), (base, base_whole)):
        for p, q in zip(a.model.parameters(), b.model.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_cascade_runs_each_block_not_the_whole_model(monkeypatch):
    """Inside the blocks no whole-model pass happens (capture_cascade is never called), and a
    parallel runner holds the records of one block at a time."""
    prune_module = importlib.import_module("nettrim.prune")   # the module, not the function
    calls = []
    original = prune_module.capture_cascade
    monkeypatch.setattr(prune_module, "capture_cascade",
                        lambda *a, **k: calls.append(a[3]) or original(*a, **k))
    model, x = opt(), tokens()
    nettrim.prune(model, x, sparsity=0.5, mode="cascade")
    assert calls == []
    held = []
    data = blocks_module.BlockRunner.data

    def spy(self, name):
        out = data(self, name)
        held.append({n[:len("model.decoder.layers.0")] for n, d in self.cache.items()})
        return out

    monkeypatch.setattr(blocks_module.BlockRunner, "data", spy)
    nettrim.prune(model, x, sparsity=0.5, mode="parallel")
    assert held and all(len(blocks) <= 1 for blocks in held)


class Indexed(nn.Module):
    """A stack whose blocks each get their own keyword argument (the block's index)."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(8, 16), nn.Linear(16, 8)

        def forward(self, h, scale=1.0):
            return h + scale * self.fc2(torch.relu(self.fc1(h)))

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([self.Block() for _ in range(3)])

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x, scale=1.0 / (i + 1))
        return x


def test_blocks_with_different_arguments_use_the_whole_model_capture():
    torch.manual_seed(0)
    model, x = Indexed(), torch.randn(300, 8)
    names = list(prunable_layers(model))
    assert blocks_module.find_blocks(model, names)[1] == ["layers.0", "layers.1", "layers.2"]
    assert blocks_module.BlockRunner.for_model(model, model, x, names) is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = nettrim.prune(model, x, sparsity=0.5, mode="cascade")
    assert [r.name for r in result.report] == names
    assert result.output_error < 0.5


def test_block_by_block_on_statistics_equals_the_rows():
    """Parallel, block by block: the linear projections (q, k, v, out, fc2) from statistics,
    fc1 (ReLU) from its rows; the same weights as from the rows."""
    model, x = opt(), tokens()
    rows = nettrim.prune(model, x, sparsity=0.6)
    stats = nettrim.prune(model, x, sparsity=0.6, statistics=True)
    noted = {r.name for r in stats.report if "statistics of all rows" in r.note}
    assert noted and all(not n.endswith("fc1") for n in noted)
    assert any(n.endswith("fc2") for n in noted) and any(n.endswith("q_proj") for n in noted)
    for p, q in zip(rows.model.parameters(), stats.model.parameters()):
        assert torch.allclose(p, q, atol=1e-4)
