"""The exporter as a package: its API and console script, the bundle directory written at
once, the CLI's errors, and the README's Python snippet.

Run: FLAXLAYER_NETWORK_TESTS=1 .venv/bin/python -m pytest tests/python -q -k package   (the wheel test downloads)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest

import flaxlayer_export as ef
from flaxlayer_export import _jax_internals, bundle_dir
from flaxlayer_export.examples import models

REPO = Path(__file__).resolve().parents[2]
SCRIPTS = REPO / "scripts"
FIXTURE = Path(__file__).resolve().parent / "fixture_model.py"
CLI = Path(sys.executable).parent / "flaxlayer-export"


def _tree_bytes(root: Path):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------
# package
# ---------------------------------------------------------------------------

def test_package_api_and_metadata():
    from flaxlayer_export import export_flax, export_train_step
    assert callable(export_flax) and callable(export_train_step)
    assert importlib.metadata.version("flaxlayer-export") == ef.__version__
    eps = importlib.metadata.entry_points(group="console_scripts", name="flaxlayer-export")
    assert [e.value for e in eps] == ["flaxlayer_export.cli:main"]
    assert CLI.exists(), "the console script is installed next to the interpreter"
    meta = importlib.metadata.metadata("flaxlayer-export")
    reqs = meta.get_all("Requires-Dist")
    for dep in ("jax", "jaxlib", "flax", "numpy", "ml_dtypes", "safetensors"):
        assert any(r.startswith(dep) for r in reqs), dep
    assert any(r.startswith("optax") and 'extra == "train"' in r for r in reqs)


def test_jax_version_check():
    _jax_internals.check_jax_version()  # the installed one is supported
    _jax_internals.check_jax_version("0.10.2")
    _jax_internals.check_jax_version("0.10.9.dev20260101")
    for good in ("0.11.0", "0.12.0.1", "0.12.3"):
        _jax_internals.check_jax_version(good)
    for bad in ("0.10.1", "0.13.0", "1.0.0", "0.4.38"):
        with pytest.raises(ef.UnsupportedJaxError, match=r"jax>=0\.10\.2,<0\.13.*jax " + re.escape(bad)):
            _jax_internals.check_jax_version(bad)


def test_private_jax_stays_in_one_module():
    """`jax._src` is imported only by _jax_internals.py; no sys.path edits anywhere."""
    offenders = []
    for p in sorted([*SCRIPTS.rglob("*.py"), *(REPO / "tests" / "python").glob("*.py")]):
        text = p.read_text()
        if p.name not in ("_jax_internals.py", "test_package.py") and re.search(r"jax\._src", text):
            offenders.append(f"{p.relative_to(REPO)}: jax._src")
        if p.name != "test_package.py" and re.search(r"sys\.path\.(insert|append)|PYTHONPATH", text):
            offenders.append(f"{p.relative_to(REPO)}: sys.path")
    assert not offenders, offenders


def _wheelhouse() -> Path:
    """target/pip-wheelhouse with every wheel the package needs (downloaded once)."""
    wh = REPO / "target" / "pip-wheelhouse"
    pyproject = tomllib.loads((SCRIPTS / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"]["train"]
    deps += pyproject["build-system"]["requires"]
    key = hashlib.sha256(json.dumps(deps).encode() + (SCRIPTS / "requirements.txt").read_bytes()).hexdigest()[:16]
    stamp = wh / f"complete-{key}"
    if not stamp.exists():
        wh.mkdir(parents=True, exist_ok=True)
        # pip's constraints take no extras (`tritonclient[http]==...`): the pins without them.
        constraints = wh / "constraints.txt"
        constraints.write_text(re.sub(r"\[[^\]]*\]", "", (SCRIPTS / "requirements.txt").read_text()))
        r = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--dest", str(wh),
                            "-c", str(constraints), *deps],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.fail(f"pip download failed (offline? leave FLAXLAYER_NETWORK_TESTS unset):\n{r.stderr[-2000:]}")
        stamp.touch()
    return wh


@pytest.mark.network
def test_pip_install_in_a_fresh_venv(tmp_path):
    """`pip install ./scripts` in a new venv gives the API and the flaxlayer-export script."""
    wh = _wheelhouse()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, cli = venv / "bin" / "python", venv / "bin" / "flaxlayer-export"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wh),
                        f"{SCRIPTS}[train]"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    r = subprocess.run([str(py), "-c", "import flaxlayer_export as f; from flaxlayer_export import "
                        "export_flax, export_train_step; print(f.__file__)"],
                       capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    assert str(venv) in r.stdout and "site-packages" in r.stdout
    out = tmp_path / "bundle"
    r = subprocess.run([str(cli), f"{FIXTURE}:make_model", "--input", "inputs=2,5:float32",
                        "--batch-sizes", "auto", "--max-batch", "4", "--out", str(out)],
                       capture_output=True, text=True, cwd=str(tmp_path), env=env)
    assert r.returncode == 0, r.stderr
    assert "wrote" in r.stdout
    m = json.loads((out / "manifest.json").read_text())
    assert [e["batch_size"] for e in m["methods"]["__call__"]["inference"]] == [1, 2, 4]


# ---------------------------------------------------------------------------
# the bundle directory is written at once
# ---------------------------------------------------------------------------

def test_write_bundle_replaces_a_bundle_completely(tmp_path):
    out = tmp_path / "b"
    bundle_dir.write_bundle(str(out), {"manifest.json": b"1", "a.jaxexport": b"a", "v.safetensors": b"v"})
    assert _tree_bytes(out) == {"manifest.json": b"1", "a.jaxexport": b"a", "v.safetensors": b"v"}
    bundle_dir.write_bundle(str(out), {"manifest.json": b"2", "b.jaxexport": b"b"})
    assert _tree_bytes(out) == {"manifest.json": b"2", "b.jaxexport": b"b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's 0700
    # parents are created
    bundle_dir.write_bundle(str(tmp_path / "x" / "y"), {"manifest.json": b"3"})
    assert (tmp_path / "x" / "y" / "manifest.json").read_bytes() == b"3"


def test_write_bundle_without_atomic_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_dir, "_exchange", lambda a, b: False)
    out = tmp_path / "b"
    bundle_dir.write_bundle(str(out), {"manifest.json": b"1", "a.jaxexport": b"a"})
    bundle_dir.write_bundle(str(out), {"manifest.json": b"2"})
    assert _tree_bytes(out) == {"manifest.json": b"2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_write_bundle_refuses_a_directory_with_other_files(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="notes.txt"):
        bundle_dir.write_bundle(str(out), {"manifest.json": b"1"})
    assert _tree_bytes(out) == {"notes.txt": b"mine"}
    (tmp_path / "f").write_text("file")
    with pytest.raises(ValueError, match="not a directory"):
        bundle_dir.write_bundle(str(tmp_path / "f"), {"manifest.json": b"1"})


def test_failed_export_keeps_the_old_bundle(tmp_path, monkeypatch):
    """The writer fails midway (third file): the previous bundle is untouched and no
    temporary directory is left."""
    out = tmp_path / "bundle"
    x = np.ones((2, 3), np.float32)
    ef.export_flax(models.TinyDense(), x, str(out), rng_streams=())
    before = _tree_bytes(out)
    real, calls = bundle_dir.write_file, []

    def failing(path, data):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full (simulated)")
        real(path, data)

    monkeypatch.setattr(bundle_dir, "write_file", failing)
    with pytest.raises(OSError, match="simulated"):
        ef.export_flax(models.TinyDense(), x, str(out), seed=5, batch_sizes=[2, 4], rng_streams=())
    assert len(calls) == 3 and all(str(tmp_path) in c and "/.bundle.tmp-" in c for c in calls)
    assert _tree_bytes(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]
    # a failure before anything is written (bad inputs) leaves no trace either
    monkeypatch.setattr(bundle_dir, "write_file", real)
    with pytest.raises(ValueError):
        ef.export_flax(models.TinyDense(), x, str(out), batch_sizes=[1])
    assert _tree_bytes(out) == before


def test_killed_export_keeps_the_old_bundle(tmp_path):
    """SIGKILL in the middle of writing the new bundle: the old one is intact; only a
    `.bundle.tmp-*` directory is left beside it."""
    out = tmp_path / "bundle"
    ef.export_flax(models.TinyDense(), np.ones((2, 3), np.float32), str(out), rng_streams=())
    before = _tree_bytes(out)
    code = textwrap.dedent(f"""
        import os, signal, numpy as np
        from flaxlayer_export import bundle_dir, export_flax
        from flaxlayer_export.examples.models import TinyDense
        real, n = bundle_dir.write_file, []
        def write_then_die(path, data):
            real(path, data)
            n.append(path)
            if len(n) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
        bundle_dir.write_file = write_then_die
        export_flax(TinyDense(), np.ones((2, 3), np.float32), {str(out)!r}, seed=9, rng_streams=())
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert _tree_bytes(out) == before
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "bundle")
    assert len(leftovers) == 1 and leftovers[0].startswith(".bundle.tmp-")
    assert len(list((tmp_path / leftovers[0]).iterdir())) == 2


# ---------------------------------------------------------------------------
# CLI errors
# ---------------------------------------------------------------------------

def _cli(*args, cwd=None):
    return subprocess.run([str(CLI), *args], capture_output=True, text=True, cwd=str(cwd or REPO))


def test_cli_input_named_unlike_the_parameter_is_a_clear_error(tmp_path):
    """`--input x=...` for `__call__(self, inputs, training)`: a short message naming what the
    method takes, no traceback, exit status 2, nothing written."""
    r = _cli(f"{FIXTURE}:make_model", "--input", "x=4,5:float32", "--out", str(tmp_path / "o"))
    assert r.returncode == 2
    err = r.stderr
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 5, err
    assert err.startswith("flaxlayer-export: error: module.init (TinyModel.__call__(inputs, training)) failed")
    assert "{x: float32[4, 5]}" in err
    assert "`inputs`" in err and "--input names ['x'] make a dict with keys ['x']" in err
    assert "one --input named `inputs` gives a bare array" in err
    assert "To pass one array, write --input inputs=4,5:float32 (instead of x=...)." in err
    assert not (tmp_path / "o").exists()


def test_cli_method_with_several_inputs_is_a_clear_error(tmp_path):
    r = _cli(f"{FIXTURE}:TwoArgs", "--input", "0=2,3:float32", "--input", "1=2,2:float32",
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "TwoArgs.__call__(a, b) needs 2 arguments (a, b)" in r.stderr
    assert "fn(module, inputs[, training])" in r.stderr


def test_cli_other_errors(tmp_path):
    r = _cli(f"{FIXTURE}:nope", "--input", "inputs=2,3:float32", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "'nope' is not defined" in r.stderr
    r = _cli("no_such_module_xyz:M", "--input", "inputs=2,3:float32", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "cannot import 'no_such_module_xyz'" in r.stderr
    r = _cli(f"{FIXTURE}:make_model", "--input", "inputs=2,3:float32", "--batch-sizes", "1,x",
             "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "--batch-sizes" in r.stderr


def test_cli_module_target_and_auto_batch_sizes(tmp_path):
    out = tmp_path / "dense"
    r = _cli("flaxlayer_export.examples.models:TinyDense", "--input", "inputs=3,3:float32",
             "--batch-sizes", "auto", "--max-batch", "4", "--rng-streams", "", "--out", str(out),
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert [e["batch_size"] for e in m["methods"]["__call__"]["inference"]] == [1, 2, 3, 4]
    assert m["methods"]["__call__"]["batching"]["paddable"] is True
    assert "paddable: True" in r.stdout


# ---------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------

def readme_python_snippet() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## From Python"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "the From Python section has a python block"
    return blocks[0]  # linen; the NNX one runs in test_nnx.py


def test_readme_python_snippet_runs_in_a_fresh_clone(tmp_path):
    """The README's snippet, as written, in a fresh clone: it runs, writes under target/ and
    leaves the clone's tracked files (hlo/ included) untouched."""
    code = readme_python_snippet()
    assert "import numpy as np" in code
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(clone), env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    written = [p for p in (clone / "target").rglob("manifest.json")]
    assert written, "the snippet writes a bundle under target/"
    m = json.loads(written[0].read_text())
    assert m["module"] == "MyFlaxModule"
    status = subprocess.run(["git", "-C", str(clone), "status", "--porcelain", "--ignored"],
                            capture_output=True, text=True, check=True).stdout
    assert status.strip() == "!! target/", status
    assert "paddable" in r.stdout
