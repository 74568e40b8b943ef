"""The wheel a user installs: built from this tree, installed into a fresh virtual environment outside
the repository (torch and the other dependencies seen from this interpreter's site-packages, nothing
downloaded), then run from an empty folder: the commands, the shipped recipes, a 2-iteration demo,
and ``import ohem`` with the optional extras blocked. About a minute on 2 CPU cores."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKED = ("cv2", "matplotlib", "tensorboard", "pycocotools")


def run(argv, cwd, env, timeout=300):
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    argv = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out)]
    run([*argv, str(ROOT)], cwd=out, env=env)
    (path,) = out.glob("ohem-*.whl")
    return path


def test_the_wheel_holds_the_package_its_recipes_and_no_tests(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "ohem/py.typed" in names
    assert {"ohem/configs/demo.yaml", "ohem/configs/bench.yaml", "ohem/configs/bench_dense.yaml"} <= set(names)
    recipes = {n for n in names if n.startswith("ohem/configs/paper/") and n.endswith(".yaml")}
    expected = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ohem" / "configs" / "paper").rglob("*.yaml")}
    assert recipes == expected and any("/base/" in n for n in recipes)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "docs/"))]


def test_the_installed_wheel_runs_outside_the_repository(wheel, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TQDM_DISABLE"] = "1"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)]
    run(pip, cwd=tmp_path, env=env)
    # Then torch, torchvision and the rest: this interpreter's packages, after the venv's own (the wheel's
    # ohem); added after the install, so pip saw a bare environment (and this one's own ohem never).
    outer = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages")]
    (site / "_outer_site_packages.pth").write_text("".join(f"{p}\n" for p in outer))
    work = tmp_path / "work"
    work.mkdir()
    ohem = str(venv / "bin" / "ohem")

    where = run([python, "-c", "import ohem; print(ohem.__file__)"], cwd=work, env=env).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's, not this checkout's
    assert "recipe" in run([ohem, "--help"], cwd=work, env=env).stdout
    listed = run([ohem, "recipe", "--list"], cwd=work, env=env).stdout
    assert "voc07_vgg16_ohem " in listed and "demo " in listed
    card = run([ohem, "recipe", "voc07_vgg16_ohem", "--check"], cwd=work, env=env).stdout
    assert card.startswith("### `voc07_vgg16_ohem`")
    tiny = ["data.num_train=4", "data.num_test=2", "data.image_size=128", "model.min_size=128", "model.max_size=128"]
    tiny += ["solver.iterations=2", "solver.warmup_iterations=1", "solver.steps=[1]", "train.eval_every=0"]
    tiny += ["train.checkpoint_every=2", "train.vis_images=1", "train.device=cpu", "data.workers=0"]
    argv = [ohem, "train", "--config", "demo", "--out", "run", *[a for item in tiny for a in ("--set", item)]]
    run(argv, cwd=work, env=env)
    assert {"metrics.json", "log.jsonl", "checkpoint_last.pt"} <= {p.name for p in (work / "run").iterdir()}

    blocked = "; ".join(f"sys.modules[{name!r}] = None" for name in BLOCKED)
    code = f"import sys; {blocked}; from ohem import enable_ohem; print(enable_ohem.__module__)"
    assert run([python, "-c", code], cwd=work, env=env).stdout.strip() == "ohem.mining.enable"
