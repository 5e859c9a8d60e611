"""Errors a user can cause.  The CLI prints `str(err)` as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in input the user controls (file, flag, config); the message says the fix."""

    exit_code = 2


def did_you_mean(name: str, choices) -> str:
    """' Did you mean: a, b?' for close matches of name among choices, or ''."""
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=3, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type), for one-line errors."""
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:limit]
