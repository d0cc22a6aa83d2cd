"""Train a small GPT on fa_cute's attention and on PyTorch's SDPA (issue 16, item 3).

A decoder-only transformer (default: 4 layers, width 512, 8 heads of 64, seqlen 1024, a
vocabulary of 8192) is trained for --steps (200) steps on a synthetic corpus that this
script generates: a random first-order Markov chain in which each token has four possible
successors, so that the loss falls from ln(vocab) towards the chain's entropy
(below ln 4, printed as the loss floor) as the model learns the table. The corpus and the
initial weights come from --seed alone, so every --attn backend sees the same data and
starts from the same model.

The schedule is chosen for --compare: AdamW at --lr (3e-4) after a linear warm-up of
--lr-warmup (20) steps, then a cosine decay to --min-lr (0.1) of it at the last step, and
the gradient's norm clipped to --grad-clip (1.0). A constant 1e-3 from the first step
without clipping (this script's earlier defaults) leaves the model on a plateau near
ln(vocab) from which it escapes suddenly (loss 7 to 1.5 within a few dozen steps), at a
step that rounding decides: PyTorch's flash and cuDNN kernels then differed by 62% at
step 140 on an H100, so the comparison measured chaos, not the kernels. With the warm-up,
decay and clipping the loss falls smoothly, and two equivalent attentions that round
differently stay within about 0.1% at every 10th step. Emulated on the CPU (PyTorch's SDPA
on bf16 against softmax(QK^T)V written out in bf16 or fp32), 200 steps, the largest
relative differences: the defaults' model (4 layers, width 512, 8 heads, vocab 8192) at
seq 64: 6.6e-4 at lr 3e-4, but 5.5% at 5e-4 and 1.7% at 1e-3 (seq 128), all with this
schedule; tests/test_train_gpt.py's GPU model: 1.4e-4 at 3e-4, 3e-4 to 5e-4 at 1e-3
(1.1% with the earlier defaults); 4 layers of width 256, seq 256 at 1e-3: 1.3e-3 (18% earlier). Wider
models need the lower --lr.

Attention is `fa_cute.sdpa(q, k, v, is_causal=True)` on (batch, nheads, seqlen, headdim)
tensors for --attn fa_cute, and torch's scaled_dot_product_attention for the others (sdpa:
PyTorch's choice of backend; sdpa-flash, sdpa-cudnn: that backend alone; fa_cute-activate:
the flash backend, unchanged model code, with `fa_cute.activate()` in force for the run, so
that PyTorch's flash ops run fa_cute's kernels. That run fails unless fa_cute ran at least
one forward and one backward, counted by fa_cute's CALLS, and it deactivates after). Steps
run under bf16 autocast; --compile compiles the model with torch.compile(fullgraph=True),
the compilation caches off, so that each run traces under its own SDPA backend setting
(a cached graph from another backend's run would run that backend: `_fresh_compilation`).

Printed: the loss every --log-every steps, then the median step time (CUDA events, after
--warmup-steps steps), tokens/s and peak memory; --json FILE writes them. --compare A,B
(default fa_cute,sdpa) trains A and then B from the same seed and reports the relative loss
difference |A - B| / |B| at every --log-every'th step, failing (exit 1) where the largest
exceeds --tolerance (1%); the worst step and both runs' losses are printed either way.

    python benchmarks/train_gpt.py --attn fa_cute --steps 200
    python benchmarks/train_gpt.py --compare --steps 200 --json gpt.json
    python benchmarks/train_gpt.py --compare fa_cute-activate,sdpa-flash --compile --steps 200
    python benchmarks/train_gpt.py --device cpu --attn sdpa --layers 1 --width 64 --heads 2 \\
        --seq 64 --vocab 256 --batch 2 --steps 3     # a CPU smoke run (sdpa only)
"""

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION = ("fa_cute", "fa_cute-activate", "sdpa", "sdpa-flash", "sdpa-cudnn")
#: the SDPA backend each --attn pins (None: PyTorch picks); fa_cute-activate pins flash, the
#: backend whose ops `fa_cute.activate()` takes over
SDPA_BACKEND = {"sdpa-flash": SDPBackend.FLASH_ATTENTION, "sdpa-cudnn": SDPBackend.CUDNN_ATTENTION,
                "fa_cute-activate": SDPBackend.FLASH_ATTENTION}
#: --compare without a value: the comparison issue 16 asks for
DEFAULT_COMPARE = ("fa_cute", "sdpa")
#: successors per token in the Markov chain: few enough that the chain is learnable in a few
#: hundred steps, more than one so that the loss has a floor above zero (ln 4 at most)
SUCCESSORS = 4

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--attn", choices=ATTENTION, default="fa_cute")
    p.add_argument("--compare", nargs="?", const=",".join(DEFAULT_COMPARE), metavar="A,B",
                   help="train with A, then B (two --attn choices; default "
                        f"{','.join(DEFAULT_COMPARE)}), from the same seed; compare losses")
    p.add_argument("--tolerance", type=float, default=0.01,
                   help="--compare's largest allowed relative loss difference")
    p.add_argument("--compile", action="store_true", help="torch.compile(fullgraph=True)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    p.add_argument("--lr-warmup", type=int, default=20,
                   help="steps of linear learning-rate warm-up (then cosine decay)")
    p.add_argument("--min-lr", type=float, default=0.1,
                   help="the cosine decay's final learning rate, as a fraction of --lr")
    p.add_argument("--grad-clip", type=float, default=1.0,
                   help="clip the gradient's global norm to this (0: no clipping)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--warmup-steps", type=int, default=10,
                   help="steps left out of the step time (compilation, allocator warm-up)")
    p.add_argument("--json", metavar="FILE", help="write the results to FILE")
    args = p.parse_args(argv)
    for name in ("layers", "width", "heads", "seq", "vocab", "batch", "steps", "log_every"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.lr_warmup < 0 or args.grad_clip < 0 or not 0 <= args.min_lr <= 1:
        p.error("--lr-warmup and --grad-clip must be >= 0, --min-lr within [0, 1]")
    if args.width % args.heads:
        p.error(f"--width {args.width} is not a multiple of --heads {args.heads}")
    if args.vocab < SUCCESSORS:
        p.error(f"--vocab must be >= {SUCCESSORS}")
    if args.compare is not None:
        modes = tuple(m.strip() for m in args.compare.split(","))
        bad = [m for m in modes if m not in ATTENTION]
        if len(modes) != 2 or bad:
            p.error(f"--compare takes two of {', '.join(ATTENTION)} joined by a comma "
                    f"(e.g. {','.join(DEFAULT_COMPARE)}); got {args.compare!r}")
        args.compare = modes
    modes = args.compare or (args.attn,)
    on_cuda = torch.device(args.device).type == "cuda"
    if any(m != "sdpa" for m in modes) and not on_cuda:
        p.error("fa_cute and SDPA's pinned backends (and so --compare) need --device cuda; "
                "on the CPU use --attn sdpa")
    if on_cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu --attn sdpa")
    return args


def markov_batches(steps: int, batch: int, seq: int, vocab: int, seed: int) -> torch.Tensor:
    """(steps, batch, seq + 1) tokens of a random Markov chain: each token's SUCCESSORS
    successors and their probabilities are drawn once from seed, and so is every sequence.
    Made on the CPU by one generator, so that the data is the same on every device."""
    gen = torch.Generator().manual_seed(seed)
    successors = torch.randint(vocab, (vocab, SUCCESSORS), generator=gen)
    probs = torch.softmax(2 * torch.randn(vocab, SUCCESSORS, generator=gen), dim=-1)
    tokens = torch.empty(steps * batch, seq + 1, dtype=torch.long)
    tokens[:, 0] = torch.randint(vocab, (steps * batch,), generator=gen)
    for i in range(seq):
        pick = torch.multinomial(probs[tokens[:, i]], 1, generator=gen).squeeze(1)
        tokens[:, i + 1] = successors[tokens[:, i], pick]
    return tokens.view(steps, batch, seq + 1)


def chain_entropy(vocab: int, seed: int) -> float:
    """The loss floor (nats): the mean entropy of a token's successor distribution."""
    gen = torch.Generator().manual_seed(seed)
    torch.randint(vocab, (vocab, SUCCESSORS), generator=gen)  # as markov_batches draws
    probs = torch.softmax(2 * torch.randn(vocab, SUCCESSORS, generator=gen), dim=-1)
    return float(-(probs * probs.log()).sum(-1).mean())


#: torch._fused_sdp_choice's numbers (SDPBackend's values)
SDPA_CHOICES = {-1: "ERROR", 0: "MATH", 1: "FLASH_ATTENTION", 2: "EFFICIENT_ATTENTION",
                3: "CUDNN_ATTENTION", 4: "OVERRIDEABLE"}


def sdpa_choice(args: argparse.Namespace, attn: str) -> Optional[str]:
    """The backend PyTorch's scaled_dot_product_attention picks for the model's attention
    (bf16, causal, requires grad) under `attn`'s backend setting; None for --attn fa_cute
    or where PyTorch does not say. On an H100 with a recent cuDNN, --attn sdpa is cuDNN's
    kernel, not FlashAttention-2's (check_prefer_cudnn_attention)."""
    if attn == "fa_cute":
        return None
    device = torch.device(args.device)
    shape = (args.batch, args.heads, args.seq, args.width // args.heads)
    q, k, v = (torch.empty(shape, device=device, dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    backend = SDPA_BACKEND.get(attn)
    try:
        with sdpa_kernel(backend) if backend else contextlib.nullcontext():
            return SDPA_CHOICES.get(int(torch._fused_sdp_choice(q, k, v, is_causal=True)))
    except (AttributeError, RuntimeError, TypeError):
        return None


def attention_of(name: str) -> Attention:
    """The model's attention: fa_cute.sdpa for "fa_cute"; for every other mode, fa_cute-activate
    included, torch's scaled_dot_product_attention (the backend is chosen around the step)."""
    if name == "fa_cute":
        import fa_cute

        return lambda q, k, v: fa_cute.sdpa(q, k, v, is_causal=True)
    return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, attention: Attention) -> None:
        super().__init__()
        self.heads, self.attention = heads, attention
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(),
                                 nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, width = x.shape
        # (batch, seq, 3, heads, d) -> three (batch, heads, seq, d) views: SDPA's layout
        q, k, v = self.qkv(self.ln1(x)).view(batch, seq, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = self.attention(q, k, v).transpose(1, 2).reshape(batch, seq, width)
        x = x + self.proj(y)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, vocab: int, seq: int, width: int, heads: int, layers: int,
                 attention: Attention) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        self.blocks = nn.ModuleList(Block(width, heads, attention) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied, as GPT-2
        for name, p in self.named_parameters():
            if p.dim() == 2:
                # GPT-2's init, residual projections scaled down by depth
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "2.weight")) \
                    else 0.02
                nn.init.normal_(p, std=std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


class StepTimer:
    """Per-step wall time: CUDA events on a GPU (the GPU's time, not the host's), else
    time.perf_counter."""

    def __init__(self, device: torch.device) -> None:
        self.cuda, self.pairs, self.times = device.type == "cuda", [], []

    @contextlib.contextmanager
    def step(self):
        if self.cuda:
            start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
            start.record()
            yield
            end.record()
            self.pairs.append((start, end))
        else:
            t0 = time.perf_counter()
            yield
            self.times.append((time.perf_counter() - t0) * 1e3)

    def ms(self) -> List[float]:
        if self.cuda:
            torch.cuda.synchronize()
            return [s.elapsed_time(e) for s, e in self.pairs]
        return self.times


def train(args: argparse.Namespace, attn: str, data: torch.Tensor) -> Dict:
    """Train one model with attention `attn`; its losses, step times and memory."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)  # the same initial weights for every backend
    model = GPT(args.vocab, args.seq, args.width, args.heads, args.layers,
                attention_of(attn)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    if args.compile:
        # --compare compiles the same GPT.forward twice: a fresh cache keeps the second run
        # from reusing the first's graph (with the other attention baked in)
        torch._dynamo.reset()
    run_model = torch.compile(model, fullgraph=True) if args.compile else model
    backend = SDPA_BACKEND.get(attn)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    timer = StepTimer(device)
    losses = []
    choice = sdpa_choice(args, attn)
    if choice is not None:
        print(f"{attn}: scaled_dot_product_attention runs {choice}", flush=True)
    with _activated(attn) as calls, _fresh_compilation(args.compile):
        _train_steps(args, attn, data, device, run_model, opt, backend, timer, losses)
    if calls is not None:
        check_activated_calls(calls, args.steps)
    times = timer.ms()[args.warmup_steps:] or timer.ms()[-1:]
    step_ms = statistics.median(times)
    return dict(attn=attn, losses=[float(x) for x in losses], step_ms=step_ms,
                timed_steps=len(times), tokens_per_s=args.batch * args.seq / (step_ms / 1e3),
                peak_memory_bytes=(torch.cuda.max_memory_allocated(device)
                                   if device.type == "cuda" else None),
                fa_cute_calls=calls, sdpa_backend=choice)


def _fresh_compilation(compiled: bool):
    """For a compiled run, torch.compile's on-disk caches off (AOTAutograd's and Inductor's
    FX graph cache), so that the run compiles under its own SDPA backend setting.

    Which SDPA kernel a compiled model calls is decided when AOTAutograd traces it, from the
    backend flags in force (the sdpa_kernel pin around the step); the caches key the graph
    on dynamo's graph, which holds `scaled_dot_product_attention` itself, and on grad mode,
    autocast and config, but not on those flags. All modes but fa_cute compile the same
    graph, so a cached compilation from an earlier process (`--attn sdpa --compile`, or
    `--compare fa_cute,sdpa --compile`: cuDNN's kernel on an H100 with torch 2.11) was
    reused by a later fa_cute-activate or sdpa-flash run: cuDNN ran, the flash ops that
    fa_cute.activate() takes over never did (0 calls, 0 handed back). In-process reuse is
    `torch._dynamo.reset()`'s in train()."""
    stack = contextlib.ExitStack()
    if compiled:
        import torch._functorch.config
        import torch._inductor.config

        for config, name, value in ((torch._inductor.config, "force_disable_caches", True),
                                    (torch._inductor.config, "fx_graph_cache", False),
                                    (torch._functorch.config, "enable_autograd_cache", False)):
            if hasattr(config, name):
                stack.enter_context(config.patch(**{name: value}))
    return stack


@contextlib.contextmanager
def _activated(attn: str):
    """For fa_cute-activate, `fa_cute.activate()` for the run (deactivated after, also on an
    error), yielding a dict that receives how many calls fa_cute ran and handed back; for
    the other modes, None and nothing else."""
    if attn != "fa_cute-activate":
        yield None
        return
    import fa_cute
    from fa_cute._sdpa_backend import CALLS

    if fa_cute.is_active():
        raise RuntimeError("fa_cute.activate() is already in force; --attn fa_cute-activate "
                           "activates and deactivates it itself")
    start, calls = dict(CALLS), {}
    with fa_cute.activated():
        try:
            yield calls
        finally:
            calls.update({k: CALLS[k] - start[k] for k in CALLS})


def check_activated_calls(calls: Dict[str, int], steps: int) -> None:
    """fa_cute-activate must have run fa_cute's kernels, forward and backward, and not
    PyTorch's: a count of 0, or any call handed back, means the model did not train on
    fa_cute (PyTorch chose another backend, or fa_cute refused the inputs)."""
    print(f"fa_cute-activate: fa_cute ran {calls['forward']} forward and {calls['backward']} "
          f"backward calls, handed {calls['forward_fallback']} and "
          f"{calls['backward_fallback']} to PyTorch's kernel", flush=True)
    if calls["forward"] < steps or calls["backward"] < steps:
        raise RuntimeError(f"fa_cute-activate: fa_cute ran {calls['forward']} forward and "
                           f"{calls['backward']} backward calls in {steps} steps (at least "
                           f"one of each per step expected): the model did not reach "
                           f"fa_cute; {calls}")
    if calls["forward_fallback"] or calls["backward_fallback"]:
        raise RuntimeError(f"fa_cute-activate: some attention calls went to PyTorch's kernel "
                           f"instead of fa_cute's: {calls}")


def _train_steps(args, attn, data, device, run_model, opt, backend, timer, losses) -> None:
    for step in range(args.steps):
        batch = data[step].to(device, non_blocking=True)
        with timer.step():
            # the forward picks SDPA's backend; autograd then runs that backend's backward
            with sdpa_kernel(backend) if backend else contextlib.nullcontext(), \
                    torch.autocast(device.type, dtype=torch.bfloat16):
                loss = run_model(batch[:, :-1], batch[:, 1:])
            loss.backward()
            if args.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(
                    [p for group in opt.param_groups for p in group["params"]], args.grad_clip)
            for group in opt.param_groups:
                group["lr"] = learning_rate(args, step)
            opt.step()
            opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
        if step % args.log_every == 0 or step == args.steps - 1:
            print(f"{attn} step {step}: loss {loss.item():.4f}", flush=True)


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """--lr after a linear warm-up of --lr-warmup steps, then a cosine decay to
    --min-lr * --lr at the last step."""
    if step < args.lr_warmup:
        return args.lr * (step + 1) / args.lr_warmup
    progress = (step - args.lr_warmup) / max(1, args.steps - 1 - args.lr_warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return args.lr * (args.min_lr + (1 - args.min_lr) * cosine)


def compare(a: Dict, b: Dict, every: int) -> Dict:
    """Relative loss difference |a - b| / |b| at steps 0, every, 2 * every, ...: the same
    data and initial weights, so two correct attentions differ only by rounding. Also the
    step of the largest (worst_step) and both runs' losses at the compared steps."""
    steps = list(range(0, len(a["losses"]), every))
    rel = [abs(a["losses"][s] - b["losses"][s]) / abs(b["losses"][s]) for s in steps]
    worst = max(range(len(steps)), key=rel.__getitem__)
    return dict(steps=steps, rel_diff=rel, max_rel_diff=rel[worst], worst_step=steps[worst],
                names=[a["attn"], b["attn"]], losses=[[a["losses"][s] for s in steps],
                                                      [b["losses"][s] for s in steps]])


def compare_table(c: Dict) -> str:
    """compare()'s result as lines: each compared step's two losses and their relative
    difference, the worst step marked."""
    a, b = c["names"]
    lines = [f"{'step':>6} {a:>16} {b:>16} {'rel diff':>10}"]
    for s, la, lb, d in zip(c["steps"], *c["losses"], c["rel_diff"]):
        mark = "  <- worst" if s == c["worst_step"] else ""
        lines.append(f"{s:>6} {la:>16.5f} {lb:>16.5f} {d:>10.2e}{mark}")
    return "\n".join(lines)


def report(r: Dict) -> None:
    memory = ("n/a" if r["peak_memory_bytes"] is None
              else f"{r['peak_memory_bytes'] / 2**20:.0f} MiB")
    print(f"{r['attn']}: final loss {r['losses'][-1]:.4f}, step {r['step_ms']:.2f} ms (median "
          f"of {r['timed_steps']}), {r['tokens_per_s']:.0f} tokens/s, peak memory {memory}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    data = markov_batches(args.steps, args.batch, args.seq, args.vocab, args.seed)
    floor = chain_entropy(args.vocab, args.seed)
    print(f"GPT: {args.layers} layers, width {args.width}, {args.heads} heads, seq {args.seq}, "
          f"vocab {args.vocab}, batch {args.batch}, {args.steps} steps, bf16 autocast"
          f"{', compiled' if args.compile else ''}; lr {args.lr:g} (warm-up {args.lr_warmup}, "
          f"cosine to {args.min_lr:g}x), grad clip {args.grad_clip:g}; corpus: Markov chain (loss floor "
          f"{floor:.3f} nats, start ln(vocab) = {math.log(args.vocab):.3f})")
    runs = [train(args, attn, data) for attn in (args.compare or (args.attn,))]
    for r in runs:
        report(r)
    result = dict(config={k: v for k, v in vars(args).items() if k != "json"},
                  loss_floor=floor, torch=torch.__version__,
                  gpu=torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                  runs=runs)
    status = 0
    if args.compare:
        c = compare(runs[0], runs[1], args.log_every)
        result["compare"] = c
        print(compare_table(c))
        ok = c["max_rel_diff"] <= args.tolerance
        print(f"max relative loss difference {c['max_rel_diff']:.2e} at step "
              f"{c['worst_step']}: {'within' if ok else 'OVER'} {args.tolerance:.0%}")
        status = 0 if ok else 1
    if not all(math.isfinite(x) for r in runs for x in r["losses"]):
        print("a loss is not finite")
        status = 1
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
