"""`meddet data ...` (placeholder: replaced by the data layer's commands)."""

import typer

app = typer.Typer(help="Synthesise and inspect datasets.", no_args_is_help=True)
