"""Calling the CLI in-process from a test: exit status, the error lines, stderr."""
from phantom import cli


def run_cli(argv: list[str], capsys) -> tuple[int, list[str], str]:
    """Exit status, the ``phantom: error:`` lines and the whole stderr of an in-process CLI call.

    A traceback on stderr fails the calling test: every failure must be one line.
    """
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("phantom: error:")], err
