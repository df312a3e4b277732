"""The command line is derived from the settings dataclasses: one flag per field with `option` metadata, the
dataclass's default and help, and the values given checked by the same `from_mapping` a YAML config goes through."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from relscope.analysis.patching.settings import HeadsSettings, KnockoutSettings, PatchSettings
from relscope.analysis.settings import (
    AblateSettings, AttentionSettings, CheckpointsSettings, CompareSettings, DynamicsSettings, FreezeSettings,
    ProbeSettings, StatsSettings, SweepRankSettings)
from relscope.cli import build_parser
from relscope.cli.flags import add_settings, cli_fields, settings_from
from relscope.config import option
from relscope.data.training import GroupsSettings
from relscope.errors import ConfigError
from relscope.evaluation.settings import EvaluateSettings, FuseSettings, RerankConfig


@dataclass(frozen=True)
class Example:
    source: str = field(metadata=option("a required positional", positional=True))
    runs: tuple[str, ...] = field(metadata=option("repeat me", flag="--run", repeat=True))
    extra: str | None = field(default=None, metadata=option("an optional positional", positional=True))
    top_k: int = field(default=20, metadata=option("how many"))
    ratio: float = field(default=0.5, metadata=option("a share"))
    names: tuple[str, ...] = field(default=("a", "b"), metadata=option("several"))
    mode: Literal["fast", "exact"] = field(default="fast", metadata=option("which"))
    cache: bool = field(default=True, metadata=option("reuse the cache"))
    verbose: bool = field(default=False, metadata=option("say more"))
    hidden: int = 3  # no option: not on the command line


def _parser(cls: type) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t", exit_on_error=False)
    add_settings(parser, cls)
    return parser


def test_flags_follow_the_field_types_and_defaults():
    parser = _parser(Example)
    given = parser.parse_args(["src", "--run", "a", "--run", "b"])
    assert settings_from(Example, given, "t") == Example("src", ("a", "b"))  # everything else: the defaults
    given = parser.parse_args(["src", "more", "--run", "a", "--top-k", "5", "--ratio", "0.25", "--names", "x", "y",
                               "--mode", "exact", "--no-cache", "--verbose"])
    assert settings_from(Example, given, "t") == Example("src", ("a",), "more", 5, 0.25, ("x", "y"), "exact", False,
                                                         True)
    text = parser.format_help()
    assert "how many (default: 20)" in text and "several (default: a b)" in text and "--hidden" not in text
    assert "--run RUN" in text and "{fast,exact}" in text and "--no-cache" in text


def test_a_missing_required_flag_and_a_bad_value_are_refused(capsys):
    parser = _parser(Example)
    with pytest.raises(SystemExit):
        parser.parse_args(["src"])  # --run is required
    assert "--run" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentError):
        parser.parse_args(["src", "--run", "a", "--mode", "slow"])
    given = parser.parse_args(["src", "--run", "a", "--ratio", "nan"])
    with pytest.raises(ConfigError, match="--ratio"):  # the typed check names the flag, not the field
        settings_from(Example, given, "t")


def test_a_yaml_base_is_overridden_by_the_flags_given():
    given = _parser(Example).parse_args(["src", "--run", "a", "--top-k", "7"])
    settings = settings_from(Example, given, "t", base={"top_k": 3, "ratio": 0.75})
    assert (settings.top_k, settings.ratio) == (7, 0.75)


# every command's settings, and the arguments it cannot run without
COMMANDS = {
    ("rerank",): (RerankConfig, ["--out", "o"]),
    ("evaluate",): (EvaluateSettings, ["--qrels", "q", "--run", "r"]),
    ("fuse",): (FuseSettings, ["--run", "a", "--run", "b", "--weights", "1", "1", "--out", "o"]),
    ("groups",): (GroupsSettings, ["--data", "d", "--out", "o"]),
    ("lora", "checkpoints"): (CheckpointsSettings, ["run", "--out", "o"]),
    ("lora", "sweep-rank"): (SweepRankSettings, ["--config", "c.yaml", "--out", "o"]),
    ("lora", "ablate"): (AblateSettings, ["adapter", "--out", "o"]),
    ("lora", "stats"): (StatsSettings, ["adapter", "--out", "o"]),
    ("dynamics",): (DynamicsSettings, ["run", "--out", "o"]),
    ("freeze",): (FreezeSettings, ["--config", "c.yaml", "--out", "o"]),
    ("patch",): (PatchSettings, ["model", "--out", "o"]),
    ("heads",): (HeadsSettings, ["model", "--out", "o"]),
    ("knockout",): (KnockoutSettings, ["model", "--ie-heads", "h.npz", "--out", "o"]),
    ("compare",): (CompareSettings, ["a", "b", "--out", "o"]),
    ("probe",): (ProbeSettings, ["model", "--out", "o"]),
    ("attention",): (AttentionSettings, ["model", "--out", "o"]),
}


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_each_command_offers_every_option_of_its_settings_with_their_defaults(command, monkeypatch):
    monkeypatch.setenv("COLUMNS", "10000")  # help lines unwrapped (argparse breaks words at hyphens)
    cls, required = COMMANDS[command]
    args = build_parser().parse_args([*command, *required])
    given = {name for name in vars(args) if name in cli_fields(cls)}
    defaults = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    left_out = [name for name in cli_fields(cls) if name not in given]
    assert left_out and all(name in defaults for name in left_out)  # flags not given take the dataclass default
    help_text = " ".join(_subparser(command).format_help().split())
    for name in cli_fields(cls):
        spec = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["cli"]
        assert " ".join(spec.help.split()) in help_text, f"{command}: {name}'s help is not in --help"


def _subparser(command: tuple[str, ...]) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command:
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = action.choices[word]
    return parser


def test_a_bad_yaml_value_is_named_by_its_file_and_key_not_by_a_flag_left_out():
    given = _parser(Example).parse_args(["src", "--run", "a"])
    with pytest.raises(ConfigError, match=r"conf\.yaml\.top_k: expected an integer") as error:
        settings_from(Example, given, "conf.yaml", base={"top_k": "abc"})
    assert "--top-k" not in str(error.value)


@pytest.mark.parametrize("command", ["patch", "heads", "knockout"])
def test_the_model_studied_must_be_named(command, capsys):
    """The settings have a default model for the API; the command line never falls back to it silently."""
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, *(["--ie-heads", "h.npz"] if command == "knockout" else []), "--out", "o"])
    assert "model" in capsys.readouterr().err


def test_a_value_that_means_unset_on_the_command_line_is_none_in_the_settings():
    args = build_parser().parse_args(["patch", "m", "--max-pairs", "0", "--out", "o"])
    assert settings_from(PatchSettings, args, "relscope patch").max_pairs is None
    with pytest.raises(ConfigError, match="--max-pairs"):
        PatchSettings(max_pairs=0)  # the API says None for every pair
