"""bench/gpu_all.sh on the CPU: the plan and its budget, the runner's timeouts and skips, the report,
the carried-wheel packing, the no-GPU fast failure, and setup.py's CUDA target defaults."""
import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("gpu_all", ROOT / "bench" / "gpu_all.py")
gpu_all = importlib.util.module_from_spec(spec)
sys.modules["gpu_all"] = gpu_all  # dataclasses look their module up
spec.loader.exec_module(gpu_all)

HAS_GPU = torch.cuda.is_available()


def test_plan_fits_the_budget_with_a_timeout_per_step(tmp_path):
    groups = gpu_all.plan(tmp_path)
    assert gpu_all.planned_seconds(groups) <= gpu_all.TOTAL_BUDGET_S < 480
    names = [s.name for g in groups for s in g.steps]
    assert len(names) == len(set(names))
    for g in groups:
        for s in g.steps:
            assert 0 < s.budget <= g.budget and s.what and s.argv
    # the checks are all there, the build and the correctness checks before any benchmark
    for need in ("build", "triton_tests", "cuda_tests", "parity", "memcheck", "initcheck", "racecheck",
                 "flow_bench", "triton_bench", "diffusion", "stream", "train"):
        assert need in names
    assert names.index("racecheck") < names.index("flow_bench")


def test_plan_references_only_files_and_needs_that_exist(tmp_path):
    groups = gpu_all.plan(tmp_path)
    earlier = set()
    for g in groups:
        for s in g.steps:
            for arg in s.argv:
                if re.fullmatch(r"(bench|tests)/[\w/.-]+\.py", arg) or arg.endswith(".py"):
                    assert (ROOT / arg).is_file(), f"{s.name}: {arg} does not exist"
            for need in s.needs:
                assert need in gpu_all.MISSING_HINTS or need in earlier, f"{s.name} needs unknown {need}"
            for site in s.sites:
                assert site in gpu_all.SITES
        earlier |= {s.name for s in g.steps}   # a step needs only steps of earlier groups
    for script in ("gpu_all.sh", "fetch_gpu_wheels.sh"):
        text = (ROOT / "bench" / script).read_text()
        for ref in re.findall(r"bench/[\w.-]+", text):
            assert (ROOT / ref).exists(), f"{script} refers to {ref}"
    for old in ("gpu_check.sh", "gpu_diffusion.sh", "gpu_stream.sh", "gpu_train.sh", "gpu_wheels.sh"):
        assert not (ROOT / "bench" / old).exists()


def test_select_adds_the_needed_steps_and_rejects_unknown_names(tmp_path):
    groups = gpu_all.select(gpu_all.plan(tmp_path), {"memcheck"}, set())
    assert [s.name for g in groups for s in g.steps] == ["build", "memcheck"]
    groups = gpu_all.select(gpu_all.plan(tmp_path), None, {"stream", "stream_weights"})
    assert "stream" not in [s.name for g in groups for s in g.steps]
    with pytest.raises(SystemExit, match="unknown step"):
        gpu_all.select(gpu_all.plan(tmp_path), {"nope"}, set())


def _facts(**kw):
    return {"pytest": True, "ninja": True, "cuda_home": None, "gpus": [], **kw}


def _py(code):
    return [sys.executable, "-c", code]


def test_runner_timeouts_failures_skips_and_deadline(tmp_path):
    (tmp_path / "logs").mkdir()
    pidfile, result = tmp_path / "grandchild.pid", tmp_path / "partial.json"
    slow = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    partial = f"import json, time; json.dump({{'x': 1.5}}, open({str(result)!r}, 'w')); time.sleep(60)"
    group = gpu_all.Group("g", [
        gpu_all.Step("ok", "passes", 20, _py("print('fine')")),
        gpu_all.Step("bad", "fails", 20, _py("raise RuntimeError('boom')")),
        gpu_all.Step("slow", "hangs with a child", 2, _py(slow)),
        gpu_all.Step("part", "writes a result, then hangs", 2, _py(partial), result=str(result)),
        gpu_all.Step("nogpu", "needs a GPU", 20, _py("pass"), needs=("gpu",)),
    ])
    later = gpu_all.Group("h", [gpu_all.Step("after", "needs bad", 20, _py("pass"), needs=("bad",)),
                                gpu_all.Step("after_ok", "needs ok", 20, _py("pass"), needs=("ok",))])
    outcomes = {s.name: gpu_all.Outcome(s.name, g.name, s.what, s.budget) for g in (group, later) for s in g.steps}
    t0 = time.monotonic()
    gpu_all.run_group(group, _facts(gpu=False), tmp_path, outcomes, t0 + 100, log=lambda s: None)
    gpu_all.run_group(later, _facts(gpu=False), tmp_path, outcomes, t0 + 100, log=lambda s: None)
    assert time.monotonic() - t0 < 30
    st = {k: (o.status, o.reason) for k, o in outcomes.items()}
    assert st["ok"] == ("pass", "")
    assert st["bad"][0] == "fail" and "RuntimeError: boom" in st["bad"][1]
    assert st["slow"][0] == "timeout" and outcomes["slow"].seconds < 15
    assert st["part"][0] == "partial" and outcomes["part"].result == {"x": 1.5}
    assert st["nogpu"] == ("skipped", "missing gpu")
    assert st["after"] == ("skipped", "needs bad (fail)") and st["after_ok"][0] == "pass"
    grandchild = Path(f"/proc/{int(pidfile.read_text())}/status")
    time.sleep(0.5)   # the timeout took the whole process group (gone, or a zombie nobody reaps here)
    assert not grandchild.exists() or "zombie" in grandchild.read_text()
    # Near the deadline a step gets what is left, and none starts with under MIN_STEP_S.
    late = gpu_all.Group("late", [gpu_all.Step("late", "too late", 20, _py("pass"))])
    outcomes["late"] = gpu_all.Outcome("late", "late", "", 20)
    gpu_all.run_group(late, _facts(), tmp_path, outcomes, time.monotonic() + 3, log=lambda s: None)
    assert outcomes["late"].status == "skipped" and "no time left" in outcomes["late"].reason


def test_main_runs_every_group_and_reports_with_fake_steps(tmp_path, monkeypatch, capsys):
    """The whole run (probe, wheels, groups, report, summary) with each step's command replaced by a
    stand-in: the build 'fails', so the steps that need it are skipped and the rest run."""
    real_plan = gpu_all.plan

    def fake_plan(work, python="python3"):
        groups = real_plan(work, python)
        for g in groups:
            for s in g.steps:
                code = "raise SystemExit('error: no nvcc here')" if s.name == "build" else f"print('ran {s.name}')"
                if s.result:
                    code = f"import json; json.dump({{'ran': {s.name!r}}}, open({s.result!r}, 'w')); " + code
                s.argv, s.kind = _py(code), "run"
        return groups

    facts = _facts(gpu=True, nvidia_smi=True, python_ok=True, python_h=True, nvcc=True, sanitizer=True,
                   **{"wheels:common": True, "wheels:stream": True}, gpus=["NVIDIA H200, 580.159.04, 143771 MiB"])
    monkeypatch.setattr(gpu_all, "plan", fake_plan)
    monkeypatch.setattr(gpu_all, "probe", lambda python=None: dict(facts))
    monkeypatch.setattr(gpu_all, "WHEEL_DIR", tmp_path / "no-wheels")
    monkeypatch.setattr(gpu_all, "SITES", {k: str(tmp_path / "site" / k) for k in gpu_all.SITES})
    monkeypatch.setattr(gpu_all.tempfile, "gettempdir", lambda: str(tmp_path))
    rc = gpu_all.main([str(tmp_path / "out")])
    text = capsys.readouterr().out
    assert rc == 1
    report = json.loads((tmp_path / "out" / "gpu_all.json").read_text())
    st = {s["name"]: s for s in report["steps"]}
    assert st["build"]["status"] == "fail" and "no nvcc here" in st["build"]["reason"]
    for name in ("cuda_tests", "parity", "memcheck", "initcheck", "racecheck", "flow_bench"):
        assert st[name]["status"] == "skipped" and st[name]["reason"] == "needs build (fail)"
    for name in ("triton_tests", "compile_warm", "stream_weights", "triton_bench", "diffusion", "stream", "train"):
        assert st[name]["status"] == "pass", st[name]
    assert st["diffusion"]["result"] == {"ran": "diffusion"}
    assert "==== gpu_all: failures" in text and "report:" in text.splitlines()[-1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_all.json", "gpu_all.log", "gpu_all.md",
                                                                    "logs.tar.gz"]
    assert not (ROOT / "fgp_fast" / "kernels").is_symlink()   # the in-place link is removed again


@pytest.mark.parametrize("script", [["bench/cuda_parity.py", "--device", "cpu", "--backend", "cpp", "--random", "1"],
                                    ["bench/cuda_sanitize_case.py", "--device", "cpu"],
                                    ["bench/cuda_sanitize_case.py", "--device", "cpu", "--refit"]])
def test_gpu_check_scripts_run_on_the_cpu_backend(script, tmp_path):
    """The parity and sanitizer-case scripts with the cpp backend in the cuda role: they run, and
    the parity of cpp with itself holds bit for bit."""
    out = subprocess.run([sys.executable, *script, *(["--json", str(tmp_path / "p.json")] if "parity" in script[0]
                                                      else [])], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    if "parity" in script[0]:
        r = json.loads((tmp_path / "p.json").read_text())
        assert r["failed"] == 0 and r["total"] >= 4
        assert gpu_all.headline(gpu_all.Outcome("parity", "g", "", 1, result=r)).startswith(f"{r['total']}/")


def test_pytest_and_sanitizer_logs_are_read(tmp_path):
    (tmp_path / "logs").mkdir()
    cases = {
        "all_skipped": ("SKIPPED [9] tests/test_native_cuda.py:7: cuda backend: not built\n9 skipped in 0.1s\n", 0,
                        "pytest", "fail"),
        "green": ("....\n12 passed, 1 skipped in 3.2s\n", 0, "pytest", "pass"),
        "red": ("FAILED tests/x.py::test_a - assert 1 == 2\n1 failed, 3 passed in 1s\n", 1, "pytest", "fail"),
        "clean": ("sanitizer case ok\n========= ERROR SUMMARY: 0 errors\n", 0, "sanitizer", "pass"),
        "race": ("========= RACECHECK SUMMARY: 2 hazards displayed (2 errors, 0 warnings)\n", 3, "sanitizer", "fail"),
        "oob": ("========= Invalid __global__ read of size 4 bytes\n=========     at raster_kernel+0x10\n"
                "========= ERROR SUMMARY: 1 error\n", 3, "sanitizer", "fail"),
        "unsupported": ("========= Error: Device not supported\n", 255, "sanitizer", "fail"),
    }
    for name, (log, rc, kind, want) in cases.items():
        (tmp_path / "logs" / f"{name}.log").write_text(log)
        out = gpu_all.Outcome(name, "g", "", 10, rc=rc)
        gpu_all.finish(gpu_all.Step(name, "", 10, ["x"], kind=kind), out, tmp_path, timed_out=False)
        assert out.status == want, (name, out)
    out = gpu_all.Outcome("red", "g", "", 10, rc=1)
    gpu_all.finish(gpu_all.Step("red", "", 10, ["x"], kind="pytest"), out, tmp_path, False)
    assert out.result["failed"] == 1 and out.result["passed"] == 3 and out.result["failures"]
    out = gpu_all.Outcome("oob", "g", "", 10, rc=3)
    gpu_all.finish(gpu_all.Step("oob", "", 10, ["x"], kind="sanitizer"), out, tmp_path, False)
    assert out.result["errors"] == 1 and any("raster_kernel" in r for r in out.result["first_reports"])
    out = gpu_all.Outcome("unsupported", "g", "", 10, rc=255)
    gpu_all.finish(gpu_all.Step("unsupported", "", 10, ["x"], kind="sanitizer"), out, tmp_path, False)
    assert "Device not supported" in out.reason


def test_report_markdown_json_and_one_screen_summary(tmp_path):
    results = {
        "build": {"cuda_backend": "available", "cpp_backend": "available", "arch_list": "9.0", "seconds": 41.0,
                  "ninja": True},
        "cuda_tests": {"passed": 14, "skipped": 0, "skips": [], "failures": []},
        "memcheck": {"errors": 0, "first_reports": [], "case_ok": True},
        "parity": {"cases": [{"case": "ICT", "ok": True}, {"case": "refit", "ok": False}], "failed": 1, "total": 2},
        "flow_bench": [{"mesh": "ICT head", "method": "cuda fused encode fp16", "ms_per_frame": 1.234},
                       {"mesh": "ICT head", "method": "torch brute force (scaled)", "ms_per_frame": 25700.0}],
        "diffusion": {"step_graph_channels_last_ms_with_reference": 10.5, "end_to_end_fps_2_steps": 51.2},
        "stream": [{"size": 512, "mode": "camera", "fps_out": 29.9, "p50_ms": 60.0, "p95_ms": 81.0}],
        "train": {"stages": {"1": {"batches": {"1": {"step_ms": 310.0, "peak_mem_GiB": 21.5}}}}},
    }
    outcomes = {}
    for name, r in results.items():
        outcomes[name] = gpu_all.Outcome(name, "g", f"what {name}", 30, status="pass", seconds=12.0, result=r)
    outcomes["parity"].status, outcomes["parity"].reason = "fail", "exit status 1"
    outcomes["train"].status, outcomes["train"].reason = "partial", "killed after 50 s"
    facts = {"gpus": ["NVIDIA H200, 580.159.04, 143771 MiB"], "torch": "2.11.0+cu130", "torch_cuda": "13.0",
             "python": "3.12.3", "nvidia_smi": True, "gpu": True, "python_ok": True, "python_h": True, "nvcc": True,
             "pytest": True, "sanitizer": True, "wheels:common": True, "wheels:stream": False}
    report = gpu_all.build_report(outcomes, facts, "now", 400.0, dry_run=False)
    assert report["status"] == "failures" and report["missing"][0].startswith("wheels:stream")
    (tmp_path / "work" / "logs").mkdir(parents=True)
    (tmp_path / "work" / "logs" / "build.log").write_text("built\n")
    gpu_all.write_report(tmp_path / "out", report, tmp_path / "work")
    md = (tmp_path / "out" / "gpu_all.md").read_text()
    for figure in ("cuda available", "14 passed", "0 errors", "1.23 ms", "=10.5", "29.9 fps", "310.0 ms",
                   "exit status 1", "NVIDIA H200", "| refit | False |"):
        assert figure in md, figure
    assert json.loads((tmp_path / "out" / "gpu_all.json").read_text())["steps"][0]["headline"]
    assert "===== build: pass" in (tmp_path / "out" / "gpu_all.log").read_text()
    text = gpu_all.summary(report, tmp_path / "out")
    assert len(text.splitlines()) <= 25 and all(len(line) <= 200 for line in text.splitlines())


def _wheel(path: Path, name: str, version: str, module: str) -> Path:
    whl = path / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as zf:
        zf.writestr(f"{module}/__init__.py", f"VERSION = {version!r}\n")
        zf.writestr(f"{name}-{version}.dist-info/METADATA", f"Name: {name}\nVersion: {version}\n")
    return whl


def test_carried_wheels_pack_and_unpack(tmp_path):
    (tmp_path / "dl" / "common").mkdir(parents=True)
    _wheel(tmp_path / "dl" / "common", "fgp_fake_pkg", "1.2.3", "fgp_fake_pkg")
    _wheel(tmp_path / "dl" / "common", "Other.Pkg", "0.1", "other_pkg")
    sizes = gpu_all.pack_wheels(tmp_path / "dl", tmp_path / "whl",
                                {"common": ["fgp-fake-pkg==1.2.3", "other_pkg==0.1"]})
    assert sizes["common"] > 0
    sites = {k: str(tmp_path / "site" / k) for k in gpu_all.SITES}
    done = gpu_all.unpack_wheels(tmp_path / "whl", sites)
    assert sorted(done["common"]) == ["Other.Pkg-0.1-py3-none-any.whl", "fgp_fake_pkg-1.2.3-py3-none-any.whl"]
    out = subprocess.run([sys.executable, "-c", "import fgp_fake_pkg, other_pkg; print(fgp_fake_pkg.VERSION)"],
                         env=dict(os.environ, PYTHONPATH=sites["common"]), capture_output=True, text=True)
    assert out.stdout.strip() == "1.2.3"
    with pytest.raises(SystemExit, match="missing"):
        gpu_all.pack_wheels(tmp_path / "dl", tmp_path / "whl", {"common": ["fgp-fake-pkg==9.9"]})


def test_wheel_list_has_exact_pins_in_known_groups():
    groups = gpu_all.read_wheel_list()
    assert set(groups) <= set(gpu_all.SITES) and groups["common"] and groups["stream"]
    pins = [p for g in groups.values() for p in g]
    names = [gpu_all._norm(p.split("==")[0]) for p in pins]
    assert len(names) == len(set(names)), "one version of each"
    assert "numpy" in names and "numpy==1.26.4" in groups["stream"]
    assert "mediapipe==0.10.21" in groups["stream"] and not any(n.startswith("numpy") for n in groups["common"])


def _prepend_path(tmp_path, tools: dict[str, str]) -> str:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in tools.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    return str(bin_dir)


@pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU: the script would run in earnest")
def test_without_a_gpu_it_stops_at_once_and_says_why(tmp_path):
    fake = _prepend_path(tmp_path, {"nvidia-smi": "#!/bin/sh\necho 'NVIDIA H200, 580.159.04, 143771 MiB'\n"})
    t0 = time.monotonic()
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_all.sh"), str(tmp_path / "out")],
                         env=dict(os.environ, PATH=f"{fake}:{os.environ['PATH']}", PYTHON=sys.executable),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 2, out.stdout + out.stderr
    assert time.monotonic() - t0 < 120
    assert "stopping: gpu" in out.stdout and "sees a GPU: False" in out.stdout
    report = json.loads((tmp_path / "out" / "gpu_all.json").read_text())
    assert report["status"] == "no GPU: stopped" and {s["status"] for s in report["steps"]} == {"skipped"}


def test_dry_run_prints_the_plan_and_writes_a_planned_report(tmp_path):
    out = subprocess.run(["bash", str(ROOT / "bench" / "gpu_all.sh"), str(tmp_path / "out"), "--dry-run"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    total = re.search(r"= (\d+) s planned, deadline (\d+) s", out.stdout)
    assert total and int(total.group(1)) <= int(total.group(2)) < 480
    report = json.loads((tmp_path / "out" / "gpu_all.json").read_text())
    assert report["dry_run"] and {s["status"] for s in report["steps"]} == {"planned"}
    assert "| build | planned | - / 100 |" in (tmp_path / "out" / "gpu_all.md").read_text()


def test_without_python3_the_script_says_so(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dirname").symlink_to(shutil.which("dirname"))
    out = subprocess.run([shutil.which("bash"), str(ROOT / "bench" / "gpu_all.sh"), str(tmp_path)],
                         env={"PATH": str(bin_dir)}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "python3 is not on PATH" in out.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="shellcheck not installed")
def test_device_scripts_pass_shellcheck():
    scripts = sorted(str(p) for p in (ROOT / "bench").glob("*.sh"))
    out = subprocess.run(["shellcheck", *scripts], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def _setup_function(name: str):
    tree = ast.parse((ROOT / "setup.py").read_text())
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    ns = {"os": os}
    exec(compile(ast.Module([fn], []), "setup.py", "exec"), ns)
    return ns[name]


def test_setup_py_honours_the_arch_list_and_builds_with_ninja(monkeypatch):
    text = (ROOT / "setup.py").read_text()
    assert "-gencode" not in text.replace("no -gencode", "") and "use_ninja=True" in text
    arch = _setup_function("_cuda_arch_list")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    assert arch() == "9.0"
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    if not HAS_GPU:
        assert arch() == "8.0;9.0"
    else:
        assert arch() == "%d.%d" % torch.cuda.get_device_capability(0)
