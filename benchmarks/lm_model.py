"""The small language model of ``bench_lm.py``: a byte-level OPT trained on the standard library.

Model: ``transformers.OPTForCausalLM`` from a config (:data:`CONFIG`: 4 decoder layers, width
256, FFN 1,024 with ReLU, 4 heads, tied embeddings), over bytes (256 values plus three special
ids, so every text is its own tokenization and nothing is downloaded).

Text: the ``.py`` sources of the running Python's standard library (``sysconfig``'s ``stdlib``
folder, ``site-packages`` left out), which ship with every Python. A file is held out when the
MD5 of its path (relative to the library folder) is 0 mod 10; the rest are the training text.
Each file is its bytes followed by the end-of-text id.

Training: AdamW, linear warm-up and cosine decay, :data:`TRAIN` steps of random windows of the
training text, one torch thread. The trained weights are cached outside the repository,
``~/.cache/nettrim/bench_lm/<key>.pt`` (``$NETTRIM_CACHE`` overrides the folder), keyed by the
config, the training settings, the Python version and the training text's size, and written
atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import sysconfig
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log  # noqa: E402

from nettrim.io.files import atomic_write  # noqa: E402

__all__ = ["CONFIG", "TRAIN", "SEQ_LEN", "build_model", "corpus", "windows", "held_out_windows",
           "trained_model", "perplexity"]

#: Byte values 0..255, then the special ids.
PAD, BOS, EOS = 256, 257, 258
#: OPTConfig keyword arguments of the benchmark model.
CONFIG = dict(vocab_size=260, hidden_size=256, num_hidden_layers=4, ffn_dim=1024,
              num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=256,
              activation_function="relu", do_layer_norm_before=True, pad_token_id=PAD,
              bos_token_id=BOS, eos_token_id=EOS, dropout=0.0, attention_dropout=0.0,
              tie_word_embeddings=True)
#: Training settings (one torch thread; about 0.8 CPU-s per step on this 2-core CPU, so about
#: 200 CPU-s, well inside the 20-minute budget: the machine was shared at load ~20 when it was
#: trained, 25 minutes of wall time). ``max_seconds`` stops it after 20 minutes of CPU time
#: whatever the step (the log says where it stopped).
TRAIN = dict(steps=240, batch=16, seq_len=128, lr=2e-3, warmup=20, weight_decay=0.01, seed=0,
             max_seconds=1200)
#: Tokens per sequence of the calibration and evaluation windows.
SEQ_LEN = TRAIN["seq_len"]


def library_files() -> list[Path]:
    """The standard library's ``.py`` files, sorted (site-packages left out)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in sorted(root.rglob("*.py"))
            if not any(p in ("site-packages", "dist-packages") for p in f.relative_to(root).parts)]


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, held_out)``: 1-D int64 tensors of byte ids, files joined by :data:`EOS`."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = {True: [], False: []}
    for f in library_files():
        key = hashlib.md5(f.relative_to(root).as_posix().encode()).digest()
        held = int.from_bytes(key[:4], "little") % 10 == 0
        parts[held].append(f.read_bytes() + bytes([0]))   # placeholder byte for EOS
    out = []
    for held in (False, True):
        data = torch.frombuffer(bytearray(b"".join(parts[held])), dtype=torch.uint8).long()
        ends = torch.cumsum(torch.tensor([len(p) for p in parts[held]]), 0) - 1
        data[ends] = EOS
        out.append(data)
    return out[0], out[1]


def windows(text: torch.Tensor, count: int, seq_len: int, seed: int) -> torch.Tensor:
    """``count`` random windows of ``seq_len`` ids from ``text`` (seeded): (count, seq_len)."""
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, text.numel() - seq_len, (count,), generator=gen)
    return torch.stack([text[s:s + seq_len] for s in starts.tolist()])


def held_out_windows(text: torch.Tensor, count: int, seq_len: int) -> torch.Tensor:
    """``count`` non-overlapping windows spread evenly over the held-out text."""
    step = max(seq_len, (text.numel() - seq_len) // count)
    starts = [i * step for i in range(count)]
    return torch.stack([text[s:s + seq_len] for s in starts])


def build_model():
    """A fresh (untrained) model of :data:`CONFIG`, seeded."""
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(TRAIN["seed"])
    return OPTForCausalLM(OPTConfig(**CONFIG)).eval()


def cache_path(train_size: int) -> Path:
    folder = Path(os.environ.get("NETTRIM_CACHE", Path.home() / ".cache" / "nettrim"))
    key = json.dumps([CONFIG, TRAIN, sys.version_info[:2], train_size], sort_keys=True)
    return folder / "bench_lm" / f"opt-{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"


@torch.no_grad()
def perplexity(model, data: torch.Tensor, batch: int = 32) -> float:
    """``exp`` of the mean next-byte cross-entropy over the windows ``data`` (count, L)."""
    model.eval()
    total, count = 0.0, 0
    for chunk in data.split(batch):
        logits = model(input_ids=chunk).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), chunk[:, 1:].reshape(-1), reduction="sum")
        total += float(loss)
        count += chunk[:, 1:].numel()
    return math.exp(total / count)


def train(model, text: torch.Tensor) -> dict:
    """Train ``model`` in place on random windows of ``text`` (:data:`TRAIN`); the log."""
    cfg = TRAIN
    gen = torch.Generator().manual_seed(cfg["seed"])
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": other, "weight_decay": 0.0}], lr=cfg["lr"])

    def lr_at(step):
        if step < cfg["warmup"]:
            return (step + 1) / cfg["warmup"]
        t = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    model.train()
    t0, c0 = time.perf_counter(), time.process_time()
    losses = []
    for step in range(cfg["steps"]):
        starts = torch.randint(0, text.numel() - cfg["seq_len"], (cfg["batch"],), generator=gen)
        x = torch.stack([text[s:s + cfg["seq_len"]] for s in starts.tolist()])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        stop = time.process_time() - c0 > cfg["max_seconds"]
        if step % 50 == 0 or step == cfg["steps"] - 1 or stop:
            recent = losses[-50:]
            log(f"train step {step}/{cfg['steps']}: loss {sum(recent) / len(recent):.3f}"
                f" ({time.perf_counter() - t0:.0f} s, {time.process_time() - c0:.0f} CPU-s)")
        if stop:
            break
    model.eval()
    tail = losses[-50:]
    return dict(seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0,
                final_loss=sum(tail) / len(tail),
                steps=len(losses), tokens=len(losses) * cfg["batch"] * cfg["seq_len"])


def trained_model(text: torch.Tensor):
    """The trained model (from the cache, else trained now and cached) and its training log."""
    path = cache_path(text.numel())
    model = build_model()
    if path.exists():
        blob = torch.load(path, weights_only=True)
        model.load_state_dict(blob["state_dict"], strict=False)
        model.tie_weights()
        return model.eval(), blob["log"]
    torch.set_num_threads(1)
    info = train(model, text)
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda temp: torch.save({"state_dict": state, "log": info}, temp))
    log(f"trained in {info['seconds']:.0f} s; cached at {path}")
    return model, info


if __name__ == "__main__":
    train_text, held_text = corpus()
    log(f"text: {train_text.numel()} training bytes, {held_text.numel()} held-out bytes")
    model, info = trained_model(train_text)
    ppl = perplexity(model, held_out_windows(held_text, 256, SEQ_LEN))
    print(json.dumps(dict(info, held_out_perplexity=ppl)))
