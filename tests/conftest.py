"""Fixtures shared by every test package: one CPU thread, a tiny synthetic dataset, tiny configs and finished loop
runs, each test's own copy of the metric registry, headless Chromium, full disks (real and simulated)."""

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

# As the CLI does for its process (apis.cli.main): OpenMP threads wait without spinning, here and in the
# processes tests start. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from apis.data.synth import make_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """One intra-op thread: the test machine's cores are shared, and spinning OpenMP threads that
    wait for a descheduled sibling make a step many times slower. Session-scoped, so that it is in
    place before any module-scoped training fixture runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def image_check_cache(tmp_path_factory):
    """The cache of images decoded whole (apis.data.image_files) in a folder of the session's, for the processes
    tests start too: tests leave nothing in the user's cache."""
    from apis.data.image_files import CACHE_ENV

    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        del os.environ[CACHE_ENV]
    else:
        os.environ[CACHE_ENV] = previous


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """8 synthetic 64 px images (6 train, 2 val), 4 categories with COCO ids 1..4."""
    out = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(out, num_images=8, size=64, seed=0)
    return out


class Clock:
    """A settable clock in unix seconds, for the question queue's leases (``clock.now += seconds``)."""

    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


# A tiny CPU run answered by people (oracle.kind=human), for the annotation page, the Label Studio round
# trip and the browser test. Training settings as small as tests/active's, so `apis run` resumes in seconds.
HUMAN_RUN_SETTINGS = {
    "device": "cpu", "oracle": {"kind": "human"},
    "model": {"depth": 18, "fpn_channels": 16, "mask_branch_channels": 16, "head_convs": 1, "num_classes": 4,
              "norm": "bn"},
    "data": {"min_size_train": [64], "min_size_test": 64, "max_size": 96, "num_workers": 0},
    "solver": {"batch_size": 2, "max_iter": 4, "steps": [3], "warmup_iters": 1, "checkpoint_period": 2,
               "log_period": 1, "base_lr": 0.001},
    "loop": {"steps": 0, "finetune_iters": 2, "finetune_steps": [1], "finetune_lr": 0.001},
}


@pytest.fixture
def human_run(synth_dir, tmp_path):
    """``(name="human", **sections) -> (config path, run dir)``: a human-answered run whose P0 questions are
    stored (``apis run`` stopped at step 0, waiting). ``sections`` update the settings' sections."""
    import yaml

    from apis.config_loading import load_config
    from apis.data.questions import AnswersPending
    from apis.loop.run import run_active_loop

    def make(name: str = "human", **sections) -> tuple[Path, Path]:
        settings = {key: dict(value) if isinstance(value, dict) else value for key, value in HUMAN_RUN_SETTINGS.items()}
        for section, values in sections.items():
            settings[section] = {**settings.get(section, {}), **values}
        run_dir = tmp_path / name
        settings["output_dir"] = str(run_dir)
        settings["data"].update(train_json=str(synth_dir / "annotations" / "train.json"),
                                val_json=str(synth_dir / "annotations" / "val.json"))
        config_path = tmp_path / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(settings))
        with pytest.raises(AnswersPending):
            run_active_loop(load_config(config_path))
        return config_path, run_dir

    return make


# A tiny CPU loop run: tests/active checks the loop, tests/report draws and reports it.
def _tiny_overrides(data_root, output_dir, *extra):
    """The tiny run's key=value, a key of ``extra`` replacing the tiny one (a key is given once)."""
    from apis.config_loading import merge_overrides

    return merge_overrides(_tiny_defaults(data_root, output_dir), list(extra))


def _tiny_defaults(data_root, output_dir):
    return [
        f"data.train_json={data_root}/annotations/train.json", f"data.val_json={data_root}/annotations/val.json",
        f"output_dir={output_dir}", "device=cpu", "model.depth=18", "model.fpn_channels=16",
        "model.mask_branch_channels=16", "model.head_convs=1", "model.num_classes=4", "model.norm=bn",
        "data.min_size_train=[64]", "data.min_size_test=64", "data.max_size=96", "data.num_workers=0",
        "solver.batch_size=2", "solver.max_iter=4", "solver.steps=[3]", "solver.warmup_iters=1",
        "solver.checkpoint_period=2", "solver.log_period=1", "solver.base_lr=0.001",
        "loop.steps=2", "loop.finetune_iters=2", "loop.finetune_steps=[1]", "loop.finetune_lr=0.001",
    ]


@pytest.fixture
def tiny_overrides():
    """``(data_root, output_dir, *extra) -> list of key=value`` for a tiny CPU run."""
    return _tiny_overrides


@pytest.fixture
def tiny_config(synth_dir, tmp_path):
    """``(name="run", *extra) -> ExperimentConfig`` of a tiny CPU run in ``tmp_path / name``."""
    from apis.config_loading import load_config

    def make(name="run", *extra):
        return load_config(None, _tiny_overrides(synth_dir, tmp_path / name, *extra))
    return make


@pytest.fixture(autouse=True)
def metric_registry(monkeypatch):
    """A copy of the metric registry for each test: metrics a test registers are gone after it."""
    from apis.active import strategies

    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))


@pytest.fixture(scope="session")
def finished_runs(synth_dir, tmp_path_factory):
    """An entropy run (P0..P2) and a random run sharing its P0 and M0, finished once per session."""
    from apis.config_loading import load_config
    from apis.loop.run import run_active_loop

    root = tmp_path_factory.mktemp("runs")
    entropy = load_config(None, _tiny_overrides(synth_dir, root / "entropy"))
    random = load_config(None, _tiny_overrides(synth_dir, root / "random", "selection.metric=random",
                                               f"loop.initial_run={root / 'entropy'}"))
    return {"entropy": (entropy, run_active_loop(entropy)), "random": (random, run_active_loop(random))}


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def chromium():
    """``launch(playwright) -> Browser``: Debian's headless chromium, never a downloaded one. Without
    /usr/bin/chromium (`make test` installs it as root) the test is skipped, unless APIS_REQUIRE_BROWSER=1 (CI),
    where it fails."""
    for candidate in (os.environ.get("APIS_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return lambda playwright: playwright.chromium.launch(executable_path=candidate, args=CHROMIUM_FLAGS)
    reason = "Debian's chromium is not installed (`apt-get install chromium`; `make test` does it as root)"
    if os.environ.get("APIS_REQUIRE_BROWSER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


class FullDisk:
    """Set ``full`` to make every SQLite connection opened through the patched ``sqlite3.connect`` fail its data
    changes as SQLite does on a full disk: "database or disk is full", the transaction rolled back by SQLite."""

    def __init__(self):
        self.full = False
        switch = self

        class Connection(sqlite3.Connection):
            def execute(self, sql, *args):
                self._refuse(sql)
                return super().execute(sql, *args)

            def executemany(self, sql, *args):
                self._refuse(sql)
                return super().executemany(sql, *args)

            def _refuse(self, sql):
                if switch.full and sql.split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE", "REPLACE"):
                    if self.in_transaction:
                        super().execute("ROLLBACK")
                    raise sqlite3.OperationalError("database or disk is full")

        self.connection = Connection


@pytest.fixture
def sqlite_disk_full(monkeypatch) -> FullDisk:
    """A :class:`FullDisk` switch (off) for every SQLite connection opened from now on in this process. A
    simulation: the real one is :func:`small_filesystem`, which needs user namespaces."""
    disk = FullDisk()
    connect = sqlite3.connect
    monkeypatch.setattr(sqlite3, "connect", lambda *args, **kwargs: connect(*args, factory=disk.connection, **kwargs))
    return disk


_MOUNT = 'mount -t tmpfs -o size="$1"k tmpfs "$2"'


@pytest.fixture
def small_filesystem(tmp_path):
    """``(script, kib) -> stdout``: run Python ``script`` with ``sys.argv[1]`` the root of a fresh ``kib`` KiB tmpfs, a
    real filesystem that fills up (the kernel's ENOSPC), mounted in a user and mount namespace of the script's own
    (``unshare``: no root needed, nothing mounted for any other process). Skipped where the system allows no user
    namespaces (some containers): the simulated full disks of each test still run there."""
    mount = tmp_path / "small_filesystem"
    mount.mkdir()
    unshare = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c"]
    probe = subprocess.run([*unshare, _MOUNT, "sh", "4", str(mount)], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs in a user namespace here: {probe.stderr.strip()}")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def run(script: str, kib: int) -> str:
        done = subprocess.run([*unshare, f'{_MOUNT} && exec "$3" -c "$4" "$2"', "sh", str(kib), str(mount),
                               sys.executable, script], capture_output=True, text=True, env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    return run
