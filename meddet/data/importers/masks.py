"""Segmentation masks: one label image (PNG, TIFF, BMP) or ``.npy`` array per image.

Every non-zero value of a mask is a class (named by the value, e.g. ``"1"``; rename with a
class map), 0 is background. Each connected component of one value becomes one box: the
tightest rectangle around its pixels, in pixel-edge coordinates (a component covering columns
3..5 gives ``x0 = 3, x1 = 6``). Components are 8-connected by default (diagonal neighbours
belong to the same component), 4-connected on request.

Layouts: ``images/`` beside ``masks/`` (or ``labels/``), each optionally with
``{train,val,test}/`` sub-folders; ``{train,val,test}/images/`` beside ``.../masks/``; or VOC's
``JPEGImages/`` beside ``SegmentationClass/``. The mask of ``images/a.jpg`` is ``masks/a.png``
(or ``.npy``, ``.tif``, ``.tiff``, ``.bmp``, also with a ``_mask`` suffix: ``a_mask.png``);
with split sub-folders of ``images/``, the masks may sit in matching sub-folders or all in
``masks/`` itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddet.data.importers._paths import find_with_suffix, list_images, rel, split_folders
from meddet.data.importers._records import Problem, RawBox, ReadOptions, Source, SourceItem
from meddet.errors import MedDetError

MASK_SUFFIXES = (".png", ".npy", ".tif", ".tiff", ".bmp")
_LAYOUTS = (("images", "masks"), ("images", "labels"), ("JPEGImages", "SegmentationClass"))


def mask_components(
    mask: np.ndarray, connectivity: int = 8
) -> list[tuple[int, tuple[int, int, int, int], int]]:
    """Connected components of every non-zero value of a label array
    (``scipy.ndimage.label`` on each value's pixels).

    Args:
        mask: integer ``H×W`` label array; 0 is background.
        connectivity: 8 (diagonal neighbours connect) or 4.

    Returns:
        ``[(value, (x0, y0, x1, y1), area)]`` sorted by value, then top, then left; the box in
        pixel-edge coordinates (``x1``/``y1`` exclusive), the area in pixels.
    """
    from scipy import ndimage

    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    m = np.asarray(mask)
    structure = np.ones((3, 3), bool) if connectivity == 8 else None  # None: 4-connected
    out = []
    for value in np.unique(m[m != 0]):
        labels, n = ndimage.label(m == value, structure=structure)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        # find_objects lists the components in the order of their first pixel (row-major).
        for k, (rows, cols) in enumerate(ndimage.find_objects(labels), 1):
            out.append((int(value), (cols.start, rows.start, cols.stop, rows.stop),
                        int(areas[k])))
    out.sort(key=lambda c: (c[0], c[1][1], c[1][0]))
    return out


def read_mask(path: Path) -> np.ndarray:
    """A label mask as an integer ``H×W`` array.

    Raises:
        ValueError: not a 2-D integer label image (colour, non-integer values).
        OSError: unreadable file.
    """
    if path.suffix.lower() == ".npy":
        arr = np.load(path, allow_pickle=False)
    else:
        from PIL import Image

        with Image.open(path) as im:
            im.load()
            if im.mode in ("RGB", "RGBA"):
                arr = np.asarray(im)[..., :3]
                if not ((arr == arr[..., :1]).all()):
                    raise ValueError("colour mask; save one label value per pixel (a grey or "
                                     "palette PNG)")
                arr = arr[..., 0]
            else:
                arr = np.asarray(im.getchannel(0) if im.mode == "LA" else im)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask has shape {arr.shape}; need a 2-D label array")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.issubdtype(arr.dtype, np.floating) or not np.isfinite(arr).all() \
                or (arr != np.round(arr)).any():
            raise ValueError(f"mask values must be integers, got {arr.dtype}")
        arr = arr.astype(np.int64)
    return arr


def read_masks(src: Path, options: ReadOptions) -> Source:
    """Read a folder of images and label masks (layouts in the module docstring).

    Raises:
        MedDetError: no images/masks folder pair.
    """
    groups = _groups(src)
    problems: list[Problem] = []
    items: list[SourceItem] = []
    used: set[Path] = set()
    values: set[int] = set()
    for split, img_dir, mask_dir in groups:
        for image in list_images(img_dir):
            mask = find_with_suffix(mask_dir, image.stem, MASK_SUFFIXES) or find_with_suffix(
                mask_dir, f"{image.stem}_mask", MASK_SUFFIXES)
            if mask is None:
                problems.append(Problem("missing_annotation", rel(image, src), "no mask "
                                        f"{image.stem}.png/.npy in {rel(mask_dir, src)}"))
                continue
            used.add(mask)
            where = rel(mask, src)
            try:
                arr = read_mask(mask)
            except (OSError, ValueError, SyntaxError) as exc:
                problems.append(Problem("unreadable", where, f"cannot read mask: {exc}"))
                continue
            boxes = []
            for value, xyxy, area in mask_components(arr, options.connectivity):
                values.add(value)
                if area < options.min_area:
                    problems.append(Problem("small", where, f"label {value} component at "
                                            f"{list(xyxy)} has {area} px", boxes=1))
                    continue
                boxes.append(RawBox(str(value), tuple(float(v) for v in xyxy), where))
            items.append(SourceItem(key=rel(image, src), image=image, split=split, boxes=boxes,
                                    size=(arr.shape[1], arr.shape[0]), where=where))
    for mask_dir in dict.fromkeys(m for _, _, m in groups):
        for mask in sorted(p for p in mask_dir.iterdir() if p.is_file()
                           and p.suffix.lower() in MASK_SUFFIXES and p not in used):
            problems.append(Problem("missing_image", rel(mask, src), "mask without an image "
                                    f"named {mask.stem.removesuffix('_mask')}.*"))
    return Source(items=items, classes=[str(v) for v in sorted(values)], problems=problems,
                  has_splits=any(split is not None for split, _, _ in groups))


def _groups(src: Path) -> list[tuple[str | None, Path, Path]]:
    for img_name, mask_name in _LAYOUTS:
        img_parent, mask_parent = src / img_name, src / mask_name
        if img_parent.is_dir() and mask_parent.is_dir():
            # Masks may sit in matching split folders or all in one folder.
            return [(s, f, mask_parent / f.name if (mask_parent / f.name).is_dir()
                     else mask_parent) for s, f in split_folders(img_parent).items()] \
                or [(None, img_parent, mask_parent)]
    groups = []
    for split, folder in split_folders(src).items():
        for img_name, mask_name in _LAYOUTS[:2]:
            if (folder / img_name).is_dir() and (folder / mask_name).is_dir():
                groups.append((split, folder / img_name, folder / mask_name))
                break
    return groups or _missing(src)


def _missing(src: Path):
    raise MedDetError(f"{src} has no images/ and masks/ folders (also tried labels/, "
                      "{train,val,test}/images + masks/, JPEGImages/ + SegmentationClass/); "
                      "check the folder or pass the right --format")
