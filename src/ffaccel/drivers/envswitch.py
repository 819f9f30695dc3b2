"""On/off switches the drivers read from the environment (``FFACCEL_CPU_TUNED``, ``FFACCEL_ONEDNN``).

A switch is ``0`` or ``1``; unset or empty is its default. Anything else (``false``, ``no``,
``off``, a typo) is refused naming the variable: read as "not 0" it would silently do the
opposite of what was meant.
"""

from __future__ import annotations

import os

from ..spec import ErrorCode, FFAccelError

#: The values a switch takes, and what each means.
SWITCH_VALUES = {"0": False, "1": True}


def env_switch(name: str, default: bool = True) -> bool:
    """The switch ``$name``: ``default`` when unset or empty, else 0 (off) or 1 (on)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if raw not in SWITCH_VALUES:
        raise FFAccelError(ErrorCode.INVALID_PARAMETER, name,
                           f"an on/off switch; got {name}={raw!r}, allowed 0 (off), 1 (on) or unset "
                           f"({'on' if default else 'off'})")
    return SWITCH_VALUES[raw]


__all__ = ["SWITCH_VALUES", "env_switch"]
