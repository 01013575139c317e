"""A newcomer's path: models that return a ModelOutput (Hugging Face style) through accuracy,
fine-tuning and the command line; the run's own sparsity in the CalibrationWarning; one report
per output file; --normalize; -q's per-layer lines; prune_structured on a residual model.

The Hugging Face output is stood in for by ``transformers.modeling_outputs`` when it imports,
else by an ``OrderedDict`` subclass with attribute access (what ``ModelOutput`` is).
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import nettrim
from nettrim.cli import main, report_path_for
from nettrim.model.capture import CalibrationWarning
from nettrim.models import accuracy, train_classifier
from nettrim.results import model_logits

FACTORY = '''
from collections import OrderedDict

import torch
from torch import nn


class Output(OrderedDict):
    """What transformers' ModelOutput is: an ordered dict whose keys are attributes too."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        hidden = self.body[1](self.body[0](x))
        return Output(loss=None, logits=self.body[2](hidden), hidden=hidden)


def classifier():
    return Classifier()


def mlp():
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(),
                         nn.Linear(8, 3))
'''


@pytest.fixture()
def env(tmp_path, monkeypatch):
    (tmp_path / "newcomerarch.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    sys.modules.pop("newcomerarch", None)
    import newcomerarch
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    teacher = newcomerarch.mlp()
    train_classifier(teacher, x, (x[:, :3] + 0.3 * x[:, 3:]).argmax(1), epochs=40, lr=1e-2)
    with torch.no_grad():
        y = teacher(x).argmax(1)   # the labels are the teacher's own: its accuracy is 1
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    model = newcomerarch.classifier()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save(teacher.state_dict(), tmp_path / "mlp.pt")
    return {"root": tmp_path, "arch": newcomerarch, "x": x, "y": y, "model": model}


# ---- 4: ModelOutput read as its .logits, one helper ----------------------------------------------
def test_model_logits_reads_logits_then_first_tensor():
    t = torch.randn(2, 3)
    assert model_logits(t) is t
    assert model_logits({"loss": torch.tensor(1.0), "logits": t}) is t
    assert model_logits((t, torch.randn(2, 5))) is t

    class Obj:
        logits = t
    assert model_logits(Obj()) is t
    with pytest.raises(TypeError, match="output"):
        model_logits({"ids": torch.ones(2, dtype=torch.long)})


def test_transformers_model_output_is_read(env):
    modeling_outputs = pytest.importorskip("transformers.modeling_outputs")
    t = torch.randn(2, 3)
    out = modeling_outputs.ImageClassifierOutput(logits=t)
    assert model_logits(out) is t


def test_accuracy_and_cli_read_model_output(env, capsys):
    model, x, y = env["model"], env["x"], env["y"]
    expected = float((model(x).logits.argmax(1) == y).float().mean())
    assert accuracy(model, x, y) == pytest.approx(expected)
    common = ["--arch", "newcomerarch:classifier", "--data", "data.npz", "--threads", "1"]
    assert main(["prune", "m.pt", "--out", "p.pt", "--sparsity", "0.5", "-q", *common]) == 0
    doc = json.loads(report_path_for(env["root"] / "p.pt").read_text())
    assert doc["accuracy_original"] == pytest.approx(expected)   # printed for a ModelOutput too
    assert main(["evaluate", "m.pt", "p.pt", "--format", "json", *common]) == 0
    rows = json.loads(capsys.readouterr().out)["models"]
    assert rows[0]["accuracy"] == pytest.approx(expected)
    assert main(["report", "p.pt", "--original", "m.pt", "--format", "json", *common]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["accuracy_original"] == pytest.approx(expected)
    assert 0 <= summary["accuracy"] <= 1


# ---- 5: finetune's default loss on a ModelOutput ------------------------------------------------
def test_finetune_default_loss_reads_logits(env):
    model, x, y = env["model"], env["x"], env["y"]
    pruned = nettrim.prune(model, x, sparsity=0.5).model
    zeros = pruned.body[0].weight == 0
    result = nettrim.finetune(pruned, (x, y), epochs=2, lr=1e-2)
    assert len(result.losses) == 2 and all(np.isfinite(result.losses))
    assert result.losses[1] < result.losses[0]
    assert bool((result.model.body[0].weight[zeros] == 0).all())


# ---- 9: prune_structured on a model that is no plain chain ----------------------------------------
class ResidualCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 8, 3, padding=1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = torch.relu(self.conv(h) + h)
        return self.head(h.mean((2, 3)))


def test_prune_structured_traces_a_residual_model_itself():
    torch.manual_seed(0)
    model, x = ResidualCNN().eval(), torch.randn(16, 1, 8, 8)
    result = nettrim.prune_structured(model, x, "l1", 0.5, layers=["stem"])
    # the residual add couples the stem's channels with the block's: both shrink
    assert result.model.stem.out_channels == 4 and result.model.conv.out_channels == 4
    assert result.model(x).shape == (16, 3)


def test_prune_structured_one_shot_iterator_names_inputs():
    torch.manual_seed(0)
    model = ResidualCNN().eval()
    with pytest.raises(ValueError, match="^inputs:") as err:
        nettrim.prune_structured(model, iter([torch.randn(8, 1, 8, 8)]), "l1", 0.5)
    assert "example_input" not in str(err.value)   # no parameter prune_structured lacks


# ---- 11: the CalibrationWarning speaks of the run's own sparsity --------------------------------
def test_calibration_warning_uses_the_runs_sparsity():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(20, 40)
    for sparsity, text in ((0.5, "at this run's 50% sparsity"), (None, "for example")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kwargs = {"sparsity": sparsity} if sparsity else {"epsilon": 0.1}
            nettrim.prune(model, x, layers=["0"], **kwargs)
        found = [str(w.message) for w in caught if issubclass(w.category, CalibrationWarning)]
        assert found and text in found[0], found
        assert "90% sparsity" not in found[0] or sparsity is None
    from nettrim.model.calibration import rows_needed
    assert rows_needed(40, keep=0.5) != rows_needed(40, keep=0.1)


# ---- 12: one report per output file -------------------------------------------------------------
def test_two_outputs_keep_two_reports(env, capsys):
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1", "-q"]
    assert main(["prune", "mlp.pt", "--out", "x.pt", "--sparsity", "0.5", *common]) == 0
    assert main(["prune", "mlp.pt", "--out", "x.safetensors", "--sparsity", "0.7",
                 *common]) == 0
    root = env["root"]
    first = json.loads((root / "x.report.json").read_text())
    second = json.loads((root / "x.safetensors.report.json").read_text())
    assert first["output"]["path"] == str((root / "x.pt").resolve())
    assert second["output"]["path"] == str((root / "x.safetensors").resolve())
    assert report_path_for(root / "x.safetensors") == root / "x.safetensors.report.json"
    # the report command finds each output's own report (and through it the original)
    capsys.readouterr()
    assert main(["report", "x.safetensors", "--arch", "newcomerarch:mlp", "--data", "data.npz",
                 "--format", "json", "--arch", "newcomerarch:mlp"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["original"] == str((root / "mlp.pt").resolve())


def test_report_of_another_output_is_not_replaced(env, capsys):
    root = env["root"]
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1", "-q"]
    assert main(["prune", "mlp.pt", "--out", "x.pt", "--sparsity", "0.5", *common]) == 0
    before = (root / "x.report.json").read_bytes()
    (root / "x").mkdir()
    # a suffix-less output "x" has the default report x.report.json, which is x.pt's
    assert main(["prune", "mlp.pt", "--out", "x", "--sparsity", "0.5", *common]) == 2
    assert "x.report.json is the report of another output" in capsys.readouterr().err
    assert (root / "x.report.json").read_bytes() == before


# ---- 13: --normalize ----------------------------------------------------------------------------
def test_normalize_changes_what_the_model_sees(env, capsys):
    root, x = env["root"], env["x"]
    np.savez(root / "raw.npz", x=(x * 0.1 + 3.0).numpy(), y=env["y"].numpy())
    common = ["--arch", "newcomerarch:mlp", "--format", "json"]
    assert main(["report", "mlp.pt", "--data", "raw.npz", *common]) == 0
    raw = json.loads(capsys.readouterr().out)["accuracy"]
    assert main(["report", "mlp.pt", "--data", "raw.npz", "--normalize", "3.0,0.1",
                 *common]) == 0
    normalized = json.loads(capsys.readouterr().out)["accuracy"]
    assert normalized == pytest.approx(1.0)   # the labels are the model's own on x
    assert raw < normalized
    assert main(["report", "mlp.pt", "--data", "raw.npz", "--normalize", "0.5", *common]) == 2
    assert "--normalize" in capsys.readouterr().err


# ---- 17: -q keeps one line per finished layer; --silent prints nothing ---------------------------
def test_quiet_prints_layer_lines_and_silent_nothing(env, capsys):
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1"]
    assert main(["prune", "mlp.pt", "--out", "q.pt", "--sparsity", "0.5", "-q", *common]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "layer" in ln and "/3" in ln]
    assert len(lines) == 3 and captured.out == "", captured
    assert main(["prune", "mlp.pt", "--out", "s.pt", "--sparsity", "0.5", "--silent",
                 *common]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "", captured


# ---- 10: readable plots with long layer names ----------------------------------------------------
def test_plots_grow_with_layers_and_keep_long_names(tmp_path):
    from matplotlib.image import imread

    from nettrim.plots import plot_report, wrap_name

    long = [dict(name=f"model.encoder.layer.{i}.attention.output.dense", sparsity=0.5,
                 relative_error=0.01 * (i + 1)) for i in range(48)]
    short = [dict(name=n, sparsity=0.5, relative_error=0.1) for n in "135"]
    big = [imread(p) for p in plot_report(long, tmp_path / "long")]
    small = [imread(p) for p in plot_report(short, tmp_path / "short")]
    for b, s in zip(big, small):
        # every layer gets its own band of pixels (bars not squashed into a strip)
        assert b.shape[0] / len(long) >= 20, b.shape
        assert b.shape[0] > 4 * s.shape[0]
    assert wrap_name("transformer.h.11.mlp.c_fc") == "transformer.h.11.mlp.c_fc"
    wrapped = wrap_name("model.encoder.layer.11.attention.output.dense")
    assert wrapped.replace("\n", "") == "model.encoder.layer.11.attention.output.dense"
    assert max(len(line) for line in wrapped.splitlines()) <= 28


# ---- 3: a normal run's table reads as normal ----------------------------------------------------
def test_prune_table_explains_its_columns_and_status():
    from nettrim.tables import format_prune_table

    row = dict(name="1", shape=(300, 784), program="linear(relu)", nonzeros_before=235200,
               nonzeros_after=23520, total=235200, sparsity=0.9, epsilon=0.19, relative_error=0.11,
               status="OPTIMAL_INACCURATE", iterations=300, seconds=1.0)
    text = format_prune_table([row], 0.12)
    assert "epsilon: the tolerance" in text and "rel.err: the layer's output error" in text
    assert "OPTIMAL_INACCURATE is the normal outcome at a target sparsity" in text
    plain = format_prune_table([dict(row, status="OPTIMAL")], 0.12)
    assert "epsilon: the tolerance" in plain and "normal outcome" not in plain
    assert max(len(line) for line in text.splitlines()[5:]) <= 100


# ---- 15: recipes --------------------------------------------------------------------------------
def test_recipe_reruns_a_run_exactly_and_takes_per_layer_sparsity(env, capsys):
    root = env["root"]
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1", "-q"]
    assert main(["prune", "mlp.pt", "--out", "a.pt", "--sparsity", "0.6", "--mode", "cascade",
                 "--ignore", "4", "--samples", "150", "--seed", "3", *common]) == 0
    recipe = json.loads((root / "a.report.json").read_text())["recipe"]
    assert recipe["mode"] == "cascade" and recipe["sparsity"] == 0.6
    assert recipe["ignore"] == ["4"] and recipe["samples"] == 150
    # the report is a recipe: rerunning it gives the same weights, bit for bit
    assert main(["prune", "mlp.pt", "--out", "b.pt", "--recipe", "a.report.json",
                 *common]) == 0
    a, b = torch.load(root / "a.pt"), torch.load(root / "b.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(a["4.weight"], torch.load(root / "mlp.pt")["4.weight"])   # ignored
    # a hand-written recipe: per-layer sparsity; a flag on the command line wins
    (root / "r.json").write_text(json.dumps({"sparsity": {"0": 0.25, "2": 0.75},
                                             "ignore": ["4"], "mode": "cascade",
                                             "program": "relu"}))
    assert main(["prune", "mlp.pt", "--out", "c.pt", "--recipe", "r.json", "--mode",
                 "parallel", *common]) == 0
    doc = json.loads((root / "c.report.json").read_text())
    rows = {r["name"]: r for r in doc["layers"]}
    assert rows["0"]["sparsity"] == pytest.approx(0.25, abs=0.02)
    assert rows["2"]["sparsity"] == pytest.approx(0.75, abs=0.02)
    assert doc["recipe"]["mode"] == "parallel" and doc["recipe"]["program"] == "relu"
    # bad recipes: one line naming the key
    (root / "bad.json").write_text(json.dumps({"sparsity": 1.5}))
    assert main(["prune", "mlp.pt", "--out", "d.pt", "--recipe", "bad.json", *common]) == 2
    assert "'sparsity' must be" in capsys.readouterr().err
    (root / "bad2.json").write_text(json.dumps({"spars": 0.5}))
    assert main(["prune", "mlp.pt", "--out", "d.pt", "--recipe", "bad2.json", *common]) == 2
    assert "unknown keys ['spars']" in capsys.readouterr().err
    assert not (root / "d.pt").exists()


def test_yaml_recipe_or_a_clear_error(env, capsys):
    root = env["root"]
    (root / "r.yaml").write_text("sparsity:\n  '0': 0.5\nmode: cascade\nignore: ['4']\n")
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1", "-q"]
    code = main(["prune", "mlp.pt", "--out", "y.pt", "--recipe", "r.yaml", *common])
    try:
        import yaml  # noqa: F401
    except ImportError:
        assert code == 2 and "need PyYAML" in capsys.readouterr().err
        return
    assert code == 0
    doc = json.loads((root / "y.report.json").read_text())
    assert doc["recipe"]["sparsity"] == {"0": 0.5} and doc["recipe"]["mode"] == "cascade"


# ---- 16: --resume continues an interrupted cascade after its last finished layer ----------------
def test_resume_continues_an_interrupted_cascade(env, capsys, monkeypatch):
    root = env["root"]
    import importlib
    program = importlib.import_module("nettrim.folded").LayerProgram
    real_solve = program.solve
    calls = []

    def solve(self, *args, **kwargs):
        calls.append(self.data.name)
        if stop_at is not None and len(calls) == stop_at:
            raise KeyboardInterrupt   # Ctrl-C while layer `stop_at` is solved
        return real_solve(self, *args, **kwargs)

    monkeypatch.setattr(program, "solve", solve)
    common = ["--arch", "newcomerarch:mlp", "--data", "data.npz", "--threads", "1", "-q",
              "--sparsity", "0.6", "--mode", "cascade"]
    stop_at = None
    assert main(["prune", "mlp.pt", "--out", "whole.pt", *common]) == 0
    assert calls == ["0", "2", "4"]
    calls.clear()
    stop_at = 3   # a first run without --resume keeps its state too
    assert main(["prune", "mlp.pt", "--out", "r.pt", *common]) == 130
    assert not (root / "r.pt").exists() and (root / "r.pt.resume").is_file()
    assert "r.pt.resume: run the same command with --resume" in capsys.readouterr().err
    calls.clear()
    stop_at = None
    assert main(["prune", "mlp.pt", "--out", "r.pt", "--resume", *common]) == 0
    assert calls == ["4"]   # layers 0 and 2 came from the state file
    assert not (root / "r.pt.resume").exists()
    whole, resumed = torch.load(root / "whole.pt"), torch.load(root / "r.pt")
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    doc = json.loads((root / "r.report.json").read_text())
    assert [r["name"] for r in doc["layers"]] == ["0", "2", "4"]
    # a state file of other options is refused, not used
    calls.clear()
    stop_at = 2
    assert main(["prune", "mlp.pt", "--out", "s.pt", "--resume", *common]) == 130
    assert (root / "s.pt.resume").is_file()
    stop_at = None
    other = [a if a != "0.6" else "0.5" for a in common]
    assert main(["prune", "mlp.pt", "--out", "s.pt", "--resume", *other]) == 2
    assert "another model, other data or other options" in capsys.readouterr().err
    # without --resume the state is replaced (with a warning) and the run starts afresh
    calls.clear()
    assert main(["prune", "mlp.pt", "--out", "s.pt", *other]) == 0
    assert calls == ["0", "2", "4"] and not (root / "s.pt.resume").exists()
    assert "is replaced by this run's" in capsys.readouterr().err


# ---- 14: latency measurements bounded in time ---------------------------------------------------
class SlowLinear(nn.Linear):
    def forward(self, x):
        import time
        time.sleep(0.2)
        return super().forward(x)


def test_sparsify_decides_a_slow_layer_in_bounded_time():
    import time

    from nettrim.model.surgery import LATENCY_BUDGET_S, measure_latency

    torch.manual_seed(0)
    model = nn.Sequential(SlowLinear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[:, :6] = 0
    t0 = time.perf_counter()
    ms = measure_latency(model, torch.randn(4, 8), repeats=50)   # unbounded: 10 s
    spent = time.perf_counter() - t0
    assert ms >= 200 and spent < 3 * LATENCY_BUDGET_S + 1.0, spent
    t0 = time.perf_counter()
    fast = nettrim.sparsify(model, torch.randn(4, 8))   # 30 repeats of the slow layer: 6 s
    assert time.perf_counter() - t0 < 4 * LATENCY_BUDGET_S + 1.0
    assert fast.nettrim_sparse["0"]["dense_ms"] >= 200


# ---- 6, 7: a head tied to an embedding; the same totals and skipped on every path ----------------
class TiedLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.fc1 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight   # GPT-2's lm_head / wte

    def forward(self, ids):
        return self.head(torch.relu(self.fc1(self.emb(ids).mean(1))))


def test_tied_head_and_totals_agree_on_every_path():
    from nettrim.tables import totals

    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 20, (200, 5))
    embedding = model.emb.weight.detach().clone()
    runs = {"prune": nettrim.prune(model, ids, sparsity=0.5),
            "global": nettrim.prune(model, ids, sparsity=0.5, scope="global"),
            "baseline": nettrim.prune_baseline(model, ids, "magnitude", 0.5)}
    seen = set()
    for name, result in runs.items():
        rows = [r.as_dict() for r in result.report]
        t = totals(rows)
        seen.add((t["nonzeros_before"], t["nonzeros"], tuple(sorted(result.skipped))))
        assert torch.equal(result.model.emb.weight, embedding), name   # never zeroed
        head = next(r for r in rows if r["name"] == "head")
        assert head["status"] == "SKIPPED" and "tied to 'emb'" in head["note"], name
        emb = next(r for r in rows if r["name"] == "emb")
        assert emb["nonzeros_before"] == embedding.numel() == emb["nonzeros_after"], name
    assert len(seen) == 1, seen   # the same totals and skipped layers on every path
    with pytest.raises((TypeError, ValueError), match="tied to 'emb'"):   # named: refused
        nettrim.prune(model, ids, sparsity=0.5, layers=["fc1", "head"])


# ---- 8: structured=True bounded in time, the best point back with its status --------------------
def test_structured_search_is_bounded_and_returns_a_model(monkeypatch):
    import importlib
    import time
    from dataclasses import replace

    from nettrim.results import PruningWarning

    structured = importlib.import_module("nettrim.structured")
    real = structured._Solver.solve
    solves = []

    def failing(self, eps_rel, W_start=None):   # a solver that never gets anywhere, slowly
        time.sleep(0.3)
        solves.append(eps_rel)
        return replace(real(self, eps_rel, W_start), status="SOLVER_ERROR")

    monkeypatch.setattr(structured._Solver, "solve", failing)
    monkeypatch.setattr(structured, "SEARCH_SECONDS", 0.5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    x = torch.randn(100, 6)
    with pytest.warns(PruningWarning, match="give an epsilon instead of a sparsity"):
        result = nettrim.prune(model, x, sparsity=0.5, structured=True, layers=["2"])
    assert len(solves) <= 3   # not MAX_SOLVES = 12: stopped by the time bound
    assert result.model(x).shape == (100, 3)   # a model came back
    assert torch.allclose(result.model(x), model(x), atol=1e-5)   # the layer as it was


def test_resume_state_that_is_not_one_is_refused_by_name(tmp_path):
    from nettrim.resume import load_state

    garbage = tmp_path / "g.resume"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="g.resume cannot be read as a nettrim run state"):
        load_state(garbage, "f")
    other = tmp_path / "o.resume"
    torch.save({"format": "something else"}, other)
    with pytest.raises(ValueError, match="o.resume is not a nettrim run state"):
        load_state(other, "f")
    assert load_state(tmp_path / "missing.resume", "f") is None
