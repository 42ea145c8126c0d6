"""The Python API: `sapt.run(**config)` learns a task sequence, `sapt.load(run_dir)` answers with the result.

    import sapt

    result = sapt.run(model="tiny-llama", tasks=["topic", "sentiment"], epochs=1, output="runs/api")
    result.metrics["ap"], result.run_dir          # metrics.json as a dict; the run directory (a Path)

    trained = sapt.load(result.run_dir)
    trained.tasks                                 # ["topic", "sentiment"], in training order
    [a] = trained.predict(["Review: flimsy and noisy."])
    a.text, a.routing                             # the answer; {"topic": 0.31, "sentiment": 0.69}

`sapt.load` also takes an export of a run (`sapt export --out DIR`: the folder, a copy of it anywhere, or
the id of a Hub repo it was pushed to, `sapt export --push-to-hub USER/REPO`), and answers from it exactly
as from the run.

`sapt.run` takes the keys of a YAML config (`sapt run --help` lists them, with underscores) and resolves
them exactly as `sapt run` does (defaults < built-in preset < `config_file` < keywords, every value checked
by `sapt.config.resolve`), so a bad value is the same one-line `ConfigError`. `sapt run` and
`sapt predict` are thin layers over these functions.

Nothing here imports torch until `run` or `load` is called: `import sapt` stays light.
"""
from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from sapt.config import ConfigError

if TYPE_CHECKING:
    import torch

    from sapt.config import RunConfig
    from sapt.methods import Method
    from sapt.modules.sapt_model import SAPTModel

__all__ = ["Answer", "MissingDefinitionWarning", "RunResult", "TrainedRun", "load", "run"]

PER_TASK_REFUSAL = "a per-task run needs the true task id of each input; score it with `sapt eval`"


class MissingDefinitionWarning(UserWarning):
    """Inputs given without a definition to a run whose tasks trained with definitions: the router learned
    from prompts that hold one and routes a bare input much worse (on the demo, 2 of 8 topic inputs right
    instead of 8 of 8). A warning, not a refusal: an input may truly have no task definition to give."""


@dataclass
class RunResult:
    """What `sapt.run` returns: the run's metrics.json (a dict), the run directory it wrote (OUTPUT, or
    OUTPUT-2, ... with `force_new`), the score table `sapt run` prints (empty on the processes other than
    the main one under `accelerate launch`), the seconds spent (timing.json) and the resolved config."""
    metrics: dict[str, Any]
    run_dir: Path
    table: str = ""
    timing: dict[str, float] | None = None
    config: RunConfig | None = field(default=None, repr=False)

    def load(self) -> TrainedRun:
        """The trained run, ready to answer: `sapt.load(self.run_dir)`."""
        return load(self.run_dir)


@dataclass(frozen=True)
class Answer:
    """One input's answer (`text`), the weight of each task's block in its mixture (`routing`: task name ->
    weight, in training order; they sum to 1) and the input it answers. `routing` is None for the
    methods that mix with fixed weights (seq-lora, inc-lora, o-lora, replay, mtl): there is nothing per
    input to report."""
    text: str
    routing: dict[str, float] | None = None
    input: str = ""

    @property
    def top_task(self) -> str | None:
        """The task whose block has the largest weight (None without routing)."""
        return max(self.routing, key=self.routing.get) if self.routing else None


def run(config_file: str | Path | None = None, *, force_new: bool = False,
        allow_config_change: str | Iterable[str] = (), **config: Any) -> RunResult:
    """Learn a task sequence, as `sapt run` does; resumes whatever is finished in the output directory.

    `config`: config keys and values, as in a YAML file (`lr=1e-4`, `tasks=["sst2", "agnews"]`,
    `output="runs/x"`); they override `config_file`. `force_new`: if the output holds a run of another
    config, use OUTPUT-2 (-3, ...) instead of refusing. `allow_config_change`: keys (lr, router_lr) that
    may differ from the saved config when resuming (a list, or a comma-separated string).

    Raises ConfigError (a ValueError) for a bad key, value, file or output directory (RunDirError, a kind of
    it, for a directory in use, damaged or not a run; both are sapt.errors.SaptError), before anything is
    written; the errors of `sapt run` otherwise (sapt.data.DataError, sapt.models.ModelLoadError,
    sapt.train.TrainingError, OSError)."""
    from sapt.config import _plain, resolve

    if not isinstance(_plain(force_new), bool):  # "no" is truthy: it would have started a new directory
        raise ConfigError(f"force_new: expected True or False, got {force_new!r}")
    cfg = resolve(config, None if config_file is None else str(_a_path("config_file", config_file)))
    if isinstance(allow_config_change, str):
        allow_config_change = [k.strip() for k in allow_config_change.split(",") if k.strip()]
    from sapt.train import run as train_run  # torch, transformers: only now

    result = train_run(cfg, force_new=bool(_plain(force_new)), allow_changes=tuple(allow_config_change or ()))
    return RunResult(metrics=result.metrics, run_dir=result.run_dir, table=result.table,
                     timing=result.timing, config=cfg)


class TrainedRun:
    """A finished (or partly finished) run, loaded once to answer inputs: every trained stage's block and
    the router of the last one, on the base model of its config (`sapt.load`). `run_dir`: its absolute path
    (of the run directory, or of the export it was loaded from: `from_export` then says so).

    `tasks`: the trained tasks in training order; `config`: the run's RunConfig (config.yaml);
    `metrics`: metrics.json as a dict (None if the run has evaluated no stage); `model`: the SAPTModel;
    `method`: its sapt.methods.Method."""

    def __init__(self, run_dir: Path, config: RunConfig, model: SAPTModel, tasks: list[str], method: Method):
        self.run_dir = run_dir
        self.config = config
        self.model = model
        self.tasks = tasks
        self.method = method
        self._warned_no_definition = False

    @property
    def from_export(self) -> bool:
        """Whether this was loaded from an export of the run (`sapt export`), not from its run directory."""
        from sapt.rundir import is_export

        return is_export(self.run_dir)

    def __repr__(self) -> str:
        return f"TrainedRun({str(self.run_dir)!r}, model={self.config.model!r}, method={self.config.method!r}, tasks={self.tasks})"

    @property
    def definitions(self) -> dict[str, str]:
        """Each trained task's definition (tasks.json of the run or export; `sapt report` and the export's
        model card list them), in training order."""
        from sapt.rundir import task_definitions

        return task_definitions(self.run_dir)

    @property
    def metrics(self) -> dict[str, Any] | None:
        from sapt.rundir.results import read_metrics_as_written

        return read_metrics_as_written(self.run_dir)

    # ---- answering ---------------------------------------------------------------------------------
    def predict(self, texts: str | Sequence[str], definition: str = "", max_new_tokens: int | None = None,
                merge: bool = False, stop_at_newline: bool = False) -> list[Answer]:
        """Greedy answers with the run's mixture, as `sapt predict` gives them: one Answer per text.

        The prompt template of the model family is applied with `definition` (default: none);
        `max_new_tokens` defaults to the run's; `merge`: answer one input at a time with its mixture
        merged into the base weights (faster for long outputs; not under FSDP); `stop_at_newline`: end an
        answer at its first line break. A per-task run is refused (it needs the true task id: use
        `generate(..., routing={task: 1.0})`)."""
        import torch

        from sapt.evaluation.generation import predict

        texts = _texts(texts)
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        if self.method.needs_task_id:
            raise ConfigError(PER_TASK_REFUSAL)
        if merge and self.model.sharded:
            raise ConfigError("merge (--merge) needs whole base weights; it cannot be used under FSDP")
        if merge and getattr(self.config, "quantize", "none") != "none":  # W + update needs a float W
            raise ConfigError(f"merge (--merge) adds the mixture to the base weights; this run's base was loaded in "
                              f"{self.config.quantize} (packed, not float): predict without --merge")
        if merge and not self.model.blocks.mergeable:
            raise ConfigError(self.model.blocks.merge_refusal())
        items = self._encode(texts, definition)
        model = self.model

        def weights_fn(batch):  # None: the router's weights (sapt); fixed mixing weights for the baselines
            return self.method.weights(model, batch, 0, training=False)

        if merge:  # one input at a time, its weighted update merged into the base weights while it generates
            from sapt.batching import collate_prompts
            from sapt.modules.merge import merged

            was_training = model.training
            model.eval()
            preds, rows = [], []
            try:
                for item in items:
                    batch = collate_prompts([item], model.family, model.tokenizer.pad_token_id)
                    with torch.no_grad():
                        w = weights_fn(batch)
                        if w is None:
                            w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
                        with merged(model, w):
                            answers, _ = model.generate(batch, max_new_tokens, stop_at_newline=stop_at_newline)
                    preds.append(answers[0])
                    rows.append(w[0].float().cpu())
            finally:
                model.train(was_training)
            weights = torch.stack(rows) if rows else torch.zeros(0, model.n_blocks)
        else:
            preds, weights = predict(model, items, self.config.eval_batch_size, max_new_tokens,
                                     weights_fn=weights_fn, stop_at_newline=stop_at_newline)
        return [Answer(pred, self._routing(w), text) for text, pred, w in zip(texts, preds, weights)]

    def generate(self, texts: str | Sequence[str], definition: str = "", max_new_tokens: int | None = None,
                 routing: Mapping[str, float] | None = None, **generate_kwargs: Any) -> list[Answer]:
        """Answers from the backbone's own `generate` under the run's mixture, with its keyword arguments
        passed through (`do_sample=True, temperature=0.7, top_p=0.9`, `num_beams=4`,
        `repetition_penalty=1.2`, ...; seed torch yourself for sampling). Greedy by default, which gives
        `predict`'s answers.

        `routing`: fixed weights for every input instead of the router's, task name -> weight (tasks left
        out weigh 0), e.g. `{"sst2": 1.0}` for that task's block alone; only for methods with a block per
        task. With `num_return_sequences=k` there are k Answers per text, one text after the other."""
        import torch

        texts = _texts(texts)
        max_new_tokens = self._max_new_tokens(max_new_tokens)
        for key in ("input_ids", "attention_mask", "inputs_embeds", "synced_gpus"):
            if key in generate_kwargs:
                raise ConfigError(f"generate: {key} is set by sapt (from the texts), not a keyword to pass")
        model, method = self.model, self.method
        fixed = self._fixed_weights(routing) if routing is not None else None
        if fixed is None and method.needs_task_id:
            raise ConfigError(PER_TASK_REFUSAL.replace("score it with `sapt eval`",
                                                       "pass routing={task: 1.0}, or score it with `sapt eval`"))
        from sapt.batching import collate_prompts, length_sorted_batches

        items = self._encode(texts, definition)
        k = generate_kwargs.get("num_return_sequences", 1)
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:  # 0 returned one answer before
            raise ConfigError(f"generate: num_return_sequences must be a whole number >= 1, got {k!r}")
        k = int(k)
        out: list[list[Answer]] = [[] for _ in texts]
        tok = model.tokenizer
        kwargs = {"do_sample": False, "num_beams": 1, "pad_token_id": tok.pad_token_id,
                  "eos_token_id": tok.eos_token_id, **generate_kwargs, "max_new_tokens": max_new_tokens}
        was_training = model.training
        model.eval()
        try:
            for idx in length_sorted_batches(items, self.config.eval_batch_size):
                batch = model.on_device(collate_prompts([items[i] for i in idx], model.family, tok.pad_token_id))
                with torch.no_grad():
                    if fixed is not None:
                        w = fixed.to(model.device).expand(len(idx), -1)
                    else:
                        w = method.weights(model, batch, 0, training=False)
                        if w is None:
                            w = model.routing_weights(batch["input_ids"], batch["prompt_mask"])
                    with model.routed(w.to(model.device)):
                        inputs = model.backbone_inputs(batch)
                        seqs = model.base.generate(**inputs, synced_gpus=model.sharded, **kwargs)
                if model.family == "causal" and "input_ids" in inputs:  # the prompt comes back too
                    seqs = seqs[:, inputs["input_ids"].shape[1]:]
                answers = [t.strip() for t in tok.batch_decode(seqs, skip_special_tokens=True)]
                for row, i in enumerate(idx):
                    mix = w[row].float().cpu()
                    routing_i = self._routing(mix) if fixed is None else dict(zip(self.tasks, map(float, mix)))
                    out[i] = [Answer(a, routing_i, texts[i]) for a in answers[row * k:(row + 1) * k]]
        finally:
            model.train(was_training)
        return [a for answers in out for a in answers]

    def routing(self, texts: str | Sequence[str], definition: str = "") -> list[dict[str, float]]:
        """The router's weights for each text (task name -> weight), without generating anything."""
        import torch

        from sapt.batching import collate_prompts, length_sorted_batches

        if not self.method.routed:
            raise ConfigError(f"a {self.method.name} run mixes its blocks with fixed weights: it has no routing")
        texts = _texts(texts)
        items = self._encode(texts, definition)
        result: list[dict[str, float]] = [{} for _ in texts]
        model = self.model
        for idx in length_sorted_batches(items, self.config.eval_batch_size):
            batch = collate_prompts([items[i] for i in idx], model.family, model.tokenizer.pad_token_id)
            with torch.no_grad():
                w = model.routing_weights(batch["input_ids"], batch["prompt_mask"]).float().cpu()
            for row, i in enumerate(idx):
                result[i] = self._routing(w[row])
        return result

    # ---- helpers -----------------------------------------------------------------------------------
    def _max_new_tokens(self, value: int | None) -> int:
        if value is None:
            return self.config.max_new_tokens
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"max_new_tokens must be a whole number >= 1, got {value!r}")
        return value

    def _encode(self, texts: list[str], definition: str) -> list:
        from sapt.batching import encode
        from sapt.data import Example

        if not definition:
            self._warn_no_definition()

        cfg = self.config
        examples = [Example(input=t, outputs=("",)) for t in texts]
        return encode(self.model.tokenizer, self.model.family, definition, examples, cfg.max_source_length,
                      cfg.max_target_length, self.model.template)

    def _warn_no_definition(self) -> None:
        """Once per loaded run: a MissingDefinitionWarning when its tasks trained with definitions.

        Also for a run trained with `route_without_definition` > 0, in other words: its router routes inputs
        without a definition, but its blocks learned each task with the definition in the prompt, and the
        definition may be what says what to do (on the built-in suite reverse_words was routed 100% to its
        block without it and scored 6 of 100; BENCHMARKS.md, "Routing without the task definition")."""
        if self._warned_no_definition:
            return
        self._warned_no_definition = True
        if any(self.definitions.get(name) for name in self.tasks):
            import warnings

            where = (f"in {self.run_dir / 'README.md'} (Task definitions)" if self.from_export else
                     f"by `sapt report --run {self.run_dir}`")
            risk = ("its router learned to route inputs without one (route_without_definition), but the blocks "
                    "learned each task with it: answers may be wrong" if self.config.route_without_definition > 0
                    else "routing and answers may be wrong")
            warnings.warn(f"the tasks of {self.run_dir} trained with a definition in every prompt and none was "
                          f"given: {risk}; give each input its task's definition (--definition, or definition=), "
                          f"listed {where}", MissingDefinitionWarning, stacklevel=4)

    def _routing(self, weights) -> dict[str, float] | None:
        if not self.method.routed:  # fixed mixing weights: nothing to report per input
            return None
        return {name: float(x) for name, x in zip(self.tasks, weights)}

    def _fixed_weights(self, routing: Mapping[str, float]) -> torch.Tensor:
        import torch

        if self.model.n_blocks != len(self.tasks):  # seq-lora, replay, mtl: one block learned every task
            raise ConfigError(f"routing=: a {self.method.name} run has one block shared by every task, "
                              "not a block per task")
        if not self.method.weighs_blocks:  # refused rather than ignored: Answer.routing would claim the mix
            raise ConfigError(f"routing=: a {self.method.name} run puts every task's prompt before the input "
                              "whatever the weights, so it cannot answer with a chosen mixture")
        # A string or a list would be read by name lookups as something else entirely, and {} or weights that
        # are all 0 or negative are no mixture: each refused in one line rather than answered from nothing.
        if not isinstance(routing, Mapping):
            raise ConfigError(f"routing=: expected a mapping of task name -> weight, e.g. {{{self.tasks[0]!r}: 1.0}}, "
                              f"got {type(routing).__name__}")
        if not routing:
            raise ConfigError("routing=: an empty mapping weighs no block; leave routing out for the router's own")
        unknown = sorted(map(str, set(routing) - set(self.tasks)))
        if unknown:
            raise ConfigError(f"routing=: unknown task(s) {', '.join(unknown)} (tasks: {', '.join(self.tasks)})")
        bad = next((v for v in routing.values() if isinstance(v, bool) or not isinstance(v, numbers.Real)), None)
        if bad is not None:
            raise ConfigError(f"routing=: weights must be numbers, got {bad!r}")
        w = torch.tensor([[float(routing.get(name, 0.0)) for name in self.tasks]])
        if not torch.isfinite(w).all():
            raise ConfigError("routing=: weights must be finite numbers")
        if (w < 0).any() or not (w > 0).any():
            raise ConfigError("routing=: weights must be >= 0 with at least one above 0 (a block's share of the "
                              "mixture)")
        return w


def _texts(texts: str | Sequence[str]) -> list[str]:
    """The input texts as a list, each a valid Unicode string: None, bytes (decode them first: sapt does not
    guess an encoding), a non-iterable and a lone surrogate (which no tokenizer can encode) are refused in one
    line instead of a TypeError or a tokenizer's UnicodeEncodeError."""
    if isinstance(texts, (bytes, bytearray)):
        raise ConfigError("expected input texts (strings), got bytes: decode them first, e.g. data.decode('utf-8')")
    if isinstance(texts, str):
        texts = [texts]
    elif texts is None or not isinstance(texts, Iterable):
        raise ConfigError(f"expected an input text or a list of them (strings), got {texts!r}")
    texts = list(texts)
    bad = next((t for t in texts if not isinstance(t, str)), None)
    if bad is not None:
        raise ConfigError(f"expected input texts (strings), got {bad!r}")
    for i, text in enumerate(texts):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ConfigError(f"input text {i} holds a lone surrogate (U+{ord(text[e.start]):04X} at position "
                              f"{e.start}), which is not text a tokenizer can encode") from None
    return texts


def load(run_dir: str | Path) -> TrainedRun:
    """The model of a run directory, rebuilt from its trained stages (each checked against manifest.json,
    as `sapt eval`, `predict` and `export` do), ready to answer.

    `run_dir` may also be an export of a run (`sapt export --out DIR`, which is self-contained: a copy
    of it anywhere loads), or, when no such local folder exists, the id of a Hugging Face Hub repo an
    export was pushed to ("USER/REPO"), downloaded with `huggingface_hub.snapshot_download` (into the Hub
    cache; HF_HUB_OFFLINE uses the cache alone; for a branch, tag or commit, pass the folder
    `snapshot_download(repo_id, revision=...)` returns). The
    model answers exactly as the run's does. Raises ConfigError for a path that is not a sapt run or
    export, a damaged stage or export file, or a Hub repo that cannot be fetched or holds no export."""
    from sapt.train import load_trained  # torch, transformers: only now

    path = _local_source(run_dir)
    cfg, model, names = load_trained(path)
    return TrainedRun(path.absolute(), cfg, model, names, method_of(cfg))


_HUB_REPO = r"^[A-Za-z0-9][\w.-]*/[\w.-]+$"  # USER/REPO (a repo's own id; a local path has other forms too)


def _a_path(name: str, value: Any) -> str | os.PathLike:
    """`value` if it is a path (a str or an os.PathLike), else one ConfigError line: Path() would take an int
    as a TypeError, and bytes or None as something that is not what the user meant."""
    if isinstance(value, (str, os.PathLike)):
        return value
    raise ConfigError(f"{name}: expected a path (a str or a pathlib.Path), got {type(value).__name__} {value!r:.60}")


def _local_source(source: str | Path) -> Path:
    """The local folder to load: `source` itself, or, when it names no local path and reads as USER/REPO,
    the snapshot of that Hub repo (which must hold a sapt export)."""
    import re

    from sapt.rundir import EXPORT_MARKER, is_export

    path = Path(_a_path("run_dir", source))
    if not isinstance(source, str) or path.exists() or not re.match(_HUB_REPO, source):
        return path
    try:
        from huggingface_hub import snapshot_download

        local = Path(snapshot_download(source, repo_type="model"))
    except Exception as e:  # hub, HTTP, offline and token errors come in many types; one line is what users need
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"{source}: no such run directory or export here, and it cannot be fetched as a Hugging "
                          f"Face Hub repo ({type(e).__name__}: {first})") from None
    if not is_export(local):
        raise ConfigError(f"Hub repo {source} holds no sapt export (no {EXPORT_MARKER}); `sapt export "
                          "--push-to-hub REPO` writes one")
    return local


def method_of(cfg: RunConfig) -> Method:
    """The sapt.methods.Method of a run config, with its options (O-LoRA's lambdas)."""
    from sapt.methods import make_method

    return make_method(cfg.method, cfg.method_options)
