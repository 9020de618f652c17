"""The SDK's public surface and default paths; `import magnus` stays light."""

from __future__ import annotations

import subprocess
import sys
import warnings

import platformdirs

import magnus
from magnus import _paths


def test_public_surface() -> None:
    assert magnus.__all__ == sorted(magnus.__all__)
    assert set(magnus.__all__) == {"flush", "get_experiment_tracker_context", "step",
                                   "track_this"}
    assert magnus.__version__


def test_readme_documents_every_public_name() -> None:
    from pathlib import Path

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in magnus.__all__:
        assert f"`{name}(" in readme, name


def test_import_is_light() -> None:
    code = ("import sys, magnus; bad = [m for m in ('msgspec', 'anyio', 'watchfiles', "
            "'platformdirs', 'yaml', 'typing', 'socket') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_defaults_agree_with_platformdirs() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runtime = platformdirs.user_runtime_dir("magnus")
        data = platformdirs.user_data_dir("magnus")
    assert _paths.socket_path({}) == f"{runtime}/magnusd.sock"
    assert _paths.data_dir({}) == data
    assert _paths.spool_dir({}) == f"{data}/spool"
    assert _paths.socket_path({"MAGNUS_SOCKET": "/x.sock"}) == "/x.sock"
    assert _paths.socket_path({"RUNTIME_DIRECTORY": "/run/magnus"}) == "/run/magnus/magnusd.sock"
    assert _paths.data_dir({"STATE_DIRECTORY": "/var/lib/magnus"}) == "/var/lib/magnus"
    assert _paths.spool_dir({"MAGNUS_DATA_DIR": "/d"}) == "/d/spool"
    assert _paths.spool_dir({"MAGNUS_SPOOL_DIR": "/s"}) == "/s"


def test_null_tracker_context() -> None:
    with magnus.get_experiment_tracker_context() as ctx:
        assert ctx is None


def test_settings_precedence() -> None:
    from magnusd._settings import resolve

    env = {"MAGNUS_SOCKET": "/env.sock", "MAGNUS_DATA_DIR": "/envdata",
           "MAGNUS_FSYNC_INTERVAL": "0.5"}
    s = resolve({"socket": "/opt.sock"}, env)
    assert s.socket == "/opt.sock" and s.data_dir == "/envdata" and s.fsync_interval == 0.5
    assert s.spool_dir == "/envdata/spool"


def test_daemon_public_surface_is_documented() -> None:
    from pathlib import Path

    import magnusd

    assert magnusd.__all__ == sorted(magnusd.__all__)
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    for name in magnusd.__all__:
        assert f"`{name}`" in readme, name
    assert magnusd.__version__


def test_magnus_plugins_import_the_base_class_from_its_magnus_path() -> None:
    code = ("import sys, magnus\n"
            "assert 'magnusd' not in sys.modules, 'import magnus pulled in the daemon'\n"
            "from magnus.experiment_tracker import BaseExperimentTracker\n"
            "import magnusd\n"
            "assert BaseExperimentTracker is magnusd.BaseExperimentTracker\n"
            "class Mine(BaseExperimentTracker):\n"
            "    service_name = 'mine'\n"
            "    def log_metric(self, key, value, step=0): print(key, value, step)\n"
            "Mine(None).log_metric('a', 1, 2)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "a 1 2\n"
