"""Shared fixtures (keep additive: several test modules use them)."""

from __future__ import annotations

import os

# The tests run tiny tensors, where a second intra-op thread costs more than it gives, and a
# loaded 2-core CI box makes oversubscription slow by an order of magnitude. Subprocesses
# spawned by tests (torchrun, examples) inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Training runs in tests write no TensorBoard events (the tests that check them switch it on).
os.environ.setdefault("MEDDET_TENSORBOARD", "0")
# Nothing a test runs keeps files in the user's cache folder (the demo's trained teachers).
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["MEDDET_CACHE"] = tempfile.mkdtemp(prefix="meddet-test-cache-")
atexit.register(shutil.rmtree, os.environ["MEDDET_CACHE"], ignore_errors=True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A tiny synthetic CDH dataset (4 train / 2 val / 2 test images, 128 px), made once."""
    from meddet.data import generate_dataset

    root = tmp_path_factory.mktemp("tiny_dataset") / "data"
    generate_dataset(root, num_train=4, num_val=2, num_test=2, size=128, seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory):
    """Three freshly built gfl_mbv2 detectors saved as teacher checkpoints (stand-ins for the
    paper's GFL R50/R101/R152), with recorded val mAP50 0.1, 0.3, 0.2; made once.

    Returns:
        list of the three checkpoint paths (class list of the synthetic set).
    """
    import torch

    from meddet.engine import make_meta, save_checkpoint
    from meddet.models import build_detector

    folder = tmp_path_factory.mktemp("tiny_teachers")
    paths = []
    for i, map50 in enumerate((0.1, 0.3, 0.2)):
        torch.manual_seed(100 + i)
        model = build_detector("gfl_mbv2", num_classes=2)
        meta = make_meta(model_name="gfl_mbv2", num_classes=2,
                         class_names=["protrusion", "non-protrusion"], img_size=128)
        path = folder / f"teacher{i}.pt"
        save_checkpoint(path, {"model": model.state_dict(), "meta": meta,
                               "metrics": {"mAP50": map50}})
        paths.append(path)
    return paths


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test (many tiny ops: avoids oversubscribing 2-core runners)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def script_module(request):
    """The script at the test module's ``SCRIPT`` path, imported as a module for its tests."""
    import importlib.util
    import sys

    path = request.module.SCRIPT
    name = f"_{path.stem}_under_test"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module through sys.modules while a class body is built.
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop(name, None)


@pytest.fixture(autouse=True)
def _offline_weights(request, monkeypatch):
    """Tests never touch the network: an ImageNet download fails as on an offline machine.

    ``tests/test_pretrained.py`` installs its own stand-ins (and checks the real download code on
    a ``file://`` URL), so it is left alone.
    """
    if request.module.__name__.endswith("test_pretrained"):
        return

    def offline(url, dst):
        raise OSError(f"tests run offline; not fetching {url}")

    monkeypatch.setattr("meddet.models.pretrained._download", offline)


@pytest.fixture(scope="session")
def random_mbv2_ckpt(tmp_path_factory):
    """A randomly initialised ``gfl_mbv2`` (seed 0) saved as a 64 px checkpoint of the synthetic
    classes; made once. Tests read it and never write to it."""
    from meddet.engine.checkpoint import make_meta, save_checkpoint
    from meddet.models import build_detector

    torch.manual_seed(0)
    model = build_detector("gfl_mbv2", num_classes=2)
    path = tmp_path_factory.mktemp("random_ckpt") / "model.pt"
    save_checkpoint(path, {"model": model.state_dict(), "meta": make_meta(
        model_name="gfl_mbv2", num_classes=2, class_names=["protrusion", "non-protrusion"],
        img_size=64)})
    return path
