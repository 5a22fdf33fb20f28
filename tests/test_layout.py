"""The package's layering: library code never reaches up into the CLI, and the front door is lazy."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fgp_fast"


def _imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports, at any depth (function-level imports too)."""
    package = list(path.relative_to(root).parts[:-1])  # the package a relative import starts from
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # "from . import commands"
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            names.add(str(node.args[0].value))
    return names


def _library_modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "commands" or rel.as_posix() == "cli.py":
            continue
        yield path


def test_library_code_does_not_import_the_cli_commands():
    offenders = {}
    for path in _library_modules():
        bad = sorted(m for m in _imported_modules(path)
                     if m == "fgp_fast.commands" or m.startswith("fgp_fast.commands."))
        if bad:
            offenders[str(path.relative_to(ROOT))] = bad
    assert not offenders, f"library modules importing fgp_fast.commands: {offenders}"


def test_the_scan_sees_relative_and_function_level_imports(tmp_path):
    """The scan itself catches a nested relative import of the commands (so the test above can fail)."""
    fake = tmp_path / "fgp_fast" / "stream" / "x.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..commands.animate import run\n    from .. import commands\n"
                    "    import importlib; importlib.import_module('fgp_fast.commands.demo')\n")
    found = _imported_modules(fake, tmp_path)
    assert {"fgp_fast.commands.animate", "fgp_fast.commands", "fgp_fast.commands.demo"} <= found


def test_commands_do_not_borrow_each_others_helpers():
    """A subcommand imports shared CLI code from commands.common only, never from another subcommand."""
    offenders = {}
    for path in sorted((PACKAGE / "commands").glob("*.py")):
        bad = sorted(m for m in _imported_modules(path) if m.startswith("fgp_fast.commands.")
                     and m.split(".")[2] not in ("common", path.stem))
        if bad:
            offenders[path.name] = bad
    assert not offenders, offenders


def test_no_module_named_like_a_pypi_package():
    assert not (PACKAGE / "imageio.py").exists() and not (PACKAGE / "video.py").exists()


def _fresh(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_import_fgp_fast_is_lazy():
    res = _fresh("import sys, fgp_fast; print(sorted(m for m in ('torch', 'diffusers', 'fastapi', 'PIL', 'av', "
                 "'mediapipe', 'accelerate') if m in sys.modules))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_front_door_exposes_the_public_api():
    res = _fresh("import fgp_fast, fgp_fast.camera, fgp_fast.errors, fgp_fast.render, fgp_fast.portrait, "
                 "fgp_fast.ops, fgp_fast.heads\n"
                 "assert fgp_fast.Camera is fgp_fast.camera.Camera\n"
                 "assert fgp_fast.Portrait is fgp_fast.portrait.Portrait\n"
                 "assert fgp_fast.WarpRenderer is fgp_fast.render.WarpRenderer\n"
                 "assert fgp_fast.flow_encode is fgp_fast.ops.flow_encode\n"
                 "assert fgp_fast.load_head_model is fgp_fast.heads.load_head_model\n"
                 "assert fgp_fast.HeadParams is fgp_fast.heads.HeadParams\n"
                 "assert fgp_fast.InputError is fgp_fast.errors.InputError\n"
                 "assert issubclass(fgp_fast.NoFaceError, fgp_fast.FGPError)\n"
                 "assert 'Portrait' in dir(fgp_fast) and 'Portrait' in fgp_fast.__all__\n"
                 "import sys; assert 'diffusers' not in sys.modules and 'fastapi' not in sys.modules\n"
                 "try:\n    fgp_fast.no_such_name\nexcept AttributeError as e:\n    print('ok', e)\n")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("ok")


def test_front_door_flow_encoder_is_the_ops_one():
    import fgp_fast
    from fgp_fast import ops

    if not hasattr(ops, "FlowEncoder"):
        pytest.skip("ops.FlowEncoder has not landed yet")
    assert fgp_fast.FlowEncoder is ops.FlowEncoder
