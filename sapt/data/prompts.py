"""How a task definition and an input become the text a model sees.

One template per model family, kept in one place so training and evaluation can never disagree.
Encoder-decoder models (T5) get the SuperNI-style prompt and produce the answer in the decoder;
causal models (LLaMA family) continue the prompt, so it ends with "Output: " and the caller
appends the answer plus EOS when training.
"""

from __future__ import annotations

PROMPT_TEMPLATES: dict[str, str] = {
    "seq2seq": "Definition: {definition}\n\nNow complete the following example -\nInput: {input}\nOutput:",
    "causal": "{definition}\n\nInput: {input}\nOutput: ",
}

# Used when a task has no definition (Long_Sequence/copa ships an empty one): no dangling header.
_NO_DEFINITION_TEMPLATES: dict[str, str] = {
    "seq2seq": "Now complete the following example -\nInput: {input}\nOutput:",
    "causal": "Input: {input}\nOutput: ",
}


def format_prompt(definition: str, input: str, family: str) -> str:
    """Return the prompt for one example; `family` is "seq2seq" or "causal"."""
    if family not in PROMPT_TEMPLATES:
        raise ValueError(f"unknown model family {family!r}; expected one of {sorted(PROMPT_TEMPLATES)}")
    if not definition.strip():
        return _NO_DEFINITION_TEMPLATES[family].format(input=input)
    return PROMPT_TEMPLATES[family].format(definition=definition, input=input)
