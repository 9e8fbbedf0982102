"""Issue 34: the machine's own torch (the supported range, TORCH=system's files), the wheelhouse's list, the
Makefile's refusal, and `doctor`'s one screen."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_hardware import old_driver  # noqa: F401 (a fixture)

from pipeline.commands import doctor, environment

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "torch,vision,ok",
    [
        ("2.5.1+cu124", "0.20.1+cu124", True),
        ("2.14.1", "0.29.1", True),
        ("2.4.1", "0.19.1", False),  # older than torch.cpu's bf16 checks
        ("2.15.0", "0.30.0", False),  # not tried yet
        ("2.14.1", "0.28.0", False),  # a torchvision of another torch
        ("2.11.0", None, False),
    ],
)
def test_the_supported_range_and_its_torchvision(torch, vision, ok):
    why = environment.problem(torch, vision)
    assert (why is None) is ok
    if not ok:
        assert torch in why


def report(*items):
    """A pip --report with (name, version, requires_dist, requested) items."""
    install = [{"metadata": {"name": n, "version": v, "requires_dist": r}, "requested": q} for n, v, r, q in items]
    return {"install": install}


def test_the_wheelhouse_leaves_out_what_only_torch_needs():
    """torch's CUDA libraries and sympy go (a machine with its own torch has them); a package both torch and another
    need stays, and so does one reached only through an extra (uvicorn[standard] -> uvloop), and nvidia-ml-py."""
    r = report(
        ("torch", "2.14.1", ["nvidia-cublas; platform_system == 'Linux'", "sympy>=1.13", "filelock"], False),
        ("torchvision", "0.29.1", ["torch==2.14.1", "numpy"], False),
        ("fastai", "2.8.12", ["torch<3,>=1.10", "torchvision>=0.11", "numpy"], True),
        ("dvclive", "3.49", ["nvidia-ml-py", "uvicorn[standard]", "pytest; extra == 'tests'", "colorama"], True),
        ("colorama", "0.4", [], False),
        ("uvicorn", "0.3", ['uvloop>=0.14; extra == "standard"', "click"], False),
        ("nvidia-cublas", "13.1", [], False),
        ("nvidia-ml-py", "13.6", [], False),
        ("sympy", "1.14", ["mpmath"], False),
        ("mpmath", "1.3", [], False),
        ("filelock", "3.0", [], False),
        ("numpy", "2.4", [], False),
        ("uvloop", "0.23", [], False),
        ("click", "8", [], False),
        ("pytest", "9", [], False),
        ("timm", "1.0", ["filelock", "torch", "colorama; platform_system == 'Windows'"], True),
    )
    names = {i["metadata"]["name"] for i in r["install"]}
    kept = {w.split("==")[0] for w in environment.wheel_list(r, with_torch=False)}
    assert names - kept == {"torch", "torchvision", "nvidia-cublas", "sympy", "mpmath", "pytest"}
    wheels = environment.wheel_list(r, with_torch=False, skip=("NumPy",))
    assert "numpy==2.4" not in wheels and "uvloop==0.23" in wheels and "nvidia-ml-py==13.6" in wheels
    assert "filelock==3.0" in wheels and not any(w.startswith(("torch", "sympy")) for w in wheels)
    assert len(environment.wheel_list(r, with_torch=True)) == 15  # pytest: only an extra nobody asked for
    # a machine that has timm has what timm requires here; colorama only on Windows: dvclive's stays
    assert "colorama==0.4" in environment.wheel_list(r, with_torch=False, have=("timm",))
    assert "filelock==3.0" not in environment.wheel_list(r, with_torch=False, have=("timm",))
    lean = environment.wheel_list(r, with_torch=False, skip=("uvicorn",))  # and what only it needs
    assert not any(w.startswith(("uvicorn", "uvloop", "click")) for w in lean) and "numpy==2.4" in lean


def test_keep_torch_writes_what_a_venv_over_the_machines_torch_needs(tmp_path, monkeypatch):
    """TORCH=system: a .pth naming torch's folder (the machine's Python may itself be a venv), the requirements
    without torch and torchvision, and constraints pinning the machine's versions."""
    venv = tmp_path / "venv"
    (venv / "lib" / "python3.x" / "site-packages").mkdir(parents=True)
    req = tmp_path / "requirements.txt"
    req.write_text("# a comment\ntorch==2.14.*\ntorchvision==0.29.*\nfastai==2.8.*\ntorchmetrics>=1\n")
    assert environment.keep_torch(venv, req) == 0
    pth = (venv / "lib" / "python3.x" / "site-packages" / "machine-torch.pth").read_text().strip()
    assert (Path(pth) / "torch" / "__init__.py").is_file()
    from importlib.metadata import version

    pins = (venv / "torch-constraints.txt").read_text().split()
    assert pins == [f"torch=={version('torch')}", f"torchvision=={version('torchvision')}"]
    assert (venv / "requirements-no-torch.txt").read_text().split("\n")[1:3] == ["fastai==2.8.*", "torchmetrics>=1"]


def test_pins_name_torchs_own_torchvision(capsys):
    assert environment.main(["pins", "2.11.0"]) == 0
    assert capsys.readouterr().out.split() == ["torch==2.11.0", "torchvision==0.26.*"]
    assert environment.main(["pins", "2.4.0"]) == 4


def test_make_setup_torch_system_refuses_an_interpreter_without_a_supported_torch(tmp_path):
    """`make setup TORCH=system` with a Python that has no torch: an error naming the range, nothing built."""
    base = getattr(sys, "_base_executable", sys.executable)
    venv = tmp_path / "v"
    r = subprocess.run(
        ["make", "--no-print-directory", "setup", "TORCH=system", f"PYTHON={base}", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    out = r.stdout + r.stderr
    if "no torch" not in out:  # this interpreter has a torch of its own: then the range check must have passed
        pytest.skip(f"{base} has its own torch")
    assert r.returncode != 0 and environment.RANGE in out and "TORCH=system keeps" in out
    assert not venv.exists()


def test_doctor_names_everything_and_the_problem(old_driver, capsys, tmp_path):  # noqa: F811
    """One screen: Python, torch's build and the range, the libraries, the driver and GPU, the CPU's bf16, what each
    entry resolves to, data.path; a GPU torch cannot use is a problem (exit 1) with both versions and the fixes."""
    params = tmp_path / "params.yaml"
    params.write_text(
        "data: {name: fashion-mnist, path: nowhere}\n"
        "archs:\n  logreg: {}\n  fast: {arch: resnet9, device: cpu, precision: native}\n"
    )
    assert doctor.main(["--params", str(params)]) == 1
    out = capsys.readouterr().out
    for words in (
        "python      3.",
        "a CUDA 13.0 build, kernels for sm_75 … sm_120",
        environment.RANGE,
        "fastai 2.8",
        "dvc ",
        "nvidia      driver 535.104.05 (runs CUDA ≤ 12.2); 1 GPU(s)",
        "Tesla T4, compute capability 7.5, 15 GiB",
        "torch sees  no usable GPU: CUDA initialization: The NVIDIA driver on your system is too old",
        "cpu         ",
        "data.path nowhere: missing",
        "device: cpu, precision: native",
        "problem: params.yaml: `archs.logreg.device` = 'auto', but torch",
        "`make setup TORCH=system`",
        "1 problem(s): a run would stop",
    ):
        assert words in out, words
    assert json.dumps(out).count("\\n") < 30  # one screen
