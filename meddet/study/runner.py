"""Running the study: every row as ``meddet`` subprocesses, resumable, under a deadline.

Each row runs in its own process group as one ``bash -c "TRAIN && EVAL"`` line with
``OMP_NUM_THREADS`` set to the threads per row, ``jobs`` rows at a time, a row starting once
the rows it needs (the teachers) are finished. A row with config overrides (an
ImageNet-initialised student) trains with ``--config runs/<row>/study-config.yaml``: the
study's config with the overrides on top, written when the row starts. A finished row (its
``row.json`` exists) is never trained again; an interrupted one resumes from its ``last.pt``. A
finished row that its table now sweeps under noise but whose record has no sweep is evaluated
again, sweep included, and its record keeps its training. At the deadline the running
rows are stopped and what they ran, and for how long, is appended to their ``partial.json``,
so that a row finished over several invocations reports every one of them.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from meddet._io import atomic_write_text
from meddet.engine.curves import last_quarter, trained_with, training_cost, val_curve
from meddet.errors import MedDetError
from meddet.study.records import record_invocation, write_json
from meddet.study.report import write_report
from meddet.study.tables import NOISE_SPEC, TABLES, TEACHERS, Row, plan, select, tables_arg


@dataclass
class StudyOptions:
    """What ``meddet study run`` runs, where, and how.

    Attributes:
        out: the study folder (``runs/<row>/``, ``logs/``, ``study.json``).
        data: the dataset (default ``out/data``; generated with ``meddet data synth --seed 0``
            when it has no ``annotations/``).
        config: the config every row trains with (a preset name or a YAML file).
        device: ``cpu``, ``cuda`` or ``cuda:N`` for every command.
        seeds: training seeds; the first is also the single-seed rows' seed.
        tables: the tables to run, a subset of :data:`~meddet.study.tables.TABLES` and
            :data:`~meddet.study.tables.OPTIONAL_TABLES`.
        teacher_epochs: the teachers' epochs (``None``: the config's).
        jobs: rows run at a time.
        threads_per_job: ``OMP_NUM_THREADS`` of each row.
        deadline_min: stop (resumably) after this many minutes; ``None``: no deadline.
        only: comma list of row ids to run (their dependencies must be finished already).
        report: the Markdown report written at the end (default ``out/results.md``).
        bench_img_size, bench_threads, bench_iters: the ``bench`` row's ``meddet bench``.
        extra: further flags for every training command (a row's own flags win).
    """

    out: Path = Path("runs/study")
    data: Path | None = None
    config: str = "cpu-crop"
    device: str = "cpu"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    tables: set[str] = field(default_factory=lambda: set(TABLES))
    teacher_epochs: int | None = None
    jobs: int = 1
    threads_per_job: int = 1
    deadline_min: float | None = None
    only: str | None = None
    report: Path | None = None
    bench_img_size: int = 512
    bench_threads: int = 2
    bench_iters: int = 10
    extra: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.data = Path(self.data) if self.data else self.out / "data"
        self.report = Path(self.report) if self.report else self.out / "results.md"
        for name in ("jobs", "threads_per_job", "bench_iters", "bench_threads"):
            if getattr(self, name) < 1:
                raise MedDetError(f"--{name.replace('_', '-')} {getattr(self, name)} must be at "
                                  "least 1")
        if self.deadline_min is not None and self.deadline_min <= 0:
            raise MedDetError(f"--deadline-min {self.deadline_min} must be positive (minutes); "
                              "leave it out for no deadline")
        if self.teacher_epochs is not None and self.teacher_epochs < 1:
            raise MedDetError(f"--teacher-epochs {self.teacher_epochs} must be at least 1")

    def rows(self) -> list[Row]:
        """The planned rows, filtered by :attr:`only`."""
        return select(plan(self.seeds, self.tables, self.teacher_epochs), self.only)

    def command(self) -> str:
        """The ``meddet study run`` line these options stand for (recorded in study.json)."""
        tables = tables_arg(self.tables)
        argv = ["--out", str(self.out), "--data", str(self.data), "--config", self.config,
                "--device", self.device, "--seeds", ",".join(map(str, self.seeds)),
                "--tables", tables, "--jobs", str(self.jobs),
                "--threads-per-job", str(self.threads_per_job)]
        for flag, value, default in (
                ("--teacher-epochs", self.teacher_epochs, None),
                ("--deadline-min", self.deadline_min, None), ("--only", self.only, None),
                ("--report", self.report, self.out / "results.md"),
                ("--bench-img-size", self.bench_img_size, 512),
                ("--bench-threads", self.bench_threads, 2),
                ("--bench-iters", self.bench_iters, 10)):
            if value != default:
                argv += [flag, str(value)]
        if self.extra:
            argv += ["--extra", shlex.join(self.extra)]
        return "meddet study run " + shlex.join(argv)


@dataclass
class StudyResult:
    """What one ``meddet study run`` did.

    Attributes:
        planned: the ids of the rows it was asked to run, in plan order.
        finished: those with a ``row.json`` now (including rows finished before).
        failed: rows whose command failed, or that needed a row that failed.
        stopped: rows cut by the deadline (they resume next time).
        report: the Markdown report written.
    """

    planned: list[str]
    finished: list[str]
    failed: list[str]
    stopped: list[str]
    report: Path

    @property
    def exit_code(self) -> int:
        """1 when a row failed, else 0 (a deadline is not a failure)."""
        return 1 if self.failed else 0


def meddet_argv() -> list[str]:
    """How a subprocess calls the ``meddet`` CLI of this interpreter."""
    return [sys.executable, "-m", "meddet"]


def resolve_teachers(argv: list[str], runs: Path) -> list[str]:
    """A copy of ``argv`` with ``@row-id`` references replaced by that row's ``best.pt``."""
    out = []
    for a in argv:
        if "@" in a:
            a = ",".join(str(runs / p[1:] / "best.pt") if p.startswith("@") else p
                         for p in a.split(","))
        out.append(a)
    return out


def resumed(info: dict, partial: Path) -> dict:
    """``info`` of a finished row, with the invocations a deadline cut before it (read from
    ``partial``) folded in: seconds are summed over all of them, the commands start with the
    one that began the row, and ``segments`` lists each invocation's seconds."""
    if not partial.is_file():
        return info
    segs = json.loads(partial.read_text())
    out = dict(info)
    out["segments"] = [s["seconds"] for s in segs] + [info["seconds"]]
    out["seconds"] = round(sum(out["segments"]), 1)
    out["commands"] = [s["command"] for s in segs] + list(info["commands"])
    return out


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%H:%M:%S")


def _print(line: str) -> None:
    print(line, flush=True)


class Runner:
    """Runs rows as subprocesses, ``jobs`` at a time, in dependency order.

    Args:
        options: the study's options (folder, data, config, device, jobs, deadline, ...).
        rows: the rows to run, in the order they should start.
        echo: receives one progress line per start, finish, failure, skip and stop.
    """

    def __init__(self, options: StudyOptions, rows: list[Row],
                 echo: Callable[[str], None] = _print) -> None:
        self.o = options
        self.echo = echo
        self.rows = {r.id: r for r in rows}
        self.order = [r.id for r in rows]
        self.runs = options.out / "runs"
        self.logs = options.out / "logs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.time() + options.deadline_min * 60 if options.deadline_min else None
        self.running: dict[str, tuple[subprocess.Popen, float, list[list[str]], object]] = {}
        self.failed: set[str] = set()
        self.stopped: list[str] = []

    def done(self, rid: str) -> bool:
        """Whether row ``rid`` is finished (its ``row.json`` exists)."""
        return (self.runs / rid / "row.json").is_file()

    def unswept(self, rid: str) -> bool:
        """Whether finished row ``rid`` is to be swept under noise but its record has no sweep
        (a row recorded before its table asked for one): only its evaluation runs again."""
        row = self.rows[rid]
        if not (row.noise and row.kind != "bench" and self.done(rid)):
            return False
        info = json.loads((self.runs / rid / "row.json").read_text())
        return not info.get("test", {}).get("noise_sweep")

    def row_config(self, row: Row) -> str:
        """The ``--config`` of ``row``: the study's, or for a row with overrides the path of
        ``runs/<row>/study-config.yaml``, written here (the study's config with the overrides
        on top, checked against the schema)."""
        if not row.overrides:
            return self.o.config
        from meddet.config import load_config

        doc = load_config(self.o.config, row.overrides).model_dump(mode="json",
                                                                   exclude_unset=True)
        path = self.runs / row.id / "study-config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
        return str(path)

    def steps(self, row: Row) -> list[list[str]]:
        """The row's commands: train (or resume) then evaluate; ``meddet bench`` for ``bench``.
        A row with overrides gets its ``study-config.yaml`` written (:meth:`row_config`)."""
        run = self.runs / row.id
        dev = ["--device", row.device or self.o.device]
        if row.kind == "bench":
            return [[*meddet_argv(), "bench", "--models", ",".join([*TEACHERS, "meddet",
                                                                     "meddet_lite"]),
                     "--img-size", str(self.o.bench_img_size), "--threads",
                     str(self.o.bench_threads), "--iters", str(self.o.bench_iters),
                     "--batch-size", str(row.batch), *dev, "--json", str(run / "bench.json")]]
        if self.unswept(row.id):
            train = None
        elif (run / "last.pt").is_file():
            train = [*meddet_argv(), row.argv[0], "--resume", str(run)]
        else:
            common = ["--data", str(self.o.data), "--config", self.row_config(row),
                      *self.o.extra]
            # The row's own flags come last so that they win over --extra (e.g. --epochs).
            argv = resolve_teachers(row.argv, self.runs)
            train = [*meddet_argv(), argv[0], *common, *argv[1:], "--out", str(run), *dev]
        ev = [*meddet_argv(), "eval", str(run / row.checkpoint), "--data", str(self.o.data),
              "--split", "test", "--out", str(run / "eval"), "--json", str(run / "test.json"),
              *dev]
        if row.noise:
            ev += ["--noise-sweep", NOISE_SPEC]
        return [ev] if train is None else [train, ev]

    def launch(self, rid: str) -> None:
        """Start row ``rid`` in its own process group, logging to ``logs/<rid>.log``."""
        row = self.rows[rid]
        (self.runs / rid).mkdir(parents=True, exist_ok=True)
        try:
            steps = self.steps(row)
        except MedDetError as exc:  # e.g. a row's overrides the config schema rejects
            self.failed.add(rid)
            self.echo(f"[{_now()}] FAIL   {rid} ({exc})")
            return
        log = (self.logs / f"{rid}.log").open("a")
        env = dict(os.environ, OMP_NUM_THREADS=str(self.o.threads_per_job),
                   PYTHONUNBUFFERED="1")
        cmd = " && ".join(subprocess.list2cmdline(s) for s in steps)
        log.write(f"$ {cmd}\n")
        log.flush()
        proc = subprocess.Popen(["bash", "-c", cmd], stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        self.running[rid] = (proc, time.time(), steps, log)
        self.echo(f"[{_now()}] start  {rid}")

    def _cmds(self, steps: list[list[str]]) -> list[str]:
        # "meddet <command> ..." with the study folder written as OUT: the records stay
        # readable and do not name the machine's paths.
        return [" ".join(s[2:]).replace(str(self.runs.parent), "OUT") for s in steps]

    def stop(self, rid: str) -> None:
        """Ends a row at the deadline and adds what it ran, and for how long, to its
        ``partial.json``: a row finished across several invocations reports them all."""
        proc, t0, steps, log = self.running.pop(rid)
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        log.close()
        if self.done(rid):  # a sweep of a finished row: nothing of its training to add
            self.stopped.append(rid)
            self.echo(f"[{_now()}] STOP   {rid} (deadline; its sweep runs next time)")
            return
        path = self.runs / rid / "partial.json"
        segs = json.loads(path.read_text()) if path.is_file() else []
        segs.append({"seconds": round(time.time() - t0, 1), "command": self._cmds(steps)[0],
                     "device": self.rows[rid].device or self.o.device})
        write_json(path, segs)
        self.stopped.append(rid)
        self.echo(f"[{_now()}] STOP   {rid} (deadline; resumes next time)")

    def finish(self, rid: str, rc: int) -> None:
        """Record a row whose process ended with ``rc``: its ``row.json``, or a failure."""
        proc, t0, steps, log = self.running.pop(rid)
        log.close()
        row = self.rows[rid]
        secs = time.time() - t0
        if rc != 0:
            self.failed.add(rid)
            self.echo(f"[{_now()}] FAIL   {rid} (exit {rc}, {secs:.0f}s; see logs/{rid}.log)")
            return
        run = self.runs / rid
        if self.done(rid):  # a finished row evaluated again under noise (:meth:`unswept`)
            info = json.loads((run / "row.json").read_text())
            info["test"] = json.loads((run / "test.json").read_text())
            info["commands"] = [*info["commands"], *self._cmds(steps)]
            info["sweep_seconds"] = round(secs, 1)
            write_json(run / "row.json", info)
            self.echo(f"[{_now()}] swept  {rid} ({secs:.0f}s)")
            return
        info = resumed({"id": rid, "label": row.label, "seed": row.seed, "group": row.group,
                        "seconds": round(secs, 1), "commands": self._cmds(steps),
                        "device": row.device or self.o.device, "config": self.o.config},
                       run / "partial.json")
        if row.overrides:
            info["overrides"] = row.overrides
        if row.kind == "bench":
            info["bench"] = json.loads((run / "bench.json").read_text())
        else:
            info["test"] = json.loads((run / "test.json").read_text())
            curve = val_curve(run / "results.csv")
            info["best_val_mAP50"] = max(p.mAP50 for p in curve) if curve else None
            # The learning curve (iteration, val mAP50, val mAP) and its last quarter.
            info["val_curve"] = [[p.iter, p.mAP50, p.mAP] for p in curve]
            quarter = last_quarter(curve)
            info["last_quarter"] = quarter.to_dict() if quarter is not None else None
            info.update(training_cost(run) or {})  # train_seconds, train_images
            if "--resume" in steps[0] and not (run / "partial.json").is_file():
                # a run trained before the study placed it (linked teachers): say how
                info["trained_with"] = trained_with(run)
            taught = {n: json.loads((self.runs / n / "row.json").read_text())["test"]
                      for n in row.needs if n.startswith("teacher-")}
            if taught:  # say which teachers taught the row: they may differ between machines
                info["teachers"] = {n: t["mAP50"] for n, t in taught.items()}
                info["teachers_mAP"] = {n: t.get("mAP") for n, t in taught.items()}
        write_json(run / "row.json", info)
        self.echo(f"[{_now()}] done   {rid} ({secs:.0f}s)")

    def run(self) -> int:
        """Run the pending rows until all are finished, failed or stopped at the deadline.

        Returns:
            1 when a row failed (or was skipped because a row it needs failed), else 0.
        """
        pending = [r for r in self.order if not self.done(r) or self.unswept(r)]
        if not self.o.device.startswith("cuda"):
            for r in [r for r in pending if self.rows[r].device.startswith("cuda")]:
                self.echo(f"[{_now()}] skip   {r} (a GPU row: run the study with --device "
                          "cuda)")
                pending.remove(r)
        while pending or self.running:
            for rid, (proc, *_rest) in list(self.running.items()):
                rc = proc.poll()
                if rc is not None:
                    self.finish(rid, rc)
            if self.deadline and time.time() > self.deadline:
                for rid in list(self.running):
                    self.stop(rid)
                break
            blocked = {r for r in pending if any(n in self.failed for n in self.rows[r].needs)}
            for r in blocked:
                self.echo(f"[{_now()}] skip   {r} (a row it needs failed)")
                self.failed.add(r)
            pending = [r for r in pending if r not in blocked]
            for rid in list(pending):
                if len(self.running) >= self.o.jobs:
                    break
                if all(self.done(n) for n in self.rows[rid].needs):
                    pending.remove(rid)
                    self.launch(rid)
            if not self.running and pending:
                self.echo("nothing can start: " + ", ".join(pending))
                break
            time.sleep(1.0)
        return 1 if self.failed else 0


def ensure_data(data: Path) -> None:
    """Generate the default synthetic dataset at ``data`` unless one is there."""
    if (data / "annotations").is_dir():
        return
    rc = subprocess.run([*meddet_argv(), "data", "synth", str(data), "--seed", "0"]).returncode
    if rc != 0:
        raise MedDetError(f"generating the dataset at {data} failed (`meddet data synth` "
                          f"exit {rc}, message above); pass --data with an existing dataset")


def run_study(options: StudyOptions, echo: Callable[[str], None] = _print) -> StudyResult:
    """Run (or resume) the rows of ``options``, record the invocation, write the report.

    Finished rows are kept; a row cut by a deadline resumes from its ``last.pt``. The report
    is rewritten from every row in the study folder, finished now or before.

    Returns:
        what ran; :attr:`StudyResult.exit_code` is 1 when a row failed.
    """
    rows = options.rows()  # validates --only before any work
    ensure_data(options.data)
    runner = Runner(options, rows, echo)
    runner.run()
    record_invocation(options.out, command=options.command(), jobs=options.jobs,
                      device=options.device, config=options.config, data=options.data,
                      seeds=options.seeds, extra=options.extra,
                      teacher_epochs=options.teacher_epochs)
    planned = [r.id for r in rows]
    write_report(options.out, options.report, planned)
    return StudyResult(planned=planned, finished=[r for r in planned if runner.done(r)],
                       failed=[r for r in planned if r in runner.failed],
                       stopped=runner.stopped, report=options.report)
