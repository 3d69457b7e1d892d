"""The ``meddet`` command line (Typer + rich).

Commands are thin: they parse options, call the library and print. Errors caused by user input
are :class:`~meddet.errors.MedDetError`; :func:`main` prints them as one line on stderr and
returns exit code 2. ``--debug`` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import sys
import traceback

import typer

try:  # typer >= 0.25 vendors click; older releases use the click package itself
    from typer._click.exceptions import ClickException as _ClickException
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import ClickException as _ClickException
try:
    from typer import Abort as _Abort
    from typer import Exit as _Exit
except ImportError:  # pragma: no cover
    from click.exceptions import Abort as _Abort
    from click.exceptions import Exit as _Exit

from meddet import __version__
from meddet.errors import MedDetError

app = typer.Typer(
    name="meddet",
    help="MedDet: detect cervical disc herniation on sagittal T2 MRI with a small detector "
    "distilled from three large ones.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"meddet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show Python tracebacks on errors "
                               "(also accepted after any command)."),
) -> None:
    """MedDet command line."""


def _register() -> None:
    # Imported here so that `meddet --help` stays fast and each command owns its module.
    from meddet.cli import bench, data, distill, evaluate, train
    from meddet.cli import demo as demo_cmd
    from meddet.cli import export as export_cmd
    from meddet.cli import predict as predict_cmd
    from meddet.cli import study as study_cmd

    app.add_typer(data.app, name="data")
    app.command("pretrain-teacher")(train.pretrain_teacher)
    app.command("distill")(distill.distill)
    app.command("eval")(evaluate.evaluate)
    app.command("bench")(bench.bench)
    app.command("predict")(predict_cmd.predict)
    app.command("export")(export_cmd.export)
    app.command("demo")(demo_cmd.demo)
    app.add_typer(study_cmd.app, name="study")
    from meddet.cli.realcheck import check_real
    app.command("check-real")(check_real)
    from meddet.cli.report import report as report_cmd
    app.command("report")(report_cmd)


_register()


def main(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``) and return the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    from meddet.cli.train import normalize_resume_argv

    args = normalize_resume_argv(args)
    try:
        rv = app(args=args, prog_name="meddet", standalone_mode=False)
        return rv if isinstance(rv, int) else 0
    except MedDetError as exc:
        if debug:
            traceback.print_exc()
        sys.stderr.write(f"Error: {exc}\n")
        return 2
    except _Exit as exc:
        return exc.exit_code
    except _Abort:
        sys.stderr.write("Aborted.\n")
        return 130
    except _ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("Interrupted.\n")
        return 130
    except Exception as exc:  # an internal error, not the user's fault: say so
        if debug:
            traceback.print_exc()
        else:
            sys.stderr.write(f"Internal error: {type(exc).__name__}: {exc} "
                             "(run again with --debug for the traceback)\n")
        return 1


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
