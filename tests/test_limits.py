"""Every limit of ``ffaccel serve`` is range-checked at start-up: one line, exit 2, nothing served.

The ranges are data (each field of :class:`SessionLimits` and :class:`ServerLimits` carries its
``low`` and ``high``); these tests take the bad values from that table, so a new limit is covered
the day it is added. Values the server once started with and then reset every client over
(``message_stall_s=inf``: OverflowError in SO_SNDTIMEO; ``max_memo_entries=0``: ValueError in a
cache) are named explicitly too.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from ffaccel.cli.errors import Exit
from ffaccel.cli.main import main
from ffaccel.spec import ErrorCode, FFAccelError
from ffaccel.transports.limits import ServerLimits, SessionLimits, limits_from_overrides

FIELDS = [f for cls in (SessionLimits, ServerLimits) for f in dataclasses.fields(cls)]


def _is_float(f: dataclasses.Field) -> bool:
    return "float" in str(f.type)


def _bad_values(f: dataclasses.Field) -> list[str]:
    low, high = f.metadata["low"], f.metadata["high"]
    if _is_float(f):
        return ["inf", "-inf", "nan", "1e300", repr(low / 2), repr(high * 2), "-1", "ten"]
    return [str(low - 1), str(high + 1), "-1", "1.5", "ten", str(2**64)] + ([] if f.default is None else ["none"])


BAD = sorted({(f.name, v) for f in FIELDS for v in _bad_values(f)})


@pytest.mark.parametrize("name,value", BAD)
def test_each_limit_refuses_values_out_of_its_range(name: str, value: str) -> None:
    with pytest.raises(FFAccelError) as e:
        limits_from_overrides([f"{name}={value}"])
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, name)
    assert "\n" not in str(e.value) and name in e.value.message


@pytest.mark.parametrize("f", FIELDS, ids=lambda f: f.name)
def test_each_limit_accepts_its_bounds_and_default(f: dataclasses.Field) -> None:
    low, high = f.metadata["low"], f.metadata["high"]
    cls = SessionLimits if f in dataclasses.fields(SessionLimits) else ServerLimits
    for value in (low, high, *(["none"] if f.default is None else [])):
        text = value if isinstance(value, str) else (repr(float(value)) if _is_float(f) else str(int(value)))
        tables = limits_from_overrides([f"{f.name}={text}"])
        got = getattr(tables[0] if cls is SessionLimits else tables[1], f.name)
        assert got is None if text == "none" else math.isclose(got, value)
    cls()  # the defaults are in range


def test_constructing_a_table_in_code_is_checked_the_same_way() -> None:
    with pytest.raises(FFAccelError) as e:
        SessionLimits(max_memo_entries=0)
    assert (e.value.code, e.value.param) == (ErrorCode.INVALID_PARAMETER, "max_memo_entries")
    with pytest.raises(FFAccelError) as e:
        ServerLimits(message_stall_s=float("inf"))
    assert e.value.param == "message_stall_s"


def _serve_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    """The one line ``serve`` refuses ``args`` with, before anything slow: the cpu driver's kernel
    table (about 6 s CPU at a first start) is not measured for a command line that is refused."""
    import ffaccel.drivers.cpu_tune as cpu_tune

    sock = tmp_path / "s.sock"
    tuned = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cpu_tune, "tune_at_start", lambda *a, **k: tuned.append(a))
        assert main(["serve", "--socket", str(sock), *args]) == Exit.USAGE
    assert tuned == []
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert not sock.exists()  # nothing was served
    return lines[0]


@pytest.mark.parametrize("item", ["message_stall_s=inf", "message_stall_s=nan", "message_stall_s=1e300",
                                  "max_memo_entries=0", "max_clients=0", "slice_target_ms=-1"])
def test_serve_refuses_a_bad_limit_in_one_line_before_serving(capsys, tmp_path: Path, item: str) -> None:
    line = _serve_refused(capsys, tmp_path, "--limit", item)
    assert item.split("=")[0] in line and "takes" in line


def test_serve_checks_max_client_memory_and_ring_poll_us_too(capsys, tmp_path: Path) -> None:
    assert "--max-client-memory -5" in _serve_refused(capsys, tmp_path, "--max-client-memory", "-5")
    both = _serve_refused(capsys, tmp_path, "--max-client-memory", "5", "--limit", "max_memory_bytes=6")
    assert "--max-client-memory" in both and "max_memory_bytes" in both  # contradictory: neither wins silently
    assert "--ring-poll-us" in _serve_refused(capsys, tmp_path, "--ring-poll-us", "-1")
