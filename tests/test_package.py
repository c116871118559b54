"""The wheel carries the root folders: recbrew.kernels, recbrew.eval and the shipped catalog."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_installs_and_imports_root_folders(tmp_path, small_setup):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(dist), str(ROOT)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = dist.glob("recbrew-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "recbrew/kernels/__init__.py" in names and "recbrew/eval/__init__.py" in names
    assert "recbrew/assets/configs/world/default.yaml" in names
    assert not any(n.startswith(("kernels/", "eval/", "tests/")) for n in names)
    # Every module of the source tree ships (a folder without __init__.py would silently stay behind).
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "recbrew").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    # The fresh venv sees the dependencies of this environment, but not its editable recbrew.
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "--quiet",
                    str(wheel)], check=True)
    check = textwrap.dedent(
        f"""
        import recbrew, recbrew.kernels, recbrew.eval
        from recbrew import assets
        venv = {str(venv)!r}
        assert recbrew.__file__.startswith(venv), recbrew.__file__
        assert recbrew.kernels.__file__.startswith(venv) and recbrew.eval.__file__.startswith(venv)
        for kind in assets.KINDS:
            assert str(assets.path(kind)).startswith(venv), assets.path(kind)
        assert (assets.path("configs") / "world" / "default.yaml").is_file()
        print("ok")
        """
    )
    out = subprocess.run([py, "-c", check], check=True, capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "ok"

    # A shipped config in a subfolder, named by its path under configs/, from the installed wheel's CLI.
    (tmp_path / "run").mkdir()
    root = small_setup(tmp_path / "run", ["feed_like"], max_train=24, max_test=8, tiny_seed=None)
    out = subprocess.run([py, "-m", "recbrew.cli", "baselines", "train", "lirank", "--config", "movielens/lirank",
                          "--examples", str(root / "ex"), "--out", str(root / "lirank"), "train.epochs=1",
                          "train.batch_size=8", "--no-progress"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    used = json.loads((root / "lirank" / "train.json").read_text())
    shipped = venv / "lib"
    assert used["config_file"].startswith(str(shipped)), used["config_file"]
    assert used["config_file"].endswith("recbrew/assets/configs/movielens/baselines/lirank.yaml")


def test_editable_install_maps_root_folders():
    import recbrew.eval
    import recbrew.kernels
    from recbrew import assets

    assert Path(recbrew.kernels.__file__).parent == ROOT / "kernels"
    assert Path(recbrew.eval.__file__).parent == ROOT / "eval"
    assert assets.path("tasks") == ROOT / "tasks"


def test_another_checkout_through_this_install_is_refused(tmp_path):
    """A copy of recbrew/ put first on PYTHONPATH would get this install's eval/ and kernels/: one clear error."""
    import shutil

    shutil.copytree(ROOT / "recbrew", tmp_path / "recbrew", ignore=shutil.ignore_patterns("__pycache__"))
    out = subprocess.run([sys.executable, "-c", "import recbrew"], capture_output=True, text=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: recbrew at") and "another checkout" in last and str(ROOT / "eval") in last
