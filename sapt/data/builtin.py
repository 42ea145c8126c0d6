"""A tiny generated task sequence, so `sapt run` works with no downloaded data.

Four tasks with clearly different formats (topic labels, sentiment labels, word reversal,
arithmetic) make forgetting visible within minutes on a CPU with a ~135M model. Everything is
generated from word lists with a seeded RNG; train, validation and evaluation are disjoint by input,
so evaluation is a real held-out test ("test" split).
"""

from __future__ import annotations

import itertools
import random

from sapt.data.types import Example, Task

BUILTIN_TASKS = ["topic", "sentiment", "reverse_words", "addition"]

_TOPIC_THINGS = {
    "sports": ["the football match", "the tennis final", "the marathon", "the basketball game",
               "the swimming race", "the cycling tour", "the new goalkeeper", "the rugby team",
               "the boxing title fight", "the ski jump", "the golf tournament", "the hockey playoffs"],
    "science": ["the new telescope", "the chemistry experiment", "the physics lecture", "the DNA study",
                "the lab results", "the volcano research", "the Mars rover", "the vaccine trial",
                "the fossil discovery", "the particle collider", "the climate model", "the robot prototype"],
    "food": ["the pasta recipe", "the fresh bread", "the spicy curry", "the chocolate cake",
             "the vegetable soup", "the sushi platter", "the apple pie", "the grilled cheese",
             "the pancake breakfast", "the noodle stall", "the cheese board", "the fruit salad"],
    "music": ["the guitar solo", "the jazz concert", "the new album", "the piano lesson",
              "the school choir", "the violin recital", "the rock band", "the opera singer",
              "the drum practice", "the music festival", "the hit single", "the orchestra rehearsal"],
}
_TOPIC_TEMPLATES = [
    "Everyone was talking about {thing} today.",
    "My neighbor will not stop mentioning {thing}.",
    "The newspaper wrote a long story on {thing}.",
    "We spent the whole evening discussing {thing}.",
    "My sister sent me a photo of {thing}.",
    "The radio show opened with news about {thing}.",
    "I read a short blog post about {thing}.",
    "Our teacher asked us to write about {thing}.",
    "There was a video online about {thing}.",
    "Grandpa still remembers {thing}.",
]

_PRODUCTS = ["blender", "backpack", "phone case", "desk lamp", "kettle", "umbrella", "keyboard",
             "water bottle", "headset", "toaster", "jacket", "office chair"]
_GOOD = ["sturdy", "reliable", "comfortable", "beautiful", "quiet", "excellent", "handy", "well made"]
_BAD = ["flimsy", "noisy", "useless", "ugly", "uncomfortable", "broken", "awful", "cheaply made"]
_REVIEW_TEMPLATES = {
    "positive": ["Review: the {p} is {a} and {b}. I would buy it again.",
                 "Review: I found this {p} {a} and {b}. Very happy with it."],
    "negative": ["Review: the {p} is {a} and {b}. I want my money back.",
                 "Review: I found this {p} {a} and {b}. Very disappointed."],
}

_WORDS = ["apple", "river", "stone", "cloud", "table", "garden", "window", "tiger", "candle", "bread",
          "forest", "pencil", "mirror", "bottle", "rocket", "island", "horse", "summer", "ladder", "coffee",
          "bridge", "flower", "planet", "pillow", "basket", "winter", "castle", "violin", "lemon", "jacket"]

_SUM_TEMPLATES = ["What is {a} + {b}?", "What is {a} plus {b}?", "How much is {a} + {b}?"]


def _topic_pools() -> dict[str, list[tuple[str, str]]]:
    return {topic: [(t.format(thing=thing), topic) for t in _TOPIC_TEMPLATES for thing in things]
            for topic, things in _TOPIC_THINGS.items()}


def _sentiment_pools() -> dict[str, list[tuple[str, str]]]:
    pools = {}
    for label, adjectives in (("positive", _GOOD), ("negative", _BAD)):
        pools[label] = [(t.format(p=p, a=a, b=b), label) for t in _REVIEW_TEMPLATES[label]
                        for p in _PRODUCTS for a, b in itertools.permutations(adjectives, 2)]
    return pools


def _reverse_pools() -> dict[str, list[tuple[str, str]]]:
    triples = itertools.permutations(_WORDS, 3)
    return {"": [(" ".join(t), " ".join(reversed(t))) for t in triples]}


def _addition_pools() -> dict[str, list[tuple[str, str]]]:
    # Single-digit operands give only 100 sums, so three phrasings make room for the default 144.
    return {"": [(t.format(a=a, b=b), str(a + b)) for t in _SUM_TEMPLATES for a in range(10) for b in range(10)]}


_GENERATORS = {
    "topic": ("Classify the topic of the sentence as one of: sports, science, food, music.", _topic_pools),
    "sentiment": ("Decide whether the product review is positive or negative.", _sentiment_pools),
    "reverse_words": ("Write the given words in reverse order.", _reverse_pools),
    "addition": ("Answer the arithmetic question with a number.", _addition_pools),
}


def _make_task(name: str, seed: int, sizes: tuple[int, int, int]) -> Task:
    definition, make_pools = _GENERATORS[name]
    rng = random.Random(f"builtin:{seed}:{name}")
    pools = make_pools()
    keys = sorted(pools)
    for k in keys:
        rng.shuffle(pools[k])
    if sum(sizes) > sum(len(p) for p in pools.values()):
        raise ValueError(f"built-in task {name!r} can generate at most {sum(len(p) for p in pools.values())} "
                         f"distinct examples, {sum(sizes)} requested")
    splits = []
    for n in sizes:  # cycle over labels so every split is balanced; each pool item is used once
        split = []
        for j in range(n):
            label = keys[j % len(keys)]
            if not pools[label]:
                raise ValueError(f"built-in task {name!r} ran out of {label!r} examples")
            inp, out = pools[label].pop()
            split.append(Example(input=inp, outputs=(out,)))
        rng.shuffle(split)
        splits.append(split)
    train, val, eval_ = splits
    labels = keys if keys != [""] else None
    return Task(name=name, definition=definition, metric="em", train=train, val=val, eval=eval_,
                eval_split="test", labels=labels)


def builtin_suite(seed: int = 0, n_train: int = 96, n_val: int = 16, n_eval: int = 32) -> list[Task]:
    """Return the four built-in tasks, in BUILTIN_TASKS order, generated from `seed`."""
    if min(n_train, n_val, n_eval) < 0 or n_train < 1:
        raise ValueError("n_train must be at least 1 and n_val, n_eval at least 0")
    return [_make_task(name, seed, (n_train, n_val, n_eval)) for name in BUILTIN_TASKS]
