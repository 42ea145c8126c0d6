"""Speed benchmark of SAPT's mixture of T LoRA blocks (issue "Speed"), in one process and one run.

    python bench/speed.py                      # SmolLM2-135M, the table
    python bench/speed.py --model tiny-llama   # a tiny random LLaMA
    python bench/speed.py --json               # only the target ratios, as one JSON object
    python bench/speed.py --device cuda        # a GPU: random-weight SmolLM2/1B/7B configs (bench/speed_cuda.py)

What is timed, on the same frozen backbone (all models below share its weight tensors):
- a training step (forward, backward, AdamW step) of SAPT with T = 1, 5, 15 blocks (the last one
  trainable, the router trained, as at stage T) against one plain PEFT LoRA (same r, q and v);
- an evaluation forward pass and a greedy generation of 32 tokens (KV cache, left-padded batch) of SAPT
  with T = 15 against the base model without adapters;
- batch-of-one generation of 32 and 128 tokens with T = 15, merged (`sapt.modules.merge.merged`, the
  merge and the restore included) against unmerged.
Each repeat runs every variant once, in rotating order, so that a noisy machine slows all of them alike;
ratios are computed per repeat (paired) and reported as median [min-max] over the repeats.

`--json` prints {"train_ratio_t15": T=15 step / LoRA step, "forward_ratio_t15": the larger of the
forward and the generation ratio (T=15 / base), "memory_ratio_t15": peak training memory T=15 / LoRA,
"bf16_train_speedup" and "bf16_generate_speedup": float32 time / bfloat16-backbone time of the T=15
training step and generation}. Targets: <= 1.15, <= 1.10, <= 1.10, and >= 1.6 for the bf16 train step.

The bf16 comparison builds a second T=15 model as `--backbone-dtype bfloat16` does (frozen weights in
bfloat16, eager attention on the CPU; blocks, router and optimiser in float32) with the same blocks, and
times its training step and generation against the float32 T=15 model's, in rotating rounds. Both
losses use the logits of the answer positions only (sapt.modules.target_logits), the PEFT LoRA's too.

Peak memory: bytes of every live tensor, exact, from the CPU allocator's records (torch.profiler,
profile_memory): the persistent ones (weights, blocks, router, optimiser state) plus the peak of what
the measured call allocates on top. The shared backbone is counted in each model's total.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from itertools import chain
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from sapt.models import LoadedModel, eager_attention_on_cpu, load_model  # noqa: E402
from sapt.modules.blocks.lora import LoRABlocks, LoRAConfig  # noqa: E402
from sapt.modules.blocks.targets import TARGET_PATTERNS, find_targets  # noqa: E402
from sapt.modules.merge import merged  # noqa: E402
from sapt.modules.sapt_model import SAPTModel  # noqa: E402
from sapt.modules.target_logits import causal_lm_loss  # noqa: E402

BLOCK_COUNTS = (1, 5, 15)
TARGETS = {"train_ratio_t15": 1.15, "forward_ratio_t15": 1.10, "memory_ratio_t15": 1.10}
BF16_TARGET = 1.6  # float32 train step / bfloat16 train step


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- models ------------------------------------------------------------------------------------------
def shared_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of the module tree that shares every parameter and buffer (the frozen backbone) with `model`."""
    memo = {id(t): t for t in chain(model.parameters(), model.buffers())}
    return copy.deepcopy(model, memo)


def build_sapt(loaded: LoadedModel, n_blocks: int, r: int, alpha: float, seed: int) -> SAPTModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SAPTModel(LoadedModel(shared_copy(loaded.model), loaded.tokenizer, loaded.family, loaded.name),
                          LoRABlocks(LoRAConfig(r=r, alpha=alpha)))
        for t in range(n_blocks):
            model.add_task(f"task{t}")
        with torch.no_grad():  # trained-looking blocks (B is zero at init), small like real ones
            for layer in model.blocks.layers.values():
                for p in layer.lora_B:
                    p.normal_(std=0.02)
    return model


def bf16_copy(loaded: LoadedModel, max_length: int) -> LoadedModel:
    """The backbone as `sapt run --backbone-dtype bfloat16` builds it: weights in bfloat16, and on the CPU
    eager attention (see sapt.models.eager_attention_on_cpu). SAPTModel adds the LM-head hook itself."""
    model = copy.deepcopy(loaded.model).to(torch.bfloat16)
    eager_attention_on_cpu(model, max_length)
    return LoadedModel(model, loaded.tokenizer, loaded.family, loaded.name)


def build_peft(loaded: LoadedModel, r: int, alpha: float, seed: int):
    from peft import LoraConfig, get_peft_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        base = shared_copy(loaded.model)
        targets = find_targets(base, TARGET_PATTERNS[loaded.family])
        model = get_peft_model(base, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets))
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(std=0.02)
    return model


# ---- inputs ------------------------------------------------------------------------------------------
def train_batch(vocab: int, batch: int, prompt: int, answer: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(8, vocab, (batch, prompt + answer), generator=g)
    prompt_mask = torch.zeros_like(ids)
    prompt_mask[:, :prompt] = 1
    labels = ids.masked_fill(prompt_mask.bool(), -100)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "prompt_mask": prompt_mask, "labels": labels}


def prompt_batch(vocab: int, lengths: list[int], pad: int, seed: int) -> dict[str, torch.Tensor]:
    """Left-padded prompts of different lengths, as `sapt.batching.collate_prompts` makes them."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = torch.randint(8, vocab, (n,), generator=g)
        mask[i, width - n:] = 1
    return {"input_ids": ids, "attention_mask": mask, "prompt_mask": mask}


# ---- measuring ---------------------------------------------------------------------------------------
def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        if t is not None:
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
    return sum(seen.values())


def persistent_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> int:
    tensors = list(model.parameters()) + list(model.buffers())
    for m in model.modules():
        if hasattr(m, "stacks") and getattr(m, "n_blocks", 0):
            tensors += list(m.stacks())
    if optimizer is not None:
        tensors += [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
    return storage_bytes(tensors)


def transient_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes allocated by fn() above what was live when it started (CPU allocator records)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    cur = peak = 0
    for e in events:
        cur += e.nbytes()
        peak = max(peak, cur)
    return peak


def time_rounds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per call of every fn, `repeats` rounds, each round running every fn once (rotating order)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times = {n: [] for n in names}
    for k in range(repeats):
        for n in names[k % len(names):] + names[:k % len(names)]:
            t0 = time.perf_counter()
            fns[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def time_rounds_modes(fns: dict[str, Callable[[], object]], models: dict[str, torch.nn.Module],
                      repeats: int) -> dict[str, list[float]]:
    """time_rounds for variants that need their model in train (a "step") or eval mode."""
    def in_mode(name: str, fn: Callable[[], object]) -> Callable[[], object]:
        def run():
            models[name].train(name.endswith("step"))
            return fn()
        return run
    return time_rounds({k: in_mode(k, f) for k, f in fns.items()}, repeats, warmup=1)


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    ratios = sorted(a / b for a, b in zip(num, den))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def fmt_ratio(s: dict[str, float]) -> str:
    return f"{s['median']:.3f} [{s['min']:.3f}-{s['max']:.3f}]"


def fmt_ms(ts: list[float]) -> str:
    return f"{1000 * statistics.median(ts):9.1f} [{1000 * min(ts):.0f}-{1000 * max(ts):.0f}]"


# ---- the benchmark -----------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a == "--device" or a.startswith("--device=") for a in argv):  # the accelerator benchmark, its own options
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import speed_cuda

        return speed_cuda.main(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog="--device cuda|cpu runs "
                                 "bench/speed_cuda.py instead (real model configs, random weights, bfloat16); "
                                 "`--device cuda --help` lists its options")
    ap.add_argument("--model", default="smollm2", help="smollm2 (default), tiny-llama, or a causal hub id/path")
    ap.add_argument("--repeats", type=int, help="timed repeats of each measurement (default 5; 25 for models "
                    "under 10M parameters)")
    ap.add_argument("--json", action="store_true", help="print only the three target ratios as one JSON object")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank (default 8)")
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--batch", type=int, default=4, help="training and forward batch (default 4)")
    ap.add_argument("--prompt-len", type=int, default=48, help="prompt tokens of the training batch (default 48)")
    ap.add_argument("--answer-len", type=int, default=16, help="answer tokens of the training batch (default 16)")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens (default 32)")
    ap.add_argument("--merge-tokens", default="32,128", help="generation lengths of the merge comparison ('' skips it)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's default). One "
                    "thread measures the work itself: on a busy machine a second thread mostly waits for its core")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bfloat16-backbone comparison")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler op table of the T=15 "
                    "training step and the base/T=15 generation")
    args = ap.parse_args(argv)
    out = (lambda s: log(s)) if args.json else print
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    loaded = load_model(args.model)
    if loaded.family != "causal":
        raise SystemExit("bench/speed.py: only decoder-only models (LLaMA family) are benchmarked")
    base = loaded.model
    base.requires_grad_(False)
    vocab = base.get_input_embeddings().num_embeddings
    if args.repeats is None:
        args.repeats = 5 if sum(p.numel() for p in base.parameters()) > 10_000_000 else 25
    pad = loaded.tokenizer.pad_token_id
    log(f"loaded {args.model} in {time.perf_counter() - t0:.1f}s; building models")
    sapt = {T: build_sapt(loaded, T, args.r, args.alpha, seed=T) for T in BLOCK_COUNTS}
    lora = build_peft(loaded, args.r, args.alpha, seed=0)
    n_adapted = len(sapt[1].blocks.layers)
    s15 = sapt[15]

    mem: dict[str, int] = {}
    batch = train_batch(vocab, args.batch, args.prompt_len, args.answer_len, seed=1)
    fwd_args = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    # -- training step --------------------------------------------------------------------------------
    def sapt_step(m: SAPTModel, opt):
        def step():
            m(batch).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    def lora_step(m, opt):
        def step():  # the loss as SAPTModel computes it (logits of the answer positions only)
            causal_lm_loss(m, **fwd_args).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    train_fns, opts = {}, {}
    opts["lora"] = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-5)
    lora.train()
    train_fns["lora"] = lora_step(lora, opts["lora"])
    for T, m in sapt.items():
        m.train()
        opts[f"T={T}"] = torch.optim.AdamW(m.trainable_parameters(), lr=1e-5)
        train_fns[f"T={T}"] = sapt_step(m, opts[f"T={T}"])
    log("timing training steps")
    for name, fn in train_fns.items():  # one step first: the optimiser state then exists and is counted
        fn()
    model_of = {"lora": lora, **{f"T={T}": m for T, m in sapt.items()}}
    for name, fn in train_fns.items():
        mem[f"train {name}"] = persistent_bytes(model_of[name], opts[name]) + transient_peak_bytes(fn)
    train_t = time_rounds(train_fns, args.repeats, warmup=0)

    # -- forward and generation -----------------------------------------------------------------------
    for m in (base, s15):
        m.eval()
    gen_batch = prompt_batch(vocab, [48, 56, 64, 40] * (args.batch // 4 + 1), pad, seed=2)
    gen_batch = {k: v[: args.batch] for k, v in gen_batch.items()}
    gen_kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                  pad_token_id=pad, eos_token_id=loaded.tokenizer.eos_token_id)

    def base_forward():
        with torch.no_grad():
            return causal_lm_loss(base, **fwd_args)

    def sapt_forward():
        with torch.no_grad():
            return s15(batch)

    def generate(m: SAPTModel | None, b: dict, **kw):
        """Greedy generation as SAPTModel.generate does it (routing once, then KV-cached decoding), but
        forced to the full length so that every variant does the same work."""
        def run():
            with torch.no_grad():
                if m is None:
                    return base.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **gen_kw | kw)
                w = m.routing_weights(b["input_ids"], b["prompt_mask"])
                with m.routed(w):
                    return m.base.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], **gen_kw | kw)
        return run

    log("timing forward passes and generation")
    fg_fns = {"base forward": base_forward, "T=15 forward": sapt_forward,
              "base generate": generate(None, gen_batch), "T=15 generate": generate(s15, gen_batch)}
    for name, fn in fg_fns.items():
        fn()
        model = base if name.startswith("base") else s15
        mem[name] = persistent_bytes(model) + transient_peak_bytes(fn)
    fg_t = time_rounds(fg_fns, args.repeats, warmup=0)

    # -- merge ----------------------------------------------------------------------------------------
    merge_t = {}
    merge_tokens = [int(x) for x in args.merge_tokens.split(",") if x.strip()]
    if merge_tokens:
        log("timing merged against unmerged generation")
        one = prompt_batch(vocab, [64], pad, seed=3)

        def merged_generate(n):
            def run():
                with torch.no_grad():
                    w = s15.routing_weights(one["input_ids"], one["prompt_mask"])
                    with merged(s15, w), s15.routed(w):
                        return s15.base.generate(input_ids=one["input_ids"], attention_mask=one["attention_mask"],
                                                 **gen_kw | {"max_new_tokens": n, "min_new_tokens": n})
            return run

        def merge_only():
            with torch.no_grad():
                w = s15.routing_weights(one["input_ids"], one["prompt_mask"])
                with merged(s15, w):
                    pass

        fns = {}
        for n in merge_tokens:
            fns[f"unmerged {n}"] = generate(s15, one, max_new_tokens=n, min_new_tokens=n)
            fns[f"merged {n}"] = merged_generate(n)
        fns["merge+restore"] = merge_only
        merge_t = time_rounds(fns, max(3, args.repeats - 2), warmup=0)  # the model is warm from above

    # -- bf16 backbone against float32 ---------------------------------------------------------------
    bf16_t, bf16_loss = {}, {}
    if not args.no_bf16:
        log("timing a bfloat16 backbone against float32 (T=15)")
        half = bf16_copy(loaded, args.prompt_len + args.answer_len)
        s15_bf16 = build_sapt(half, 15, args.r, args.alpha, seed=15)
        with torch.no_grad():  # the same blocks and router as the float32 model
            for name, layer in s15_bf16.blocks.layers.items():
                for i in range(15):
                    layer.lora_A[i].copy_(s15.blocks.layers[name].lora_A[i])
                    layer.lora_B[i].copy_(s15.blocks.layers[name].lora_B[i])
            s15_bf16.router.load_state_dict(s15.router.state_dict())
        s15.eval()
        s15_bf16.eval()
        with torch.no_grad():
            bf16_loss = {"float32": float(s15(batch)), "bfloat16": float(s15_bf16(batch))}
        opts["bf16"] = torch.optim.AdamW(s15_bf16.trainable_parameters(), lr=1e-5)
        fns = {"float32 train step": train_fns["T=15"], "bfloat16 train step": sapt_step(s15_bf16, opts["bf16"]),
               "float32 generate": generate(s15, gen_batch), "bfloat16 generate": generate(s15_bf16, gen_batch)}
        bf16_t = time_rounds_modes(fns, {"float32 train step": s15, "bfloat16 train step": s15_bf16,
                                         "float32 generate": s15, "bfloat16 generate": s15_bf16}, args.repeats)

    # -- results --------------------------------------------------------------------------------------
    all_t = {**train_t, **fg_t, **merge_t, **bf16_t}
    ratios = {f"train T={T} / lora": ratio_stats(train_t[f"T={T}"], train_t["lora"]) for T in BLOCK_COUNTS}
    ratios["forward T=15 / base"] = ratio_stats(fg_t["T=15 forward"], fg_t["base forward"])
    ratios["generate T=15 / base"] = ratio_stats(fg_t["T=15 generate"], fg_t["base generate"])
    for n in merge_tokens:
        ratios[f"merged / unmerged, {n} tokens"] = ratio_stats(merge_t[f"merged {n}"], merge_t[f"unmerged {n}"])
    mem_ratios = {f"train T={T} / lora": mem[f"train T={T}"] / mem["train lora"] for T in BLOCK_COUNTS}
    mem_ratios["forward T=15 / base"] = mem["T=15 forward"] / mem["base forward"]
    mem_ratios["generate T=15 / base"] = mem["T=15 generate"] / mem["base generate"]

    if bf16_t:
        ratios["bf16 speed-up, train step"] = ratio_stats(bf16_t["float32 train step"], bf16_t["bfloat16 train step"])
        ratios["bf16 speed-up, generate"] = ratio_stats(bf16_t["float32 generate"], bf16_t["bfloat16 generate"])

    summary = {
        "train_ratio_t15": round(ratios["train T=15 / lora"]["median"], 4),
        "forward_ratio_t15": round(max(ratios["forward T=15 / base"]["median"],
                                       ratios["generate T=15 / base"]["median"]), 4),
        "memory_ratio_t15": round(mem_ratios["train T=15 / lora"], 4),
    }
    if bf16_t:
        summary["bf16_train_speedup"] = round(ratios["bf16 speed-up, train step"]["median"], 4)
        summary["bf16_generate_speedup"] = round(ratios["bf16 speed-up, generate"]["median"], 4)
    out(f"# sapt speed: {args.model}, r={args.r}, {n_adapted} adapted projections; {datetime.date.today()}; "
        f"{cpu_name()} ({os.cpu_count()} cores), {torch.get_num_threads()} torch thread(s), torch {torch.__version__}")
    base_macs = sum(m.in_features * m.out_features for m in base.modules() if isinstance(m, torch.nn.Linear))
    mix_macs = sum(15 * args.r * (l.base.in_features + l.base.out_features) for l in s15.blocks.layers.values())
    out(f"# arithmetic: the T=15 mixture (rank {15 * args.r} update of q and v) adds {100 * mix_macs / base_macs:.1f}% "
        f"to the {base_macs / 1e6:.1f}M multiply-adds per token of the model's linear layers")
    out(f"# train batch {args.batch}x{args.prompt_len + args.answer_len} tokens; forward the same; generate "
        f"{args.batch} left-padded prompts, {args.new_tokens} new tokens; {args.repeats} repeats")
    out("")
    out(f"{'variant':28s} {'ms median [min-max]':>24s}  {'peak MiB':>9s}")
    for name, ts in all_t.items():
        key = f"train {name}" if name in train_t else name
        peak = f"{mem[key] / 2**20:9.1f}" if key in mem else " " * 9
        out(f"{name:28s} {fmt_ms(ts):>24s}  {peak}")
    out("")
    out(f"{'ratio':32s} {'time median [min-max]':>24s}  {'memory':>7s}  target")
    for name, s in ratios.items():
        m = f"{mem_ratios[name]:7.3f}" if name in mem_ratios else " " * 7
        target = {"train T=15 / lora": "time <= 1.15, memory <= 1.10", "forward T=15 / base": "<= 1.10",
                  "generate T=15 / base": "<= 1.10"}.get(name, "")
        out(f"{name:32s} {fmt_ratio(s):>24s}  {m}  {target}")
    if merge_tokens:
        per_tok = (statistics.median(merge_t[f"unmerged {merge_tokens[-1]}"])
                   - statistics.median(merge_t[f"merged {merge_tokens[-1]}"])
                   + statistics.median(merge_t["merge+restore"])) / merge_tokens[-1]
        cost = statistics.median(merge_t["merge+restore"])
        out(f"\nmerge+restore {1000 * cost:.1f} ms; unmerged decoding costs {1000 * per_tok:.2f} ms/token more than "
            f"merged at batch 1, so merging pays from about {cost / per_tok:.0f} new tokens" if per_tok > 0 else
            f"\nmerge+restore {1000 * cost:.1f} ms; merged decoding is not faster per token here: merging does not pay")
    if bf16_loss:
        out(f"\nbf16: loss of the training batch (eval mode, T=15, same blocks) {bf16_loss['float32']:.4f} in float32, "
            f"{bf16_loss['bfloat16']:.4f} with the bfloat16 backbone; speed-ups are float32 time / bfloat16 time "
            f"(target >= {BF16_TARGET} for the train step)")
    met = {k: summary[k] <= TARGETS[k] for k in TARGETS}
    out("\ntargets: " + ", ".join(f"{k} {summary[k]:.3f} {'met' if ok else 'NOT met'} (<= {TARGETS[k]})"
                                   for k, ok in met.items()))
    if bf16_t:
        ok = summary["bf16_train_speedup"] >= BF16_TARGET
        out(f"bf16_train_speedup {summary['bf16_train_speedup']:.3f} {'met' if ok else 'NOT met'} (>= {BF16_TARGET})")

    if args.profile:
        profile_steps({"train lora": train_fns["lora"], "train T=15": train_fns["T=15"],
                       "base generate": fg_fns["base generate"], "T=15 generate": fg_fns["T=15 generate"]},
                      15 * args.r, out)
    if args.json:
        print(json.dumps(summary))
    return 0


def profile_steps(fns: dict[str, Callable[[], object]], width: int, out) -> None:
    """Where the time goes: self CPU time of the ops that touch the stacked blocks (an input with a
    dimension of T*r) against all ops, and the top ops."""
    for name, fn in fns.items():
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            fn()
        events = prof.key_averages(group_by_input_shape=True)
        total = sum(e.self_cpu_time_total for e in events)
        mixture = [e for e in events if any(width in shape for shape in (e.input_shapes or []) if shape)]
        mix = sum(e.self_cpu_time_total for e in mixture)
        calls = sum(e.count for e in mixture)
        out(f"\n## profile: {name}: {total / 1e3:.0f} ms of op time, {mix / 1e3:.0f} ms ({100 * mix / total:.1f}%) "
            f"in {calls} calls of ops on the stacked blocks (a dimension of T*r = {width})")
        out(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    sys.exit(main())
