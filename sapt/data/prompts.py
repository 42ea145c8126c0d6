"""How a task definition and an input become the text a model sees.

Every template is kept in this one place, and every encoding goes through `format_prompt`, so training,
evaluation, reflection and `sapt predict` can never disagree. Two sets:

- **family** (the default, `template: family`): one template per model family. Encoder-decoder models (T5)
  get the SuperNI-style prompt and produce the answer in the decoder; causal models (LLaMA family) continue
  the prompt, so it ends with "Output: " and the caller appends the answer plus EOS when training.
- **release** (`template: release`): the public release's, which has one template per *benchmark*, the same
  for T5 and LLaMA: SuperNI's "Definition: ...\\n\\nNow complete the following example -\\nInput: ...\\nOutput: "
  and Long Sequence's "{definition}\\n{input}\\nOutput: ", with the definition stripped. The paper's numbers
  were measured with these, so the paper configs use them; other benchmarks have none (the config refuses).
"""

from __future__ import annotations

PROMPT_TEMPLATES: dict[str, str] = {
    "seq2seq": "Definition: {definition}\n\nNow complete the following example -\nInput: {input}\nOutput:",
    "causal": "{definition}\n\nInput: {input}\nOutput: ",
    "release:SuperNI": "Definition: {definition}\n\nNow complete the following example -\nInput: {input}\nOutput: ",
    "release:Long_Sequence": "{definition}\n{input}\nOutput: ",
}

# Used when a task has no definition (Long_Sequence/copa ships an empty one): no dangling header. The
# release drops an empty Long Sequence definition the same way (and SuperNI has none empty).
_NO_DEFINITION_TEMPLATES: dict[str, str] = {
    "seq2seq": "Now complete the following example -\nInput: {input}\nOutput:",
    "causal": "Input: {input}\nOutput: ",
    "release:SuperNI": "Now complete the following example -\nInput: {input}\nOutput: ",
    "release:Long_Sequence": "{input}\nOutput: ",
}
FAMILIES = ("seq2seq", "causal")
# The benchmarks the release has a template for (config `template: release`)
RELEASE_BENCHMARKS = ("SuperNI", "Long_Sequence")


def template_key(family: str, template: str = "family", benchmark: str | None = None) -> str:
    """The key of PROMPT_TEMPLATES a run uses: its family's, or with `template` "release" its benchmark's."""
    if template == "family":
        return family
    if template != "release" or benchmark not in RELEASE_BENCHMARKS:
        raise ValueError(f"no {template!r} prompt template for benchmark {benchmark!r}")
    return f"release:{benchmark}"


def format_prompt(definition: str, input: str, family: str, template: str | None = None) -> str:
    """Return the prompt for one example; `family` is "seq2seq" or "causal"; `template` a key of
    PROMPT_TEMPLATES (`template_key`), None for the family's."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(FAMILIES)}")
    key = template or family
    if key not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown prompt template {key!r}; expected one of {sorted(PROMPT_TEMPLATES)}")
    if key.startswith("release:"):
        definition = definition.strip()
    if not definition.strip():
        return _NO_DEFINITION_TEMPLATES[key].format(input=input)
    return PROMPT_TEMPLATES[key].format(definition=definition, input=input)
