"""The CLI skeleton: help, version, exit codes and error formatting."""

from meddet.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for cmd in ("data", "pretrain-teacher", "distill", "eval", "bench"):
        assert cmd in out


def test_version(capsys):
    import meddet

    assert main(["--version"]) == 0
    assert meddet.__version__ in capsys.readouterr().out


def test_usage_error_exits_2(capsys):
    assert main(["no-such-command"]) == 2
    assert main(["data", "--no-such-flag"]) == 2


def test_unbuilt_command_is_one_line_exit_2(capsys):
    assert main(["demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "not built yet" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
