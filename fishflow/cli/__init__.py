"""`fishflow` on the command line: run the catalog flow, or serve the emulator.

Built with cyclopts from the commands' signatures and docstrings (`fishflow.cli.commands`)
and, for a run's options, from `RunSettings` (`fishflow.cli.flags`). Prefect is imported only
by the commands that need it (about 1.6 s), so `fishflow emulator` starts at once.

Exit status: 0 nothing failed, 2 some items failed (manifests written), 1 a run-level error
(one line on stderr, no traceback), 64 a usage error, 130 stopped.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Sequence

from cyclopts import App, Parameter
from cyclopts.exceptions import CycloptsError

from fishflow.cli import commands
from fishflow.cli.flags import EX_USAGE, UsageError, usage_message
from fishflow.errors import FishflowError
from fishflow.memory import use_one_arena
from fishflow.untrusted import printable

__all__ = ["app", "main"]

# reStructuredText (as all help here): a line block keeps the lines as they are written.
EXIT_STATUS = """\
Exit status:

| 0   nothing failed
| 1   a run-level error (unreadable source, no server answering, bad API key,
|     no credit, missing bucket, disk full): one line on stderr says what to fix
| 2   some items failed; the manifests say which and why (also: items
|     published marked, with --qa-on-marked fail)
| 64  usage error (unknown option, missing argument, bad value)
| 130 stopped (Ctrl-C or SIGTERM); finished items are recorded:
|     fishflow resume RUN_ID --out OUT
"""


def _version() -> str:
    try:
        return f"fishflow {importlib.metadata.version('fishflow')}"
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "fishflow unknown"


app = App(
    name="fishflow",
    help="Batch text-to-speech on Prefect and Fish Speech servers.",
    help_epilogue=EXIT_STATUS,
    help_format="rst",
    # An option given twice: the last one counts, as with argparse (a wrapper script's default
    # overridden by its caller's).
    default_parameter=Parameter(allow_repeating=True),
    version=_version,
    version_format="plaintext",
)
# In this order in --help: a run's life, then the Prefect set-up, then the tools.
COMMANDS: dict[str, Callable[..., int]] = {
    "run": commands.run,
    "resume": commands.resume,
    "retry-errors": commands.retry_errors,
    "plan": commands.plan,
    "preview": commands.preview,
    "gc": commands.gc,
    "deploy": commands.deploy,
    "limits": commands.limits,
    "voices": commands.voices,
    "emulator": commands.emulator,
}
# The commands that run a flow say what their exit status means (the others: 0, 1 or 64).
RUNS = {"run", "resume", "retry-errors"}
for order, (name, command) in enumerate(COMMANDS.items()):
    epilogue = EXIT_STATUS if name in RUNS else ""
    app.command(command, name=name, sort_key=order, help_epilogue=epilogue)


def main(argv: list[str] | None = None) -> int:
    """Run the command `argv` (default: the process's arguments) names; its exit status."""
    use_one_arena()  # before any thread allocates (see fishflow.memory)
    tokens = sys.argv[1:] if argv is None else list(argv)
    try:
        command, bound, _ = app.parse_args(tokens, exit_on_error=False, print_error=False)
    except CycloptsError as exc:
        return _usage_error(exc.command_chain or (), usage_message(exc))
    if not tokens:
        return _usage_error((), "a command is required")
    try:
        return command(*bound.args, **bound.kwargs) or 0  # --help and --version return None
    except UsageError as exc:
        return _usage_error(app.parse_commands(tokens)[0], str(exc))
    except FishflowError as exc:
        print(f"fishflow: error: {printable(exc.message)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fishflow: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        try:  # only stdout's reader going away (`fishflow plan ... | head`) ends quietly
            sys.stdout.flush()
        except BrokenPipeError:
            # stdout goes to /dev/null so that Python's flush at exit does not fail again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        raise
    finally:
        logging.shutdown()


def _usage_error(command: Sequence[str], message: str) -> int:
    prog = " ".join(("fishflow", *command))
    print(f"{prog}: error: {message} (see: {prog} --help)", file=sys.stderr)
    return EX_USAGE
