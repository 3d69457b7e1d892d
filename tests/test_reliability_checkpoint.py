"""Checkpoints and atomic writes under attack and under crashes.

- a checkpoint whose unpickling would run code is refused and the code never runs;
- format version + tensor sha256 in the metadata: damage after writing is reported as such;
- a writer killed with SIGKILL in the middle of a write leaves the previous file intact;
- no ``torch.load`` in the package without ``weights_only=True`` (checked on the source).
"""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import meddet
from meddet.cli import main
from meddet.engine.checkpoint import (
    CHECKSUM_KEY,
    FORMAT_VERSION,
    load_checkpoint,
    make_meta,
    save_checkpoint,
    tensors_sha256,
)
from meddet.errors import MedDetError

PACKAGE = Path(meddet.__file__).parent


def _meta(**kw):
    base = {"model_name": "gfl_mbv2", "num_classes": 2, "img_size": 64,
            "class_names": ["protrusion", "non-protrusion"]}
    base.update(kw)
    return make_meta(**base)


def _state(value: float = 1.25) -> dict:
    return {"model": {"w": torch.full((4096,), value), "b": torch.arange(7)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": []},
            "meta": _meta()}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


class CreatesFile:
    """Unpickling this runs ``open(marker, "w")``: code execution hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_code_hidden_in_a_checkpoint_is_refused_and_never_runs(tmp_path, capsys, monkeypatch,
                                                               tiny_dataset):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "run" / "last.pt"
    evil.parent.mkdir()
    torch.save({"model": {}, "meta": _meta(), "payload": CreatesFile(marker)}, evil)
    from meddet.config import load_config
    from meddet.runs import write_run_config

    cfg = load_config(None, {"data": {"root": str(tiny_dataset), "img_size": 64}})
    write_run_config(evil.parent, cfg.model_dump(mode="json"), "pretrain-teacher")

    with pytest.raises(MedDetError, match="refused: loading it would execute arbitrary code"):
        load_checkpoint(evil)
    assert not marker.exists()
    # Every command that reads checkpoints goes through the same loader.
    data = str(tiny_dataset)
    for argv in (["eval", str(evil), "--data", data],
                 ["predict", str(evil), str(evil)],
                 ["export", str(evil), "--format", "onnx"],
                 ["distill", "--teachers", str(evil), "--data", data, "--student", "gfl_mbv2"],
                 ["pretrain-teacher", "--resume", str(evil)],
                 ["distill", "--resume", str(evil.parent)]):
        assert main(argv) == 2, argv
        assert "refused" in one_error_line(capsys), argv
        assert not marker.exists(), argv
    assert not list((tmp_path / "runs").rglob("*.*"))  # no run directory left behind
    # The payload is real: an unsafe load would have run it.
    torch.load(evil, weights_only=False)
    assert marker.exists()


def test_meta_carries_format_version_and_tensor_sha256(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "c.pt", state)
    assert CHECKSUM_KEY not in state["meta"]  # the caller's meta is not modified
    meta = load_checkpoint(path)["meta"]
    assert meta["format_version"] == FORMAT_VERSION == 2
    assert len(meta[CHECKSUM_KEY]) == 64 and meta[CHECKSUM_KEY] == tensors_sha256(state)
    # Same tensors anywhere (order of dict keys does not matter), other tensors differ.
    assert tensors_sha256(dict(reversed(list(state.items())))) == meta[CHECKSUM_KEY]
    assert tensors_sha256(_state(1.5)) != meta[CHECKSUM_KEY]


def test_a_flipped_byte_in_the_weights_is_reported_as_corruption(tmp_path, capsys):
    path = save_checkpoint(tmp_path / "c.pt", _state())
    data = bytearray(path.read_bytes())
    pattern = torch.full((8,), 1.25).numpy().tobytes()
    at = data.find(pattern)
    assert at > 0
    data[at + 5] ^= 0x10  # one bit in the middle of the weight tensor
    bad = tmp_path / "bitrot.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(MedDetError, match="corrupted"):
        load_checkpoint(bad)
    assert main(["predict", str(bad), str(bad)]) == 2
    assert "corrupted" in one_error_line(capsys)


def test_tensors_edited_after_saving_fail_the_checksum(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", _state())
    raw = torch.load(path, weights_only=True)
    raw["model"]["w"][0] = 2.0  # keeps the old meta (and its checksum)
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(MedDetError, match="do not match the sha256 recorded when it was saved"):
        load_checkpoint(tmp_path / "edited.pt")
    assert load_checkpoint(tmp_path / "edited.pt", verify=False)["model"]["w"][0] == 2.0
    raw["meta"].pop(CHECKSUM_KEY)
    torch.save(raw, tmp_path / "nosum.pt")
    with pytest.raises(MedDetError, match="lacks the tensor checksum"):
        load_checkpoint(tmp_path / "nosum.pt")


def test_format_1_still_loads_and_newer_formats_are_refused(tmp_path):
    state = _state()
    torch.save({**state, "meta": {**state["meta"], "format_version": 1}}, tmp_path / "v1.pt")
    assert load_checkpoint(tmp_path / "v1.pt")["meta"]["format_version"] == 1
    torch.save({**state, "meta": {**state["meta"], "format_version": 99}}, tmp_path / "v99.pt")
    with pytest.raises(MedDetError, match="newer than this meddet"):
        load_checkpoint(tmp_path / "v99.pt")
    torch.save({**state, "meta": {**state["meta"], "format_version": "x"}}, tmp_path / "vx.pt")
    with pytest.raises(MedDetError, match="unreadable format_version"):
        load_checkpoint(tmp_path / "vx.pt")


# A writer that is killed by SIGKILL half-way through writing the new file: the target must
# still be the previous, complete file. The child prints HALF once half of the bytes are on disk.
_KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    target, kind = Path(sys.argv[1]), sys.argv[2]

    def stall(fh, data):
        fh.write(data[: len(data) // 2])
        fh.flush()
        print("HALF", flush=True)
        time.sleep(60)
        fh.write(data[len(data) // 2:])

    if kind == "checkpoint":
        import io, torch
        import meddet.engine.checkpoint as ck
        real = ck.atomic_save

        def slow_save(path, writer):
            buf = io.BytesIO()
            writer(buf)
            real(path, lambda fh: stall(fh, buf.getvalue()))

        ck.atomic_save = slow_save
        state = {"model": {"w": torch.full((200_000,), 2.0)}, "meta": ck.make_meta(
            model_name="gfl_mbv2", num_classes=2, class_names=["a", "b"], img_size=64)}
        ck.save_checkpoint(target, state)
    else:
        from meddet._io import atomic_open
        with atomic_open(target, "w") as fh:
            stall(fh, "new,content\\n" * 50_000)
""")


@pytest.mark.parametrize("kind", ["checkpoint", "csv"])
def test_writer_killed_mid_write_leaves_the_previous_file_intact(kind, tmp_path):
    if kind == "checkpoint":
        target = save_checkpoint(tmp_path / "last.pt", _state())
    else:
        target = tmp_path / "results.csv"
        target.write_text("epoch,loss\n1,0.5\n")
    before = target.read_bytes()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target), kind],
                            stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert proc.stdout.readline().strip() == "HALF"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # The half-written temporary file is there (the kill really was mid-write) ...
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(f".{target.name}.")]
    assert len(leftovers) == 1 and 0 < leftovers[0].stat().st_size
    # ... and the target is untouched and still valid.
    assert target.read_bytes() == before
    if kind == "checkpoint":
        assert torch.equal(load_checkpoint(target)["model"]["w"], _state()["model"]["w"])


def _torch_load_calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = (f"{f.value.id}.{f.attr}" if isinstance(f, ast.Attribute)
                    and isinstance(f.value, ast.Name) else getattr(f, "id", None))
            if name in ("torch.load", "pickle.load", "pickle.loads", "load") or (
                    isinstance(f, ast.Attribute) and f.attr in ("load", "loads")
                    and isinstance(f.value, ast.Name) and f.value.id in ("torch", "pickle",
                                                                          "dill", "joblib")):
                yield name or f.attr, node


def test_every_torch_load_in_the_package_is_weights_only():
    found = []
    for py in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(py.read_text(encoding="utf-8"), filename=str(py))
        for name, node in _torch_load_calls(tree):
            where = f"{py.relative_to(PACKAGE.parent)}:{node.lineno}"
            if name == "load":
                continue  # a bare load() is not torch's (e.g. json/yaml helpers)
            assert name == "torch.load", f"{where}: {name} can execute code from the file"
            kw = {k.arg: k.value for k in node.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and \
                kw["weights_only"].value is True, f"{where}: torch.load without weights_only=True"
            found.append(where)
    assert any("engine/checkpoint.py" in w for w in found)


def test_atomic_copy_survives_later_writes_of_its_source(tmp_path, monkeypatch):
    """best.pt is made from last.pt by atomic_copy (a hard link where possible): rewriting
    last.pt afterwards (always by rename) must leave the copy's bytes as they were, with a
    link and with the byte-copy fallback alike."""
    import meddet._io as mio

    for link_works in (True, False):
        if not link_works:
            def no_link(src, dst):
                raise OSError("links not supported here")

            monkeypatch.setattr(mio.os, "link", no_link)
        last, best = tmp_path / f"last{link_works}.pt", tmp_path / f"best{link_works}.pt"
        mio.atomic_write_bytes(last, b"epoch 1")
        mio.atomic_copy(last, best)
        assert best.read_bytes() == b"epoch 1"
        assert (os.stat(best).st_ino == os.stat(last).st_ino) is link_works
        mio.atomic_write_bytes(last, b"epoch 2")
        assert best.read_bytes() == b"epoch 1" and last.read_bytes() == b"epoch 2"
        mio.atomic_copy(last, best)  # over an existing copy
        assert best.read_bytes() == b"epoch 2"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left
