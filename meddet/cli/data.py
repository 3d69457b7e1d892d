"""`meddet data synth` and `meddet data preview`: make and look at datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from meddet.cli._common import console, emit_json
from meddet.errors import MedDetError

app = typer.Typer(help="Synthesise and inspect datasets.", no_args_is_help=True)


def _parse_range(value: str) -> tuple[float, float]:
    parts = [p.strip() for p in value.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise MedDetError(f"--snr-range must be LOW,HIGH (e.g. 8,40), got {value!r}") from None


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Output folder (new, empty, or an old dataset "
                                        "with --overwrite).")],
    num_train: Annotated[int, typer.Option("--num-train", help="Training images.")] = 200,
    num_val: Annotated[int, typer.Option("--num-val", help="Validation images.")] = 50,
    num_test: Annotated[int, typer.Option("--num-test", help="Test images.")] = 50,
    size: Annotated[int, typer.Option("--size", help="Image side in pixels (multiple of 32, "
                                      ">= 128).")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Master seed; the same flags and seed "
                                      "give byte-identical files.")] = 0,
    snr_range: Annotated[str, typer.Option("--snr-range", help="Per-image Rician SNR range "
                                           "LOW,HIGH.")] = "8,40",
    protrusion_rate: Annotated[float, typer.Option("--protrusion-rate", help="Probability "
                                                   "that a disc has a protrusion.")] = 0.3,
    bit_depth: Annotated[int, typer.Option("--bit-depth", help="PNG bits per pixel: 8 or "
                                           "16.")] = 8,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset "
                                            "in OUT.")] = False,
    json_out: Annotated[str | None, typer.Option("--json", help="Also write the summary as "
                                                 "JSON to this file ('-' for stdout).")] = None,
) -> None:
    """Generate the synthetic sagittal-T2 cervical-spine dataset (COCO layout)."""
    from meddet.data import generate_dataset
    from meddet.data.generate import validate_args

    snr = _parse_range(snr_range)
    # Validate before the progress bar starts so that a bad flag prints only its error line.
    validate_args(out, num_train=num_train, num_val=num_val, num_test=num_test, size=size,
                  seed=seed, snr_range=snr, protrusion_rate=protrusion_rate,
                  bit_depth=bit_depth, overwrite=overwrite)
    args = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "size": size,
            "seed": seed, "snr_range": snr, "protrusion_rate": protrusion_rate,
            "bit_depth": bit_depth, "overwrite": overwrite}
    if json_out == "-":  # stdout carries the JSON: no table, no progress bar
        emit_json(generate_dataset(out, **args), json_out)
        return
    from rich.progress import Progress

    with Progress(console=console, transient=True) as bar:
        task = bar.add_task("rendering", total=num_train + num_val + num_test)
        summary = generate_dataset(out, **args,
                                   progress=lambda done, _: bar.update(task, completed=done))
    table = Table(title=f"{out}  ({size} px, seed {seed})")
    for col in ("split", "images", "protrusion", "non-protrusion"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for split, row in summary["splits"].items():
        table.add_row(split, str(row["images"]), str(row["protrusion"]),
                      str(row["non-protrusion"]))
    console.print(table)
    emit_json(summary, json_out)


@app.command("preview")
def preview(
    dataset: Annotated[Path, typer.Argument(help="Dataset folder (images/ + annotations/).")],
    split: Annotated[str, typer.Option("--split", help="Which split to draw.")] = "train",
    n: Annotated[int, typer.Option("--n", help="Number of images in the grid.")] = 16,
    out: Annotated[Path, typer.Option("--out", help="PNG file to write.")] = Path("preview.png"),
) -> None:
    """Draw a grid of images with their boxes and labels."""
    from meddet.data import make_preview

    info = make_preview(dataset, out, split=split, n=n)
    counts = ", ".join(f"{k} {v}" for k, v in info["classes"].items())
    console.print(f"wrote {info['out']}: {info['images']} images, {info['boxes']} boxes ({counts})")
