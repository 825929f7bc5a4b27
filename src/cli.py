"""How every entry point and ``python -m`` tool takes its command line and reports its end:
``ArgumentParser`` (argparse whose errors are our one line) and ``run_main`` (a UserError is one
line and exit code 2, a stopped run its line and its signal's code)."""
import argparse
import os
import sys

from src.errors import Stopped, UserError


def run_main(main, argv=None) -> int:
    """Run an entry point's ``main(argv)``; turn a UserError into one line and exit code 2, a
    Stopped run into its line and its signal's exit code.

    ``--debug`` anywhere in argv re-raises instead, so the traceback is shown.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    if debug:
        argv = [a for a in argv if a != "--debug"]
    try:
        main(argv)
    except UserError as err:
        if debug:
            raise
        print(err.line(), file=sys.stderr, flush=True)
        return 2
    except Stopped as stop:
        if stop.text:
            print(stop.text, file=sys.stderr, flush=True)
        if stop.hard_exit:  # MindSpore's exit handlers wait for a cluster that is gone
            sys.stdout.flush()
            os._exit(stop.code)
        return stop.code
    return 0


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are UserErrors, so a bad flag gets our one line and exit code 2."""

    def error(self, message):
        if message.endswith("expected one argument"):  # "--key -inf": argparse reads a flag
            raise UserError(message, "command line",
                            "give it a value (one that starts with '-' as --key=VALUE)")
        raise UserError(message, "command line", f"see {self.prog} --help")
