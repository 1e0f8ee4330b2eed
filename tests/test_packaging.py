"""A user's install: the wheel holds the configs, and ``apis`` works from it in a fresh virtual environment.

Marked ``packaging`` (``pytest -m "not packaging"`` skips it). Offline and quick (about 30 s): the wheel is
built without build isolation from a copy of the sources, installed with ``--no-deps`` into a new venv,
and that venv borrows this environment's third-party packages (torch, ...) through a ``.pth`` file, which
adds their folder to ``sys.path`` without running the editable install of this checkout found there.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import apis

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.packaging


def _run(args, cwd, timeout=120):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{args}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """``(python of a fresh venv with the wheel installed, a working directory outside the checkout)``."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "apis", source / "apis", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", root / "dist", source], cwd=root)
    (wheel,) = (root / "dist").glob("apis-*.whl")

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root)
    python = venv / "bin" / "python"
    site_packages = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              cwd=root).strip())
    (site_packages / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
         cwd=root)
    work = root / "elsewhere"
    work.mkdir()
    return python, wheel, work


def test_the_wheel_holds_the_configs(installed):
    _, wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(path.name for path in (REPO / "apis" / "configs").glob("*.yaml"))
    assert sorted(Path(n).name for n in names if n.startswith("apis/configs/")) == shipped


def test_the_wheel_holds_the_annotation_page(installed):
    _, wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    page = sorted(path.name for path in (REPO / "apis" / "annotate" / "static").iterdir())
    assert sorted(Path(n).name for n in names if n.startswith("apis/annotate/static/")) == page


def test_the_installed_package_runs_from_any_directory(installed):
    python, _, work = installed
    location = _run([python, "-c", "import apis; print(apis.__file__)"], cwd=work).strip()
    assert Path(location).is_relative_to(python.parents[1]), location  # the wheel's copy, not this checkout
    assert _run([python.parent / "apis", "--version"], cwd=work).strip() == f"apis {apis.__version__}"
    found = _run([python, "-c", "from apis.config_loading import find_config; from apis.demo import CONFIG; "
                  "print(find_config(CONFIG))"], cwd=work).strip()
    assert Path(found).is_relative_to(python.parents[1]) and Path(found).name == "condinst_r18_cpu_synth.yaml"


def test_the_demo_runs_from_the_installed_package(installed):
    """``apis demo`` end to end, with a schedule of one iteration per training (the demo's own steps and data)."""
    python, _, work = installed
    script = ("from pathlib import Path\n"
              "import apis.demo as demo\n"
              "demo.QUICK_OVERRIDES = ['solver.max_iter=1', 'loop.finetune_iters=1', 'loop.finetune_steps=[]',\n"
              "    'data.max_train_images=2', 'data.max_val_images=1', 'solver.checkpoint_period=1000']\n"
              "demo.run_demo(Path('runs/demo'), quick=True, steps=1)\n")
    out = _run([python, "-c", script], cwd=work, timeout=300)
    assert "| random | P1 |" in out
    assert (work / "runs" / "demo" / "comparison.md").is_file() and (work / "data" / "synth").is_dir()
    assert f"Report: {Path('runs/demo/report.html')}" in out and (work / "runs" / "demo" / "report.html").is_file()
    sys.path.insert(0, str(REPO / "bench"))
    from bench_demo_time import parse_phases

    assert None not in parse_phases(out).values() and "Demo done in " in out  # what bench_demo_time records
