"""core/checks.py: ParamsError's message, the typed checks of a params Section, read_section.

(check and check_choice on the Hydra path are held to their wording by test_model.py and
the spec tests.)
"""

from __future__ import annotations

import re

import pytest

from backprop_bench.core.checks import ParamsError, Section, check, is_integer, is_number, read_section


def raises(message: str):
    """pytest.raises(ParamsError) whose whole message is `message`."""
    return pytest.raises(ParamsError, match="^" + re.escape(message) + "$")


def test_the_message_names_the_file_the_key_the_value_and_the_rule():
    err = ParamsError("study.seeds", 0, "must be an integer >= 1", "params.yaml")
    assert str(err) == "params.yaml: study.seeds=0: must be an integer >= 1"
    assert (err.file, err.key, err.value, err.rule) == ("params.yaml", "study.seeds", 0, "must be an integer >= 1")
    assert isinstance(err, ValueError)  # every `except ValueError` keeps catching it
    assert str(ParamsError("train.epochs", -1, "must be >= 1")) == "train.epochs=-1: must be >= 1"  # no file known
    assert str(ParamsError(None, None, "params file not found", "p.yaml")) == "p.yaml: params file not found"


def test_check_raises_only_when_the_rule_is_broken():
    check(True, "train.epochs", 3, "must be >= 1")
    with raises("train.epochs=-1: must be >= 1"):
        check(False, "train.epochs", -1, "must be >= 1")
    with raises("p.yaml: data.seed='0': must be an integer >= 0"):
        check(False, "data.seed", "0", "must be an integer >= 0", "p.yaml")


@pytest.mark.parametrize(
    "value, integer, number",
    [(3, True, True), (0, False, True), (2.0, False, True), (True, False, False), ("3", False, False)]
    + [(float("nan"), False, False), (float("inf"), False, False), (None, False, False)],
)
def test_integers_and_numbers(value, integer, number):
    assert is_integer(value, 1) is integer  # a bool is no integer, although True == 1
    assert is_number(value) is number  # finite, not a bool


SECTION = Section(
    {"seeds": 3, "lr": 0.5, "name": "sgd", "modes": ["controlled"], "url": {"attempts": 2}}, "s", "p.yaml"
)


def test_a_sections_typed_checks_return_the_value():
    assert SECTION.integer("seeds", 1) == 3
    assert SECTION.number("lr", 0, strict=True) == 0.5
    assert SECTION.number("seeds", 0) == 3.0 and isinstance(SECTION.number("seeds", 0), float)
    assert SECTION.choice("name", ("sgd", "adam")) == "sgd"
    assert SECTION.choices("modes", ("controlled", "native")) == ("controlled",)
    assert SECTION.choices("extras", ("a",), default=[]) == ()  # an empty default: the list may be empty
    assert SECTION.sub("url").integer("attempts", 1) == 2
    # absent keys take their default, or are missing
    assert SECTION.integer("threads", 0, 1) == 1 and SECTION.get("dir", None) is None
    assert SECTION.sub("file").get("format", "csv") == "csv"  # an absent sub-section is empty


@pytest.mark.parametrize(
    "check_it, message",
    [
        (lambda s: s.integer("seeds", 4), "p.yaml: s.seeds=3: must be an integer >= 4"),
        (lambda s: s.integer("lr", 0), "p.yaml: s.lr=0.5: must be an integer >= 0"),
        (lambda s: s.integer("lr", 0, rule="must be >= 0 (0: all)"), "p.yaml: s.lr=0.5: must be >= 0 (0: all)"),
        (lambda s: s.number("name", 0), "p.yaml: s.name='sgd': must be a number >= 0"),
        (lambda s: s.number("lr", 0.5, strict=True), "p.yaml: s.lr=0.5: must be a number > 0.5"),
        (lambda s: s.choice("name", ("adam",)), "p.yaml: s.name='sgd': must be one of adam"),
        (lambda s: s.choices("modes", ("native",)), "p.yaml: s.modes[0]='controlled': must be one of native"),
        (lambda s: s.choices("name", ("sgd",)), "p.yaml: s.name='sgd': must be a non-empty list of sgd"),
        (lambda s: s.get("epochs"), "p.yaml: s.epochs=None: is missing"),
        (lambda s: s.sub("url").integer("attempts", 3), "p.yaml: s.url.attempts=2: must be an integer >= 3"),
        (lambda s: s.sub("name"), "p.yaml: s.name='sgd': must be a mapping"),
        (lambda s: s.check(False, "lr", 0.5, "must be below s.max"), "p.yaml: s.lr=0.5: must be below s.max"),
    ],
)
def test_a_broken_rule_names_the_file_the_dotted_key_the_value_and_the_rule(check_it, message):
    with raises(message):
        check_it(SECTION)


def test_read_section(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("study:\n  seeds: 2\ntrain: [1, 2]\n")
    assert read_section(path, "study") == Section({"seeds": 2}, "study", path)
    with raises(f"{path}: train=[1, 2]: must be a top-level 'train:' section (a mapping)"):
        read_section(path, "train")
    with raises(f"{path}: data=None: must be a top-level 'data:' section (a mapping)"):
        read_section(path, "data")
    with raises(f"{tmp_path / 'none.yaml'}: params file not found"):
        read_section(tmp_path / "none.yaml", "study")
    path.write_text("")  # an empty file has no sections
    with raises(f"{path}: study=None: must be a top-level 'study:' section (a mapping)"):
        read_section(path, "study")
