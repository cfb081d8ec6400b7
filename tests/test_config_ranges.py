"""Every numeric option of every command has a checked range, and a table of bad values for all of
them (generated from the commands' configs) is refused by the CLI with one line naming the
option: exit 2, no traceback, nothing run."""

from __future__ import annotations

import importlib

import pytest

from simple_rlhf.cli.main import COMMANDS, main
from simple_rlhf.config import _unwrap_optional, flat_fields
from simple_rlhf.config_ranges import ANY, Range


def numeric_fields(command: str):
    module, config, _, _ = COMMANDS[command]
    cls = getattr(importlib.import_module(module), config)
    for f in flat_fields(cls):
        inner, _ = _unwrap_optional(f.type)
        if inner in (int, float):
            yield f, inner


def test_every_numeric_option_has_a_range_and_a_valid_default():
    missing, bad_defaults = [], []
    for command in COMMANDS:
        for f, _ in numeric_fields(command):
            if f.range is None:
                missing.append(f"{command} {f.owner}.{f.name}")
            elif f.default is not None and not f.range.contains(f.default):
                bad_defaults.append(f"{command} {f.name}={f.default} not {f.range.describe()}")
    assert not missing, f"no entry in config_ranges.RANGES: {missing}"
    assert not bad_defaults, bad_defaults


def bad_values(r: Range, inner: type) -> list[str]:
    """Values outside ``r`` (and non-numbers, non-finite numbers, fractions for integers)."""
    out = ["nan", "inf", "-inf", "abc"]
    if inner is int:
        out.append("1.5")
    step = 1 if inner is int else 0.5
    if r.lo is not None:
        out.append(str(r.lo if r.lo_open else r.lo - step))
    if r.hi is not None:
        out.append(str(r.hi if r.hi_open else r.hi + step))
    return out


def cases() -> list[tuple[str, str, str, str]]:
    """(command, option name, flag, value) for every bad value of every numeric option."""
    out = []
    for command in COMMANDS:
        for f, inner in numeric_fields(command):
            if f.range is None or f.range == ANY and inner is float:
                values = ["nan", "inf", "abc"]
            else:
                values = bad_values(f.range, inner)
            flag = "--" + f.name.replace("_", "-")
            out += [(command, f.name, flag, v) for v in values]
    return out


CASES = cases()


class Accepted(Exception):
    """Raised instead of running a command: the bad value got through."""


@pytest.fixture
def no_runs(monkeypatch):
    """Every command's run function replaced: a config that validates raises :class:`Accepted`."""

    def accept(cfg):
        raise Accepted

    for module, _, run, _ in COMMANDS.values():
        monkeypatch.setattr(importlib.import_module(module), run, accept)


def test_the_fuzz_table_is_large(capsys):
    commands = {c for c, *_ in CASES}
    with capsys.disabled():
        print(f"\nfuzz table: {len(CASES)} bad values over {len(commands)} commands")
    assert len(CASES) >= 200 and commands == set(COMMANDS)


def test_every_bad_value_is_refused_with_one_line_naming_the_option(no_runs, capsys):
    """All cases in one test (fast: nothing loads a model); the failures are listed together."""
    clear, accepted, unclear = 0, [], []
    for command, name, flag, value in CASES:
        capsys.readouterr()
        try:
            rc = main([command, f"{flag}={value}"])
        except Accepted:
            accepted.append(f"{command} {flag}={value}")
            continue
        except SystemExit as e:  # argparse itself (bad choice): exit 2 with usage, no traceback
            rc = e.code
        err = capsys.readouterr().err.strip()
        last = err.splitlines()[-1] if err else ""
        if rc == 2 and name in last and "Traceback" not in err and "error" in last:
            clear += 1
        else:
            unclear.append(f"{command} {flag}={value}: rc {rc}: {err[-200:]!r}")
    with capsys.disabled():
        print(f"\nfuzz: {len(CASES)} cases, {clear} clear errors, {len(accepted)} accepted, "
              f"{len(unclear)} unclear")  # fmt: skip
    assert not accepted, accepted
    assert not unclear, unclear
