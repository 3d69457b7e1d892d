"""Every `meddet ...` command shown in README.md and docs/ parses as written, and README's Python
snippets run as shown.

A concrete command line is run with ``--help`` appended: Typer rejects an unknown command or
option (exit 2) before it would print the help, so a documented command that does not exist
fails here without running anything. A synopsis line (``[--out DIR]``, ``a|b``) is checked
option by option against the command's parameters.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from meddet.cli import app, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
_COMMAND = re.compile(r"^(?:\$ )?(?:python3? -m )?meddet(?=\s|$)")


def documented_commands(path: Path) -> list[str]:
    """The `meddet ...` lines of ``path``'s fenced blocks, continuation lines joined."""
    out = []
    for block in _FENCE.findall(path.read_text(encoding="utf-8")):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i].strip()
            while line.endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
            if _COMMAND.match(line):
                out.append(line)
    return out


def _argv(line: str) -> list[str]:
    words = shlex.split(line, comments=True)
    start = words.index("meddet") + (1 if "meddet" in words else 0)
    return words[start:]


def _is_synopsis(argv: list[str]) -> bool:
    return any(("[" in w or "|" in w or w.endswith("...")) and not w.startswith("--json")
               for w in argv)


CASES = [(p.relative_to(ROOT).as_posix(), line) for p in DOCS for line in documented_commands(p)]


def test_the_docs_show_commands():
    """The collector finds the commands (a broken pattern would make the test below vacuous)."""
    files = {f for f, _ in CASES}
    assert {"README.md", "docs/training.md", "docs/data.md", "docs/deploy.md"} <= files
    assert len(CASES) > 30


def test_collector_joins_continuations_and_drops_comments(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("text `meddet no`\n```bash\nmeddet data synth D \\\n  --seed 1   # c\n"
                   "pip install x\n$ meddet eval R --json -\n```\n", encoding="utf-8")
    lines = documented_commands(doc)
    assert lines == ["meddet data synth D --seed 1   # c", "$ meddet eval R --json -"]
    assert _argv(lines[0]) == ["data", "synth", "D", "--seed", "1"]


def _click_command(argv: list[str]):
    import typer.main

    cmd = typer.main.get_command(app)
    path = []
    for word in argv:
        subs = getattr(cmd, "commands", None)
        if not subs:
            break
        name = word.split("|")[0]
        if name not in subs:
            break
        cmd = subs[name]
        path.append(name)
    return cmd, path


def _option_names(cmd) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *getattr(p, "secondary_opts", ()))}


@pytest.mark.parametrize(("doc", "line"), CASES, ids=[f"{d}:{i}" for i, (d, _) in
                                                       enumerate(CASES)])
def test_documented_command_parses(doc, line, capsys):
    argv = _argv(line)
    if _is_synopsis(argv):
        cmd, path = _click_command(argv)
        assert path, f"{doc}: {line!r} names no meddet command"
        known = _option_names(cmd)
        flags = {f for w in argv for f in re.findall(r"--[a-z][a-z0-9-]*", w)}
        assert flags <= known, f"{doc}: {line!r}: no such option {sorted(flags - known)}"
        return
    rc = main([*argv, "--help"])
    err = capsys.readouterr().err
    assert rc == 0, f"{doc}: {line!r} does not parse: {err.strip().splitlines()[-1:]}"


def python_snippets(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def test_readme_python_runs_as_shown(tmp_path, monkeypatch):
    """README's snippet, in a fresh folder: it makes its own data and runs its own model."""
    snippets = python_snippets(ROOT / "README.md")
    assert snippets, "README shows no Python"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MEDDET_TENSORBOARD", "0")
    for code in snippets:
        exec(compile(code, "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "prediction.png").is_file()
    assert (tmp_path / "runs" / "pretrain-teacher" / "gfl_mbv2" / "best.pt").is_file()


#: Modules a docs snippet tells the reader to write (not part of the package).
READER_WRITES = {"meddet.distill.methods.hint"}
#: Docs snippets run in full (in a folder holding the files they name), by a line they hold;
#: the others are checked for syntax and for every import they make (some run for minutes,
#: e.g. a demo, or read the reader's own files).
RUN_IN_FULL = {
    ("docs/data.md", 'ds = CocoDetection("data/cdh-synth", "train", img_size=256, train=True)'),
    ("docs/deploy.md", 'Predictor.from_checkpoint("runs/distill/meddet/student.pt"'),
    ("docs/training.md", "from meddet.engine.defaults import pretrain"),
}
DOC_SNIPPETS = [(p.relative_to(ROOT).as_posix(), code) for p in DOCS[1:]
                if "archive" not in p.parts for code in python_snippets(p)]


def _imports(code: str) -> list:
    import ast

    tree = ast.parse(code)
    return [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


@pytest.mark.parametrize(("doc", "code"), DOC_SNIPPETS,
                         ids=[f"{d}:{i}" for i, (d, _) in enumerate(DOC_SNIPPETS)])
def test_docs_python_compiles_and_imports(doc, code):
    import ast
    import importlib
    import importlib.util

    compile(code, doc, "exec")
    for node in _imports(code):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
            continue
        if node.module in READER_WRITES or node.level:
            continue
        module = importlib.import_module(node.module)
        for alias in node.names:
            assert hasattr(module, alias.name) or importlib.util.find_spec(
                f"{node.module}.{alias.name}"), f"{doc}: {node.module} has no {alias.name}"


def test_docs_python_runs_in_full(tiny_dataset, tiny_teachers, tmp_path, monkeypatch):
    import shutil

    import numpy as np
    from PIL import Image

    chosen = [(d, c, m) for d, c in DOC_SNIPPETS for doc, m in RUN_IN_FULL
              if d == doc and m in c]
    assert {(d, m) for d, _, m in chosen} == RUN_IN_FULL and len(chosen) == len(RUN_IN_FULL)
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_dataset, "data/cdh-synth")
    Path("runs/distill/meddet").mkdir(parents=True)
    shutil.copy(tiny_teachers[0], "runs/distill/meddet/student.pt")
    Path("scans").mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 80), np.uint8)).save(
        "scans/slice.png")
    for doc, code, _ in chosen:
        exec(compile(code, doc, "exec"), {"__name__": "__docs__"})
    assert Path("out/predictions.json").is_file()
