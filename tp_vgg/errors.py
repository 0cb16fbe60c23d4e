"""Errors that are the user's to fix.

A :class:`UserError` carries one line that names the bad value and what is accepted. The CLI
prints it and exits with code 2; library callers catch it like any exception.
:func:`parse_list` reads a comma-separated list of values, naming the first bad one;
:func:`naming_fields` makes a config's checks name its field beside the flag;
:func:`first_line` is an exception's message cut to one line.
"""

import contextlib
import re
from typing import Any, Callable, Iterator, List


class UserError(Exception):
    """A mistake in the user's input (a name, a value, a file). ``str(err)`` is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (at most ``limit`` characters), or its type's name."""
    text = str(e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__


def parse_list(text: str, convert: Callable[[str], Any], ok: Callable[[Any], bool], what: str,
               item: str, accepted: str) -> List[Any]:
    """``'a,b,c'`` -> the values ``convert``-ed, in order, once each; a part that does not
    convert or is not ``ok`` is a UserError: ``{what} {text!r}: {part!r} is not {item};
    accepted: {accepted}``."""
    out: List[Any] = []
    for part in str(text).split(","):
        part = part.strip()
        try:
            value = convert(part)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise UserError(f"{what} {text!r}: {part!r} is not {item}; accepted: {accepted}")
        out.append(value)
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def naming_fields(config: str) -> Iterator[None]:
    """A UserError raised inside whose message starts with a flag (``--warmup-epochs ...``) is
    raised again naming the config field as well (``... (TrainConfig.warmup_epochs)``), so that
    a library caller can read it too."""
    try:
        yield
    except UserError as e:
        m = re.match(r"--([a-z][a-z0-9-]*)", str(e))
        if not m:
            raise
        raise UserError(f"{e} ({config}.{m.group(1).replace('-', '_')})") from e
