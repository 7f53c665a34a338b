"""Library errors name parameters; this renders them in CLI terms, given the parameter -> flag table.

Library errors name the parameter (``CSRAError("img_size 5: ...", param="img_size")``); the CLI
prints ``--img-size 5: ...`` instead (:func:`render`). The table is read off the Typer app
(:func:`command_flags`: every option's Python name is the library's parameter name, see
:mod:`csra_posthoc.cli.params`), plus :data:`LIBRARY_FLAGS` for the few library parameters that
are not a CLI option under their own name. Torch-free, and free of the app (no import cycle):
the app passes its table in.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

# Library parameters that are no CLI parameter of that name (each says why); every other flag is read off the app.
LIBRARY_FLAGS: dict[str, str] = {
    "use_cache": "--no-cache",  # ExtractOptions.use_cache is the negation of the CLI's --no-cache
    "c": "--probe-c",  # extraction.probe.fit_probe(c=...): scikit-learn's name for ProbeOptions.probe_c
    "n": "--bootstrap",  # evaluation.bootstrap.check_resamples(n): SweepOptions.bootstrap's resamples
}


def command_flags(command: Any) -> dict[str, str]:
    """Python parameter name -> flag (``--img-size``; an argument: its metavar, ``IMAGE``) of every
    parameter of a click command or group (``typer.main.get_command(app)``), its subcommands'
    included. A name used by two commands must name the same flag (:func:`check` in the tests)."""
    found: dict[str, str] = {}
    for name, flag in command_params(command):
        found.setdefault(name, flag)
    return found


def command_params(command: Any) -> list[tuple[str, str]]:
    """(Python name, flag) of every parameter of ``command`` and its subcommands, in order, repeats included."""
    out: list[tuple[str, str]] = []
    for param in getattr(command, "params", []):
        if param.name is None or param.name == "help":
            continue
        if getattr(param, "param_type_name", "") == "argument":  # typer vendors click: no isinstance check
            out.append((param.name, str(param.metavar or param.name).upper()))
        else:
            long = [o for o in param.opts if o.startswith("--")]
            out.append((param.name, (long or param.opts)[0]))
    for sub in getattr(command, "commands", {}).values():
        out += command_params(sub)
    return out


_QUOTED = re.compile(r"`([a-z_]+)`")  # a parameter named mid-message: `skip_missing`
_ASSIGNMENT = re.compile(r"(?<![\w-])([a-z_]+)=('[^']*'|\"[^\"]*\"|[^\s,;:)]+)")


@functools.lru_cache(maxsize=4)
def _bare_names(names: tuple[str, ...]) -> re.Pattern[str]:
    """Names with an underscore are no English words: every bare one outside a path or identifier is a parameter."""
    return re.compile(
        r"(?<![\w\-/.\\'\"])("
        + "|".join(sorted((re.escape(k) for k in names if "_" in k), key=len, reverse=True))
        + r")(?![\w\-/'\"])"
    )


def render(message: str, param: str | None, flags: Mapping[str, str]) -> str:
    """``message`` in CLI terms: its first mention of ``param`` becomes the flag, every
    ``name=value`` of a known parameter becomes ``--flag value`` (``--flag`` for ``=True``), and
    every known parameter in backquotes (`` `split` ``) becomes its flag."""
    bare = _bare_names(tuple(sorted(flags)))
    if param is not None and param in flags and flags[param] not in message:  # a message may already name the flag
        message = re.sub(rf"(?<![\w-]){re.escape(param)}(?![\w=])", flags[param], message, count=1)

    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2).strip("'\"")
        if name not in flags:
            return match.group(0)
        return flags[name] if value == "True" else f"{flags[name]} {value}"

    message = _ASSIGNMENT.sub(flag, message)
    message = _QUOTED.sub(lambda m: flags.get(m.group(1), m.group(0)), message)
    # a Python parameter named bare (`from_results FILE: ...`, "under data_dir") never reaches the CLI
    return bare.sub(lambda m: flags[m.group(1)], message)
