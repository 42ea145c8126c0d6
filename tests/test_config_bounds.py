"""Each numeric field declares its range (`option(..., bounds=...)`), and `RunConfig.validate` checks every
declared range in one loop with one message: the edges of every declared range, both sides."""
import math

import pytest

from sapt.config import FIELDS, Bounds, ConfigError, RunConfig, base_type

BOUNDED = sorted(name for name, f in FIELDS.items() if f.metadata["bounds"] is not None)


def outside_and_inside(name: str) -> tuple[list, object]:
    """Values just outside the field's bounds, and one inside (the low edge where it is closed)."""
    b: Bounds = FIELDS[name].metadata["bounds"]
    step = 1 if base_type(name) is int else 0.5
    outside = [b.low if b.low_open else b.low - step]
    if b.high is not None:
        outside.append(b.high if b.high_open else b.high + step)
    inside = b.low + 1 if b.low_open and (b.high is None or b.low + 1 <= b.high) else b.low
    return outside, inside


def test_the_counts_rates_and_shares_declare_their_ranges():
    # the fields the loop covers (a new numeric field should declare its range too)
    assert {"lora_r", "lr", "router_lr", "seed", "pseudo_ratio", "warmup_ratio", "max_grad_norm",
            "route_without_definition", "max_eval_per_task", "kl_ratio"} <= set(BOUNDED)
    unbounded = sorted(n for n, f in FIELDS.items() if base_type(n) in (int, float) and f.metadata["bounds"] is None)
    # order: which numbers exist depends on the benchmark; val_size: a fraction or a whole count (own rules)
    assert unbounded == ["order", "val_size"], unbounded


@pytest.mark.parametrize("name", BOUNDED)
def test_each_declared_range_refuses_just_outside_and_takes_its_edge(name):
    outside, inside = outside_and_inside(name)
    bounds = FIELDS[name].metadata["bounds"]
    for value in outside:
        with pytest.raises(ConfigError) as e:
            RunConfig(**{name: value}).validate()
        assert str(e.value) == f"{name} must be {bounds}, got {value}"
    RunConfig(**{name: inside}).validate()


def test_none_is_the_default_of_the_fields_that_take_it():
    for name in ("router_lr", "kl_ratio", "pseudo_steps", "max_eval_per_task"):
        assert FIELDS[name].default is None
        RunConfig(**{name: None}).validate()


@pytest.mark.parametrize("bounds, text", [
    (Bounds(1), ">= 1"), (Bounds(0, low_open=True), "> 0"), (Bounds(0, 1, high_open=True), "in [0, 1)"),
    (Bounds(0, 10, low_open=True), "in (0, 10]"), (Bounds(0, note="0 = off"), ">= 0 (0 = off)"),
    (Bounds(0, 2**32, high_open=True, text="in [0, 2**32)"), "in [0, 2**32)"),
])
def test_a_range_is_written_as_the_messages_have_always_written_it(bounds, text):
    assert str(bounds) == text


def test_nan_is_outside_every_range():
    assert not Bounds(0).holds(math.nan) and not Bounds(0, 1).holds(math.nan)
