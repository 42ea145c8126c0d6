"""Speed of SAPT against one PEFT LoRA on an accelerator, at the sizes that matter there (issue 28, item 3).

    python bench/speed.py --device cuda                         # SmolLM2-135M, a 1B and a 7B LLaMA config
    python bench/speed.py --device cuda --json --max-minutes 8  # the ratios per model as one JSON object
    python bench/speed.py --device cpu --models tiny            # the same code path on a tiny config (the tests)

Models are *random-weight* models built from the real configs written below (each names its source), so
nothing is downloaded and the GPU machine needs no model files: the cost of a step does not depend on what
the weights have learned. Each is built on the device in bfloat16 and measured in turn, then freed.

What is timed, per model, on one frozen bfloat16 backbone shared by every variant (blocks, router, PEFT's
LoRA and the optimiser state stay float32, as `sapt run --backbone-dtype bfloat16` and PEFT keep them):
- a training step (forward, backward, AdamW step) of SAPT with T = 15 blocks (the last one trainable and
  the router trained, as at stage 15; `speed.build_sapt`) against one PEFT LoRA (same r, on q and v);
- an evaluation forward pass and a greedy generation (KV cache, left-padded prompts, a forced length) of
  SAPT T = 15, of the PEFT LoRA and of the base model without adapters;
- the peak memory of one training step of each, measured as the CPU path measures it: the variant's own
  persistent bytes (backbone, blocks, router, optimiser state) plus the peak the step allocates on top of
  what was live when it started (on CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats).

Timing: every call is bracketed by a device synchronisation, so a time is the wall time of the work and
of its launches (SAPT's extra Python and kernel launches are part of its cost, so they must be in it).
Each round runs every variant once in rotating order; ratios are paired per round and reported as
median [min-max] over the rounds, as `bench/speed.py` reports them on the CPU.

The ratios: train = SAPT step / LoRA step (goal on a GPU: <= 1.10 at 7B, where the mixture's arithmetic
is under 1% of the step); forward and generate = SAPT / base model, the definition of the CPU targets
(<= 1.10), and the same against the LoRA (`*_vs_lora`); memory = SAPT step peak / LoRA step peak.

`--max-minutes M` is a budget for a lent machine whose time is counted: the time is checked before each
model and before each measurement. A measurement's cost is predicted from its warm-up calls (one of each
variant, made anyway); when the rounds would not fit in what is left, fewer rounds are run (at least
MIN_ROUNDS), or else the measurement and everything after it are skipped and named. A model is started
while any time is left: its construction (seconds on a GPU) is not predicted, its measurements are.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import speed  # noqa: E402  (bench/speed.py: the CPU benchmark's builders and statistics)
from sapt.models import LoadedModel, eager_attention_on_cpu  # noqa: E402
from sapt.modules.target_logits import causal_lm_loss  # noqa: E402

# The source models' config values that decide the cost of a step: widths, depth, heads, vocabulary and
# whether the head is tied. RoPE's base and scaling and the context length are left at LlamaConfig's
# defaults: rotary angles cost the same whatever their base, and no sequence here comes near a limit.
MODEL_CONFIGS: dict[str, dict] = {
    # HuggingFaceTB/SmolLM2-135M (config.json): LlamaForCausalLM
    "smollm2": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                    intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, rms_norm_eps=1e-5),
    # meta-llama/Llama-3.2-1B (config.json): LlamaForCausalLM, grouped-query attention
    "1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
               intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, rms_norm_eps=1e-5),
    # meta-llama/Llama-2-7b-hf (config.json): LlamaForCausalLM, full multi-head attention, untied head
    "7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
               intermediate_size=11008, vocab_size=32000, tie_word_embeddings=False, rms_norm_eps=1e-5),
    # not a real model: the CPU test of this code path (hidden 64, 2 layers), seconds per run
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=128, vocab_size=1024, tie_word_embeddings=True, rms_norm_eps=1e-5),
}
DEFAULT_MODELS = {"cuda": "smollm2,1b,7b", "cpu": "tiny"}
N_BLOCKS = 15
TRAIN_GOAL_7B = 1.10  # SAPT T=15 step / PEFT LoRA step on a GPU, at 7B (issue 28)
TARGETS = {"forward_ratio": 1.10, "generate_ratio": 1.10, "memory_ratio": 1.10}  # as on the CPU
MIN_ROUNDS = 3  # fewer gives no spread worth reporting: a measurement that cannot get them is skipped
MEASUREMENTS = ("memory", "train", "forward", "generate")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---- the clock ---------------------------------------------------------------------------------------
class Budget:
    """Wall-clock budget of the whole benchmark (`--max-minutes`); None: unlimited."""

    def __init__(self, minutes: float | None):
        self.start = time.perf_counter()
        self.seconds = None if minutes is None else 60.0 * minutes

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - self.elapsed()

    def rounds_that_fit(self, wanted: int, seconds_per_round: float) -> int:
        """How many of `wanted` rounds fit in what is left (all of them without a budget)."""
        if self.seconds is None:
            return wanted
        return max(0, min(wanted, int(self.left() / max(seconds_per_round, 1e-9))))


def synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None  # the CPU runs the work inside the call


def timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def time_rounds(fns: dict[str, Callable[[], object]], rounds: int, sync) -> dict[str, list[float]]:
    """Seconds per call of every fn over `rounds` rounds, each running every fn once in rotating order
    (`speed.time_rounds`, with the device synchronised around each call)."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for k in range(rounds):
        for n in names[k % len(names):] + names[:k % len(names)]:
            times[n].append(timed(fns[n], sync))
    return times


def transient_peak(fn: Callable[[], object], device: torch.device, sync) -> int:
    """Peak bytes fn() allocates above what was live when it started: the CUDA allocator's peak counter
    there, the CPU allocator's records (`speed.transient_peak_bytes`) on the CPU."""
    if device.type != "cuda":
        return speed.transient_peak_bytes(fn)
    sync()
    torch.cuda.reset_peak_memory_stats(device)
    live = torch.cuda.memory_allocated(device)
    fn()
    sync()
    return torch.cuda.max_memory_allocated(device) - live


# ---- models ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def no_weight_init():
    """transformers' switch that skips its random init (the weights are filled below instead), where the
    installed version has it. The init's work is thrown away: building SmolLM2's config on the CPU took
    2.1 s with it (float32) and 0.02 s without (bfloat16), before the 1.3 s fill."""
    for where in ("transformers.initialization", "transformers.modeling_utils"):
        try:
            module = __import__(where, fromlist=["no_init_weights"])
            return module.no_init_weights()
        except (ImportError, AttributeError):
            continue
    return contextlib.nullcontext()


def build_backbone(name: str, device: torch.device, dtype: torch.dtype, seed: int) -> LoadedModel:
    """A random LLaMA of `MODEL_CONFIGS[name]`, built directly on `device` in `dtype`, frozen.

    Built without transformers' init and filled here, seeded, on the device: matrices N(0, 0.02) (its
    `initializer_range`), norm weights 1. That is one kernel per tensor, the same for every version of
    transformers, where the library's init is a Python walk over every module that may change. Skipping
    the init also skips the tying of the head, so a tied model is tied here, explicitly."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(**MODEL_CONFIGS[name], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    with torch.device(device), default_dtype(dtype), no_weight_init():
        model = LlamaForCausalLM(config)
    if config.tie_word_embeddings:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)
    model.requires_grad_(False)
    model.eval()
    if device.type == "cpu" and dtype != torch.float32:  # as `sapt run --backbone-dtype bfloat16` does there
        eager_attention_on_cpu(model, 1024)
    return LoadedModel(model, tokenizer=None, family="causal", name=name)


def multiply_adds(config: dict, r: int) -> tuple[int, int]:
    """Multiply-adds per token of the model's linear layers, and what the T-block mixture adds to them."""
    h, L, inter, vocab = (config[k] for k in ("hidden_size", "num_hidden_layers", "intermediate_size", "vocab_size"))
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter
    mixture = N_BLOCKS * r * ((h + h) + (h + kv))  # q: in h, out h; v: in h, out kv
    return L * per_layer + h * vocab, L * mixture


# ---- one model ---------------------------------------------------------------------------------------
def measure_model(name: str, args, device: torch.device, budget: Budget, out) -> tuple[dict, list[str]]:
    """Every measurement of one model that fits the budget: (its ratios, names of the skipped measurements).
    Everything it builds (backbone, models, optimisers, batches, the closures over them) is local to this
    call, so returning deletes it; `main` then collects the cycles and empties the CUDA cache."""
    dtype = torch.bfloat16
    sync = synchronizer(device)
    t0 = time.perf_counter()
    loaded = build_backbone(name, device, dtype, seed=0)
    base = loaded.model
    vocab = base.config.vocab_size
    with torch.device(device):  # the router and the blocks are created where the backbone lives
        sapt = speed.build_sapt(loaded, N_BLOCKS, args.r, args.alpha, seed=N_BLOCKS)
        lora = speed.build_peft(loaded, args.r, args.alpha, seed=0)
    sync()
    n_params = sum(p.numel() for p in base.parameters())
    log(f"{name}: built {n_params / 1e6:.1f}M parameters on {device} in {time.perf_counter() - t0:.1f}s")

    batch = {k: v.to(device) for k, v in speed.train_batch(vocab, args.batch, args.prompt_len, args.answer_len,
                                                           seed=1).items()}
    fwd_args = {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}
    lengths = [args.prompt_len - (i % 4) * (args.prompt_len // 8) for i in range(args.batch)]  # 8/8 .. 5/8
    gen_batch = {k: v.to(device) for k, v in speed.prompt_batch(vocab, lengths, 0, seed=2).items()}
    gen_kw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False, num_beams=1,
                  pad_token_id=0, eos_token_id=2)

    opt_sapt = torch.optim.AdamW(sapt.trainable_parameters(), lr=1e-5)
    opt_lora = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-5)

    def sapt_step():
        sapt(batch).backward()
        opt_sapt.step()
        opt_sapt.zero_grad(set_to_none=True)

    def lora_step():  # the loss as SAPTModel computes it (logits of the answer positions only)
        causal_lm_loss(lora, **fwd_args).backward()
        opt_lora.step()
        opt_lora.zero_grad(set_to_none=True)

    def forward(m) -> Callable[[], object]:
        def run():
            with torch.no_grad():
                return sapt(batch) if m is sapt else causal_lm_loss(m, **fwd_args)
        return run

    def generate(m) -> Callable[[], object]:
        """Greedy generation as SAPTModel.generate does it (routing once, then KV-cached decoding),
        forced to the full length so that every variant does the same work."""
        ids, mask = gen_batch["input_ids"], gen_batch["attention_mask"]

        def run():
            with torch.no_grad():
                if m is not sapt:
                    return m.generate(input_ids=ids, attention_mask=mask, **gen_kw)
                w = sapt.routing_weights(ids, gen_batch["prompt_mask"])
                with sapt.routed(w):
                    return sapt.base.generate(input_ids=ids, attention_mask=mask, **gen_kw)
        return run

    groups = {
        "train": ({"lora step": lora_step, "T=15 step": sapt_step}, True),
        "forward": ({"base forward": forward(base), "lora forward": forward(lora),
                     "T=15 forward": forward(sapt)}, False),
        "generate": ({"base generate": generate(base), "lora generate": generate(lora),
                      "T=15 generate": generate(sapt)}, False),
    }
    times: dict[str, list[float]] = {}
    mem: dict[str, int] = {}
    skipped: list[str] = []

    def skip_from(measurement: str, why: str) -> None:
        rest = list(MEASUREMENTS[MEASUREMENTS.index(measurement):])
        skipped.extend(rest)
        log(f"{name}: {why}: skipping {', '.join(rest)}")

    for measurement in MEASUREMENTS:
        if budget.left() <= 0:
            skip_from(measurement, f"budget spent ({budget.elapsed():.0f}s)")
            break
        fns, training = groups["train" if measurement == "memory" else measurement]
        for m in (sapt, lora, base):
            m.train(training)
        if measurement == "memory":  # a first step each: the optimiser state then exists and is counted
            for fn in fns.values():
                fn()
            for label, fn in fns.items():
                model, opt = (sapt, opt_sapt) if label.startswith("T=") else (lora, opt_lora)
                mem[label] = speed.persistent_bytes(model, opt) + transient_peak(fn, device, sync)
            continue
        warm = sum(timed(fn, sync) for fn in fns.values())  # one round's cost, predicted by the warm-up
        rounds = budget.rounds_that_fit(args.repeats, warm)
        if rounds < MIN_ROUNDS:
            skip_from(measurement, f"{rounds} round(s) of {warm:.1f}s fit in the {budget.left():.0f}s left")
            break
        if rounds < args.repeats:
            log(f"{name}: {measurement}: {rounds} rounds instead of {args.repeats}, to fit the budget")
        log(f"{name}: timing {measurement}, {rounds} rounds of {warm:.2f}s")
        times.update(time_rounds(fns, rounds, sync))

    return summarise(name, n_params, times, mem, args, out), skipped


def summarise(name: str, n_params: int, times: dict, mem: dict, args, out) -> dict:
    """Print the model's table (times, peaks, ratios as median [min-max]); return its median ratios."""
    stats: dict[str, dict] = {}
    if "T=15 step" in times:
        stats["train_ratio"] = speed.ratio_stats(times["T=15 step"], times["lora step"])
    for kind in ("forward", "generate"):
        if f"T=15 {kind}" in times:
            stats[f"{kind}_ratio"] = speed.ratio_stats(times[f"T=15 {kind}"], times[f"base {kind}"])
            stats[f"{kind}_ratio_vs_lora"] = speed.ratio_stats(times[f"T=15 {kind}"], times[f"lora {kind}"])
    ratios = {k: round(s["median"], 4) for k, s in stats.items()}
    if mem:
        ratios["memory_ratio"] = round(mem["T=15 step"] / mem["lora step"], 4)

    macs, mix = multiply_adds(MODEL_CONFIGS[name], args.r)
    out(f"\n## {name}: {n_params / 1e6:.1f}M parameters, bfloat16; the T={N_BLOCKS} mixture adds "
        f"{100 * mix / macs:.2f}% to the linear layers' multiply-adds per token")
    out(f"{'variant':16s} {'ms median [min-max]':>26s}  {'peak MiB':>9s}")
    for label, ts in times.items():
        peak = f"{mem[label] / 2**20:9.1f}" if label in mem else " " * 9
        out(f"{label:16s} {speed.fmt_ms(ts):>26s}  {peak}")
    goals = {"train_ratio": f"<= {TRAIN_GOAL_7B:.2f} at 7B", **{k: f"<= {v:.2f}" for k, v in TARGETS.items()}}
    out(f"{'ratio':24s} {'median [min-max]':>24s}  goal")
    for key, s in stats.items():
        out(f"{key:24s} {speed.fmt_ratio(s):>24s}  {goals.get(key, '')}")
    if "memory_ratio" in ratios:
        out(f"{'memory_ratio':24s} {ratios['memory_ratio']:>24.3f}  {goals['memory_ratio']}")
    return ratios


# ---- the benchmark -----------------------------------------------------------------------------------
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{speed.cpu_name()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s))"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/speed.py --device", description=__doc__.split("\n")[0])
    ap.add_argument("--device", required=True, help="cuda (a GPU; cuda:N for another) or cpu (the tiny config)")
    ap.add_argument("--models", help=f"comma-separated, of {', '.join(MODEL_CONFIGS)} (default: "
                    f"{DEFAULT_MODELS['cuda']} on cuda, {DEFAULT_MODELS['cpu']} on cpu)")
    ap.add_argument("--json", action="store_true", help="print only the ratios per model as one JSON object "
                    "(the tables go to stderr)")
    ap.add_argument("--max-minutes", type=float, help="time budget of the whole run: the models and measurements "
                    "that would not fit are skipped and named (default: none)")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds of each measurement (default 10)")
    ap.add_argument("--r", type=int, default=8, help="LoRA rank (default 8)")
    ap.add_argument("--alpha", type=float, default=32.0)
    ap.add_argument("--batch", type=int, default=8, help="training, forward and generation batch (default 8)")
    ap.add_argument("--prompt-len", type=int, default=224, help="prompt tokens (default 224; generation prompts "
                    "are left-padded, 5/8 to all of it)")
    ap.add_argument("--answer-len", type=int, default=32, help="answer tokens of the training batch (default 32)")
    ap.add_argument("--new-tokens", type=int, default=32, help="generated tokens (default 32)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (default 1; 0: torch's default)")
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in (args.models or DEFAULT_MODELS[args.device.split(":")[0]]).split(",")
                   if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_CONFIGS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODEL_CONFIGS)}")
    if args.repeats < MIN_ROUNDS:
        ap.error(f"--repeats must be at least {MIN_ROUNDS}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("bench/speed.py --device cuda: torch sees no CUDA device here")
    if device.type == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    budget = Budget(args.max_minutes)
    out = log if args.json else print
    out(f"# sapt speed on {device_name(device)}: torch {torch.__version__}, SAPT T={N_BLOCKS} against one PEFT "
        f"LoRA, r={args.r} on q and v, bfloat16 backbone; train batch {args.batch}x"
        f"{args.prompt_len + args.answer_len} tokens, generation {args.batch} prompts + {args.new_tokens} tokens; "
        f"{args.repeats} rounds")

    results: dict[str, dict] = {}
    skipped_measurements: dict[str, list[str]] = {}
    skipped_models: list[str] = []
    for i, name in enumerate(args.models):
        if budget.left() <= 0:
            skipped_models = args.models[i:]
            log(f"budget of {args.max_minutes:g} min spent after {budget.elapsed():.0f}s: skipping "
                f"{', '.join(skipped_models)}")
            break
        results[name], skipped = measure_model(name, args, device, budget, out)
        if skipped:
            skipped_measurements[name] = skipped
        gc.collect()  # the model's cycles (hooks, closures) go before the next one is built
        if device.type == "cuda":
            torch.cuda.empty_cache()

    if "7b" in results and "train_ratio" in results["7b"]:
        ratio = results["7b"]["train_ratio"]
        out(f"\n7b train step T={N_BLOCKS} / LoRA {ratio:.3f}: goal <= {TRAIN_GOAL_7B} "
            f"{'met' if ratio <= TRAIN_GOAL_7B else 'NOT met'}")
    if args.json:
        print(json.dumps({"device": device_name(device), "torch": torch.__version__, "models": results,
                          "skipped_models": skipped_models, "skipped_measurements": skipped_measurements}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
