"""`meddet data synth`, `meddet data import` and `meddet data preview`: make, convert and look
at datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from meddet.cli._common import console, emit_json, human_console, parse_csv_list
from meddet.errors import MedDetError

app = typer.Typer(help="Synthesise, import and inspect datasets.", no_args_is_help=True)

# Arguments of the commands that write a dataset: the output folder is given as OUT or --out.
OutDir = Annotated[Path | None, typer.Argument(
    help="Output folder (new, empty, or an old dataset with --overwrite); or give it as --out.",
    show_default=False)]
OutOpt = Annotated[Path | None, typer.Option("--out", help="The output folder (the same as "
                                             "OUT).", show_default=False)]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset in "
                                         "OUT.")]
JsonOut = Annotated[str | None, typer.Option("--json", help="Also write the summary as JSON to "
                                             "this file ('-' for stdout).")]


def _out_dir(out: Path | None, out_opt: Path | None, command: str) -> Path:
    """The output folder given as the OUT argument or as ``--out`` (either, not both)."""
    if out is not None and out_opt is not None and out != out_opt:
        raise MedDetError(f"meddet data {command}: the output folder is given twice ({out} and "
                          f"--out {out_opt}); pass one")
    if out is None and out_opt is None:
        raise MedDetError(f"meddet data {command}: pass the output folder, as OUT or --out DIR")
    return out if out is not None else out_opt  # type: ignore[return-value]


def _parse_range(value: str, flag: str = "--snr-range", example: str = "8,40"
                 ) -> tuple[float, float]:
    parts = [p.strip() for p in value.split(",")]
    try:
        if len(parts) != 2:
            raise ValueError
        return float(parts[0]), float(parts[1])
    except ValueError:
        raise MedDetError(f"{flag} must be LOW,HIGH (e.g. {example}), got {value!r}") from None


@app.command("synth")
def synth(
    out: OutDir = None,
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
    phantom: Annotated[str, typer.Option("--phantom", help="v2 (default; realistic anatomy, "
                                         "contrast and acquisition), v1 (the first, simpler "
                                         "phantom, to reproduce older results) or random (v2 "
                                         "with contrast, acquisition and geometry randomised "
                                         "per image, for detectors meant for real scans).")
                       ] = "v2",
    random_off: Annotated[str | None, typer.Option(
        "--random-off", help="With --phantom random: families left at v2's values, comma-"
        "separated, from contrast, gamma, bias, blur, noise, disc, fov, spacing "
        "(ablations).")] = None,
    disc_thickness: Annotated[str | None, typer.Option(
        "--disc-thickness", help="With --phantom random: range LOW,HIGH of the factor on v2's "
        "disc heights, drawn per image (default 0.5,1.25; e.g. 0.25,1.25 for thinner "
        "discs).")] = None,
    geometry: Annotated[str | None, typer.Option(
        "--geometry", help="With --phantom random: default, or wide to also draw the "
        "vertebral bodies' height, corner radius and endplate concavity per image, so that "
        "with thin discs a disc box can take a fifth of its level, as on real T2 slices.")
    ] = None,
    random_fraction: Annotated[float | None, typer.Option(
        "--random-fraction", help="With --phantom random: the share of images randomised, in "
        "(0, 1] (default 1); the others are v2's own images.")] = None,
    random_always: Annotated[str | None, typer.Option(
        "--random-always", help="With --random-fraction: families drawn in every image, "
        "comma-separated (e.g. disc: v2's appearance on the randomised geometry).")] = None,
    iso_discs: Annotated[float | None, typer.Option(
        "--iso-discs", help="With --phantom random: the share, in [0, 1], of the images with "
        "the contrast family on whose discs are iso-intense with the vertebral marrow on a "
        "dark cortical rim, so that the endplates delineate them (degenerated discs on T2, "
        "discs on many T1-weighted scans).")] = None,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
    out_opt: OutOpt = None,
) -> None:
    """Generate the synthetic sagittal cervical-spine MRI dataset (COCO layout).

    Image sizes: multiples of 32 (the detectors' deepest backbone stride), from 128 px, the
    generator's smallest image; training inputs and crops may be 64 px, exported models 32 px.
    """
    from meddet.data import generate_dataset
    from meddet.data.generate import validate_args

    out = _out_dir(out, out_opt, "synth")
    snr = _parse_range(snr_range)
    off = tuple(parse_csv_list(random_off, "--random-off"))
    always = tuple(parse_csv_list(random_always, "--random-always"))
    thick = (None if disc_thickness is None
             else _parse_range(disc_thickness, "--disc-thickness", "0.25,1.25"))
    # Validate before the progress bar starts so that a bad flag prints only its error line.
    validate_args(out, num_train=num_train, num_val=num_val, num_test=num_test, size=size,
                  seed=seed, snr_range=snr, protrusion_rate=protrusion_rate,
                  bit_depth=bit_depth, overwrite=overwrite, phantom=phantom,
                  random_off=off, disc_thickness=thick, geometry=geometry,
                  random_fraction=random_fraction, random_always=always,
                  iso_discs=iso_discs)
    args = {"num_train": num_train, "num_val": num_val, "num_test": num_test, "size": size,
            "seed": seed, "snr_range": snr, "protrusion_rate": protrusion_rate,
            "bit_depth": bit_depth, "overwrite": overwrite, "phantom": phantom,
            "random_off": off, "disc_thickness": thick, "geometry": geometry,
            "random_fraction": random_fraction, "random_always": always,
            "iso_discs": iso_discs}
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


@app.command("import")
def import_(
    src: Annotated[Path, typer.Argument(help="Source dataset: a folder (a COCO JSON file or a "
                                        "YOLO data.yaml also works).")],
    out: OutDir = None,
    fmt: Annotated[str | None, typer.Option("--format", help="voc, yolo, coco or masks "
                                            "(default: detected from the files).")] = None,
    images: Annotated[Path | None, typer.Option("--images", help="COCO: the folder file_name "
                                                "is relative to.")] = None,
    classes: Annotated[str | None, typer.Option("--classes", help="Classes to keep, in "
                                                "category-id order, e.g. RBC,WBC (after "
                                                "--class-map); others are dropped and "
                                                "counted.")] = None,
    class_map: Annotated[str | None, typer.Option("--class-map", help="Rename or merge classes: "
                                                  "OLD:NEW,... (masks: label values, e.g. "
                                                  "1:disc,2:vertebra).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Random split TRAIN,VAL,TEST "
                                              "fractions, e.g. 0.7,0.15,0.15 (default: the "
                                              "source's splits).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random --split.")] = 0,
    min_area: Annotated[int, typer.Option("--min-area", help="Masks: smallest connected "
                                          "component kept, in pixels.")] = 1,
    connectivity: Annotated[int, typer.Option("--connectivity", help="Masks: 8 (diagonal "
                                              "pixels connect) or 4.")] = 8,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on the first bad image, box "
                                         "or class instead of dropping and counting it.")] = False,
    overwrite: Overwrite = False,
    json_out: JsonOut = None,
    out_opt: OutOpt = None,
) -> None:
    """Convert a Pascal VOC, YOLO, COCO or segmentation-mask dataset to the meddet layout."""
    from rich.progress import Progress

    from meddet.data.importers import import_dataset, parse_class_map, parse_split

    out = _out_dir(out, out_opt, "import")
    args = {"format": fmt, "images": images,
            "classes": parse_csv_list(classes, "--classes") or None,
            "class_map": parse_class_map(class_map), "split": parse_split(split), "seed": seed,
            "min_area": min_area, "connectivity": connectivity, "strict": strict,
            "overwrite": overwrite}
    shown = human_console(json_out)
    with Progress(console=shown, transient=True) as bar:
        task = bar.add_task("importing", total=None)
        summary = import_dataset(src, out, **args, progress=lambda done, total: bar.update(
            task, completed=done, total=total))
    _print_import(summary, shown)
    emit_json(summary.to_dict(), json_out)


def _print_import(summary, shown) -> None:
    from rich.markup import escape

    splits = list(summary.splits)
    table = Table(title=f"{summary.format} import, splits {summary.split_rule}",
                  title_justify="left")
    table.add_column("class")
    for col in [*splits, "total"]:
        table.add_column(col, justify="right")
    table.add_row("images", *(str(summary.splits[s]["images"]) for s in splits),
                  str(summary.images), end_section=True)
    for name in summary.classes:
        counts = [summary.splits[s]["per_class"][name] for s in splits]
        table.add_row(escape(name), *map(str, counts), str(sum(counts)))
    table.add_row("boxes", *(str(summary.splits[s]["boxes"]) for s in splits),
                  str(summary.boxes), style="bold")
    shown.print(table)
    dropped = summary.dropped()
    if dropped:
        why = Table(title="dropped or changed", title_justify="left")
        for col, justify in (("reason", "left"), ("count", "right"), ("boxes lost", "right"),
                             ("first", "left")):
            why.add_column(col, justify=justify, overflow="fold")
        for row in dropped.values():
            why.add_row(row["what"], str(row["count"]), str(row["boxes"]), escape(row["first"]))
        shown.print(why)
    read = ", ".join(f"{escape(k)} {v}" for k, v in summary.boxes_read_per_class.items())
    shown.print(f"{summary.boxes_read} boxes read ({read}), {summary.boxes} written to "
                f"{escape(summary.out)}; {summary.copied} images copied, {summary.converted} "
                "re-encoded as PNG; details in import_summary.json")
    if any(row["defect"] for row in dropped.values()):
        shown.print("the input has defects (listed above); --strict makes them an error")
