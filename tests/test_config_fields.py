"""The config fields are the one source of the `sapt run` parser, its help and the resume policy."""
import dataclasses

import pytest
import yaml

from sapt import config
from sapt.cli import build_parser, run_options
from sapt.config import FIELDS, SECTIONS, RunConfig, default_value, flag_of, resolve, to_dict


def test_every_field_has_a_section_a_help_and_a_resume_policy():
    for name, f in FIELDS.items():
        assert f.metadata["section"] in SECTIONS and f.metadata["help"], name
        assert f.metadata["resume"] in config.RESUME_POLICIES, name
    assert [f.name for s in SECTIONS for f in config.section_fields(s)] == list(FIELDS)  # grouped in the source


def test_the_resume_policy_gives_the_resumable_and_changeable_keys():
    assert config.RESUMABLE_KEYS == {"output", "eval_batch_size", "notes", "data_dir", "reference", "log_with",
                                     "tracker_project", "eval_every"}
    assert config.CHANGEABLE_KEYS == ("lr", "router_lr")


def test_config_yaml_keeps_its_key_order():
    assert list(to_dict(RunConfig())) == list(config.SAVED_ORDER)
    assert sorted(config.SAVED_ORDER) == sorted(FIELDS)


def test_every_flag_sets_its_key_and_the_help_shows_the_fields_default():
    parser = build_parser()
    flagged = [k for k in FIELDS if flag_of(k)]
    assert set(FIELDS) - set(flagged) == {"extra_tasks", "notes"}
    for name in flagged:
        flag, f = flag_of(name), FIELDS[name]
        if f.type == "bool":
            argv = [flag]
            want = not f.default
        else:
            sample = {str: "x", int: 2, float: 0.5, list: ["a", "b"]}[config.base_type(name)]
            want = default_value(name) if default_value(name) not in (None, []) else sample
            if name in ("router_key_init", "mixed_precision", "backbone_dtype", "reflection_source"):
                want = f.metadata["choices"][-1]
            text = ",".join(want) if isinstance(want, list) else str(want)
            argv = [flag, text]
        assert getattr(parser.parse_args(["run", *argv]), name) == want, name
    helps = {flag: kw["help"] for options in run_options().values() for flag, kw in options}
    assert helps["--lr"].endswith("(default 3e-4; 2e-3 on the built-in suite)")
    assert helps["--router-lr"].endswith("(default: --lr)")
    assert helps["--pseudo-top-k"].endswith(f"(default {RunConfig.pseudo_top_k})")


def test_run_help_groups_the_options_by_section(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--help"])
    out = capsys.readouterr().out
    positions = [out.index(f"\n{title}:\n") for title in SECTIONS.values()]
    assert positions == sorted(positions)
    body = out[out.index("\noptions:\n"):]  # after the usage lines
    assert body.index("  --pseudo-steps") > body.index("\nattentive reflection:\n") > body.index("  --lr ")


def test_a_resolved_config_round_trips_through_config_yaml(tmp_path):
    cfg = resolve({"tasks": ["topic"], "lr": 1e-3, "notes": {"a": 1}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    assert dataclasses.asdict(resolve({}, str(path))) == dataclasses.asdict(cfg)
