"""Reading NIfTI volumes for prediction: sagittal slices in the patient's own orientation.

The voxel axes are matched to the patient's axes through the affine, so the same anatomy comes
out the same way up whatever order the volume was stored in. A damaged file or an unusable
affine becomes a :class:`~meddet.inference.sources.Skip`; nothing here raises for a bad file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from meddet.inference.sources import Skip, Slice, SliceSpec, finite, one_line, output_stem

__all__ = ["read_nifti"]


def read_nifti(path: Path, slices: SliceSpec) -> Iterator[Slice | Skip]:
    """Sagittal slices of a NIfTI volume in the closest canonical (RAS+) orientation.

    The stored axis order does not matter: the affine (nibabel's choice: the sform when set,
    else the qform) says which voxel axis runs closest to the patient's left-right, front-back
    and foot-head directions (``io_orientation``; an oblique volume takes the nearest axes, no
    resampling). Sagittal planes are perpendicular to the left-right axis, and slice ``k`` is
    the k-th plane counted from the patient's left. Each slice is shown the radiological way
    for sagittal images: superior at the top, anterior on the left. The row / column spacing
    are the voxel sizes along superior / anterior.
    """
    import nibabel as nib
    from nibabel.orientations import io_orientation

    src = str(path)
    try:
        img = nib.load(path)
        shape = img.shape
        # Extra trailing axes of length 1 (e.g. [X, Y, Z, 1]) carry nothing; a real 4th axis
        # (time, echoes) is a stack of volumes: the first one is used.
        spatial = tuple(shape[:3])
        if len(shape) < 3 or min(spatial) < 1:
            yield Skip(src, f"NIfTI image has shape {shape}; need a 3-D volume")
            return
        notes = []
        if len(shape) > 3 and int(np.prod(shape[3:])) > 1:
            notes.append(f"{len(shape)}-D NIfTI {shape}: using the first volume")
        index = (slice(None),) * 3 + (0,) * (len(shape) - 3)
        vol = np.asarray(img.dataobj[index], dtype=np.float32)
        affine = img.affine
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for damaged files
        yield Skip(src, f"unreadable NIfTI file: {one_line(exc)}")
        return

    ornt = io_orientation(affine)
    if np.isnan(ornt).any():
        yield Skip(src, "NIfTI affine has no usable orientation")
        return
    # Permute/flip the axes into RAS+ without resampling (nibabel.as_closest_canonical).
    perm = [int(np.where(ornt[:, 0] == j)[0][0]) for j in range(3)]
    canon = np.transpose(vol, perm)
    for j, axis in enumerate(perm):
        if ornt[axis, 1] < 0:
            canon = np.flip(canon, axis=j)
    voxel = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))
    spacing = (float(voxel[perm[2]]), float(voxel[perm[1]]))  # rows = S, columns = A
    n = canon.shape[0]
    stem = output_stem(path)
    valid, bad = slices.select(n)
    for k in valid:
        # canon[k] is [A, S]; superior to the top and anterior to the left.
        arr = np.ascontiguousarray(canon[k].T[::-1, ::-1])
        yield Slice(src, f"{stem}_slice{k}", k, finite(arr), spacing, list(notes))
    for k in bad:
        yield Skip(src, f"slice {k} out of range (the volume has {n} sagittal slices)")
