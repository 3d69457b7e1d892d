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


def test_user_error_is_one_line_exit_2(capsys, tmp_path):
    # A bad --size is the user's fault: one "Error:" line on stderr, no traceback, exit 2.
    assert main(["data", "synth", str(tmp_path / "d"), "--size", "100"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "32" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert not (tmp_path / "d").exists()


def test_debug_shows_the_traceback(capsys, tmp_path):
    assert main(["data", "synth", str(tmp_path / "d"), "--size", "100", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err
