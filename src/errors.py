"""The one error type for expected failures (``UserError``), a run a signal stopped
(``Stopped``), and the check every output folder gets. src/cli.py reports them."""
import os
import tempfile


class UserError(Exception):
    """An expected failure caused by the user's input.

    Entry points print it as ``error: <what> (<where>): <what to do>`` and exit with code 2.
    """

    def __init__(self, what: str, where: str = "", todo: str = ""):
        self.what, self.where, self.todo = what, where, todo
        super().__init__(self.line())

    def line(self) -> str:
        text = f"error: {self.what}"
        if self.where:
            text += f" ({self.where})"
        if self.todo:
            text += f": {self.todo}"
        return text


class Stopped(Exception):
    """A run that a signal ended after saving what it needs to continue: its one line, and the
    shell's exit code for that signal (128 + the signal's number: 143 for SIGTERM, 130 for
    SIGINT); an empty line: the run has said it already. ``hard_exit``: leave without the
    interpreter's exit handlers (a distributed worker whose launcher and scheduler are gone
    would wait for them forever)."""

    def __init__(self, signum: int, line: str, hard_exit: bool = False):
        self.code, self.text, self.hard_exit = 128 + signum, line, hard_exit
        super().__init__(line)


def writable_folder(path: str, key: str) -> str:
    """Create ``path`` if needed and check that files can be written in it; UserError if not."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path):
            pass
    except OSError as err:
        raise UserError(f"output folder is not writable ({err.strerror})", path,
                        f"give {key} a folder you can write to") from err
    return path
