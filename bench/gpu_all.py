#!/usr/bin/env python3
"""Every GPU check and figure of fgp_fast in one call on a bare lent H100/H200 (run by bench/gpu_all.sh).

    bash bench/gpu_all.sh OUTDIR              # the run (OUTDIR: gpu_all.json, gpu_all.md, gpu_all.log, logs.tar.gz)
    bash bench/gpu_all.sh OUTDIR --dry-run    # the plan, the budgets and what this machine lacks; runs nothing
    bash bench/gpu_all.sh OUTDIR --only build,cuda_tests   # a subset (the steps they need are added)

Order: prerequisites (python3, Python.h, nvcc, nvidia-smi, a GPU torch can use; no GPU stops the run
at once), the carried wheels unpacked, then groups of steps, most important first. The steps of a
group run at the same time (checks that do not time anything, beside the build); a benchmark runs
alone. Each step has a timeout (its budget) and the whole run a deadline, so it ends inside
TOTAL_BUDGET_S whatever hangs; a step whose needs failed is skipped with the reason. The report is
rewritten after every group and printed as a one-screen summary at the end, also when steps fail.

Only the standard library here: the plan, the budget logic and the report writer run anywhere.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WHEEL_LIST = ROOT / "bench" / "gpu_wheels.txt"
WHEEL_DIR = ROOT / ".whl"                 # what travels (carry=[".whl"]): one <group>.tar.xz per group
SITES = {"common": "/tmp/fgp-site",       # on every step's PYTHONPATH
         "stream": "/tmp/fgp-site-stream",  # numpy 1.26 + MediaPipe + the server: the stream step only
         "fallback": "/tmp/fgp-site-fallback"}  # pytest, ninja: only where the machine lacks them
TOTAL_BUDGET_S = 470      # the whole run, build included: under 8 minutes
PREREQ_BUDGET_S = 20      # probes and unpacking the wheels
MIN_STEP_S = 10           # a step is not started with less time than this left
CARRY_LIMIT = 64 * 2**20  # the device tool's limit on the tree plus carried paths


# ------------------------------------------------------------------------------------------------
# the plan


@dataclass
class Step:
    name: str
    what: str
    budget: int                       # seconds: the step's timeout
    argv: list[str]
    needs: tuple[str, ...] = ()       # facts (see probe) or names of steps that must have passed
    env: dict[str, str] = field(default_factory=dict)
    sites: tuple[str, ...] = ("common",)
    result: str | None = None         # the JSON file it writes (in the work directory)
    kind: str = "run"                 # how its log is read: run, pytest, sanitizer


@dataclass
class Group:
    name: str
    steps: list[Step]

    @property
    def budget(self) -> int:
        return max(s.budget for s in self.steps)


def plan(work: Path, python: str = "python3") -> list[Group]:
    """The steps, grouped, in order. Paths of results and scratch files are under ``work``."""
    res = lambda name: str(work / "results" / f"{name}.json")  # noqa: E731
    py = [python]
    blocking = {"CUDA_LAUNCH_BLOCKING": "1"}       # a kernel fault fails the launch that made it
    no_pool = {**blocking, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}  # every tensor its own cudaMalloc
    sanitize = ["{sanitizer}", "--error-exitcode", "3", "--print-limit", "30"]
    case = "bench/cuda_sanitize_case.py"
    pytest = py + ["-m", "pytest", "-q", "--maxfail=10"]
    weights = str(work / "stream-weights")
    return [
        Group("setup", [
            Step("build", "CUDA + C++ extensions (ninja, TORCH_CUDA_ARCH_LIST or the card's arch)", 100,
                 py + [__file__, "--build", str(work / "build"), "--result", res("build")],
                 needs=("gpu", "nvcc", "python_h"), result=res("build")),
            Step("triton_tests", "tests/test_triton.py compiled on CUDA", 100,
                 pytest + ["tests/test_triton.py"], needs=("gpu", "pytest"),
                 env={**blocking, "FGP_TRITON_TEST_DEVICE": "cuda"}, kind="pytest"),
            Step("compile_warm", "torch.compile of the SD1.5 step, once (cold compile; fills the cache)", 100,
                 py + ["bench/bench_diffusion.py", "--compile-only", "--json", res("compile_warm")],
                 needs=("gpu", "wheels:common"), result=res("compile_warm")),
            Step("stream_weights", "random SD1.5-size weights for the stream step (fp16)", 100,
                 py + ["bench/bench_stream.py", "--prepare-weights", weights, "--steps", "2"],
                 needs=("wheels:common",)),
        ]),
        Group("correctness", [
            Step("cuda_tests", "tests/test_native_cuda.py", 60, pytest + ["tests/test_native_cuda.py"],
                 needs=("build", "pytest"), env=blocking, kind="pytest"),
            Step("parity", "cuda == cpp bit for bit (ICT 128², N=4), refit, random cases vs reference", 60,
                 py + ["bench/cuda_parity.py", "--json", res("parity")], needs=("build",), env=blocking,
                 result=res("parity")),
            Step("memcheck", "compute-sanitizer memcheck, caching allocator off", 60,
                 sanitize + ["--tool", "memcheck"] + py + [case], needs=("build", "sanitizer"), env=no_pool,
                 kind="sanitizer"),
            Step("initcheck", "compute-sanitizer initcheck, caching allocator off", 60,
                 sanitize + ["--tool", "initcheck"] + py + [case], needs=("build", "sanitizer"), env=no_pool,
                 kind="sanitizer"),
            Step("racecheck", "compute-sanitizer racecheck on the refit kernel", 60,
                 sanitize + ["--tool", "racecheck", "--kernel-name", "kns=refit_kernel"] + py + [case, "--refit"],
                 needs=("build", "sanitizer"), env=blocking, kind="sanitizer"),
            Step("racecheck_flow", "compute-sanitizer racecheck on the flow kernel (block-shared list)", 45,
                 sanitize + ["--tool", "racecheck", "--kernel-name", "kns=flow_kernel"] + py + [case, "--flow"],
                 needs=("build", "sanitizer"), env=blocking, kind="sanitizer"),
            Step("synccheck_flow", "compute-sanitizer synccheck on the flow kernel (its barriers)", 45,
                 sanitize + ["--tool", "synccheck", "--kernel-name", "kns=flow_kernel"] + py + [case, "--flow"],
                 needs=("build", "sanitizer"), env=blocking, kind="sanitizer"),
        ]),
        # HOOK (issue 16 item 2): the native engineer is adding the CUDA-graph replay and the per-kernel
        # split (refit, raster, encode) to bench_flow.py's --device cuda path; add their flags here if
        # they are not on by default.
        Group("flow_bench", [
            Step("flow_bench", "flow encode 512², N=20, ICT + FLAME-sized: cuda, triton, brute force", 45,
                 py + ["bench/bench_flow.py", "--device", "cuda", "--mesh", "both", "--repeat", "50",
                       "--json", res("flow_bench")], needs=("build",), result=res("flow_bench")),
        ]),
        Group("triton_bench", [
            Step("triton_bench", "Triton encoder vs cuda and the reference (ICT 512², N=20)", 35,
                 py + ["bench/bench_triton.py", "--repeat", "50", "--json", res("triton_bench")],
                 needs=("gpu",), result=res("triton_bench")),
        ]),
        Group("diffusion", [
            Step("diffusion", "SD1.5 step eager/graph/channels_last/compile, decode, end-to-end fps, memory", 75,
                 py + ["bench/bench_diffusion.py", "--compile", "--json", res("diffusion")],
                 needs=("gpu", "wheels:common"), result=res("diffusion")),
        ]),
        Group("stream", [
            Step("stream", "fgp serve, diffusion renderer 512², 2 steps, through the socket", 65,
                 py + ["bench/bench_stream.py", "--sizes", "512", "--seconds", "5", "--renderer", "diffusion",
                       "--steps", "2", "--weights", weights, "--json", res("stream")],
                 needs=("gpu", "wheels:stream", "stream_weights"), sites=("stream", "common"), result=res("stream")),
        ]),
        Group("train", [
            Step("train", "training stages 1 and 2 at SD1.5 size, bf16 + checkpointing, batch 1 and 4", 50,
                 py + ["bench/bench_train.py", "--stages", "1,2", "--batches", "1,4", "--steps", "3",
                       "--frames", "8", "--json", res("train")],
                 needs=("gpu", "wheels:common"), result=res("train")),
        ]),
    ]


def planned_seconds(groups: list[Group]) -> int:
    """The wall-clock budget of the plan: the probes plus each group's longest step."""
    return PREREQ_BUDGET_S + sum(g.budget for g in groups)


def select(groups: list[Group], only: set[str] | None, skip: set[str]) -> list[Group]:
    """The groups restricted to ``only`` (plus the steps they need), minus ``skip``."""
    steps = {s.name: s for g in groups for s in g.steps}
    unknown = ((only or set()) | skip) - set(steps)
    if unknown:
        raise SystemExit(f"unknown step(s): {', '.join(sorted(unknown))}; the steps are {', '.join(steps)}")
    keep = set(steps) if only is None else set()
    todo = list(only or ())
    while todo:
        name = todo.pop()
        if name not in keep:
            keep.add(name)
            todo += [n for n in steps[name].needs if n in steps]
    keep -= skip
    return [Group(g.name, [s for s in g.steps if s.name in keep]) for g in groups
            if any(s.name in keep for s in g.steps)]


# ------------------------------------------------------------------------------------------------
# prerequisites


def _run(argv, timeout=60, **kw) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    except (OSError, subprocess.TimeoutExpired):
        return None


def find_cuda_home() -> str | None:
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if home and Path(home, "bin", "nvcc").exists():
            return home
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()   # /usr/local/bin/nvcc may be a wrapper: ask nvcc where it lives
        out = _run([nvcc, "-dryrun", "-c", "-x", "cu", "/dev/null", "-o", "/dev/null"], 20)
        top = next((line.split("=", 1)[1] for line in ((out.stdout + out.stderr).splitlines() if out else [])
                    if line.startswith("#$ TOP=")), "")
        if top and Path(top, "bin", "nvcc").exists():
            return str(Path(top).resolve())
        return str(real.parent.parent)
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda"
    return None


TORCH_PROBE = r"""
import json, torch
info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "gpu_available": torch.cuda.is_available()}
if info["gpu_available"]:
    info["gpu_name"] = torch.cuda.get_device_name(0)
    info["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    info["gpu_count"] = torch.cuda.device_count()
try:
    import triton
    info["triton"] = triton.__version__
except Exception as exc:
    info["triton"] = None
print(json.dumps(info))
"""


def probe(python: str = sys.executable) -> dict:
    """What this machine has. Facts named in Step.needs are booleans; the rest describe it."""
    f: dict = {"python": sys.version.split()[0], "python_exe": python}
    f["python_ok"] = sys.version_info >= (3, 10)
    f["python_h"] = Path(sysconfig.get_paths()["include"], "Python.h").is_file()
    f["cuda_home"] = find_cuda_home()
    f["nvcc"] = bool(f["cuda_home"])
    if f["nvcc"]:
        out = _run([str(Path(f["cuda_home"], "bin", "nvcc")), "--version"], 20)
        f["nvcc_version"] = next((line.split(",")[-1].strip() for line in (out.stdout if out else "").splitlines()
                                  if "release" in line), "nvcc ?")
    smi = shutil.which("nvidia-smi")
    f["nvidia_smi"] = bool(smi)
    gpus = []
    if smi:
        out = _run([smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 20)
        if out and out.returncode == 0:
            gpus = [line.strip() for line in out.stdout.splitlines() if line.strip()]
        f["nvidia_smi_error"] = None if gpus else ((out.stderr or out.stdout).strip()[:300] if out else "no answer")
    f["gpus"] = gpus
    out = _run([python, "-c", TORCH_PROBE], 90)
    try:
        f.update(json.loads(out.stdout.strip().splitlines()[-1]))
    except (AttributeError, IndexError, json.JSONDecodeError):
        f["torch"] = None
        f["torch_error"] = (out.stderr.strip()[-500:] if out else "torch probe timed out")
        f["gpu_available"] = False
    f["gpu"] = bool(gpus) and bool(f.get("gpu_available"))
    f["pytest"] = importlib.util.find_spec("pytest") is not None
    f["ninja"] = shutil.which("ninja") is not None
    sanitizer = shutil.which("compute-sanitizer")
    for cand in ([f"{f['cuda_home']}/bin/compute-sanitizer", f"{f['cuda_home']}/compute-sanitizer/compute-sanitizer"]
                 if f["cuda_home"] else []):
        if not sanitizer and Path(cand).exists():
            sanitizer = cand
    f["sanitizer_path"] = sanitizer
    f["sanitizer"] = bool(sanitizer)
    for group in SITES:
        f[f"wheels:{group}"] = (WHEEL_DIR / f"{group}.tar.xz").is_file()
    return f


MISSING_HINTS = {
    "python_ok": "Python >= 3.10 (python3 here is {python})",
    "python_h": "Python.h (the Python headers: python3-dev) for building the extensions",
    "nvcc": "nvcc (CUDA toolkit; set CUDA_HOME) for building the CUDA extension",
    "nvidia_smi": "nvidia-smi (the NVIDIA driver)",
    "gpu": "a GPU that nvidia-smi lists and torch can use",
    "pytest": "pytest (carry it: bench/gpu_wheels.txt [fallback])",
    "sanitizer": "compute-sanitizer (CUDA toolkit) for memcheck/initcheck/racecheck",
    "wheels:common": "the carried wheels .whl/common.tar.xz (bash bench/fetch_gpu_wheels.sh, carry=[\".whl\"])",
    "wheels:stream": "the carried wheels .whl/stream.tar.xz (bash bench/fetch_gpu_wheels.sh, carry=[\".whl\"])",
}
FATAL = ("python_ok", "nvidia_smi", "gpu")


def missing(facts: dict) -> list[str]:
    out = []
    for key, hint in MISSING_HINTS.items():
        if not facts.get(key):
            detail = ""
            if key == "gpu":
                detail = (f": nvidia-smi: {facts.get('nvidia_smi_error') or ', '.join(facts['gpus']) or 'absent'}; "
                          f"torch {facts.get('torch')} (CUDA {facts.get('torch_cuda')}) "
                          f"sees a GPU: {facts.get('gpu_available')}" + (f"; {facts['torch_error']}"
                                                                          if facts.get("torch_error") else ""))
            out.append(f"{key}: {hint.format(**facts)}{detail}")
    return out


# ------------------------------------------------------------------------------------------------
# carried wheels: one tar.xz of unzipped wheels per group (xz packs the big binary wheels ~25 %
# smaller than the wheels' own zip, which is what makes MediaPipe + numpy 1.26 fit in 64 MiB)


def read_wheel_list(path: Path = WHEEL_LIST) -> dict[str, list[str]]:
    """{group: ["name==version", ...]} from bench/gpu_wheels.txt (sections [common], [stream], [fallback])."""
    groups: dict[str, list[str]] = {}
    current = None
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"\[(\w+)\]", line)
        if m:
            current = m.group(1)
            if current not in SITES:
                raise ValueError(f"{path}:{n}: unknown group [{current}] (known: {', '.join(SITES)})")
            groups.setdefault(current, [])
        elif current is None:
            raise ValueError(f"{path}:{n}: {line!r} before any [group]")
        elif not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*==[A-Za-z0-9_.+!\-]+", line):
            raise ValueError(f"{path}:{n}: {line!r} is not an exact pin name==version")
        else:
            groups[current].append(line)
    return groups


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_pin(filename: str) -> str:
    """'numpy-1.26.4-cp312-....whl' -> 'numpy==1.26.4' (normalised name)."""
    name, version = Path(filename).name.split("-")[:2]
    return f"{_norm(name)}=={version}"


def pack_wheels(download: Path, dest: Path, groups: dict[str, list[str]] | None = None) -> dict[str, int]:
    """Each download/<group>/*.whl (exactly the pins of that group) unzipped into dest/<group>.tar.xz."""
    groups = read_wheel_list() if groups is None else groups
    dest.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for group, pins in groups.items():
        wheels = sorted((download / group).glob("*.whl"))
        got = {wheel_pin(w.name): w for w in wheels}
        want = {f"{_norm(p.split('==')[0])}=={p.split('==')[1]}" for p in pins}
        if set(got) != want:
            raise SystemExit(f"[{group}]: wheels {sorted(got)} do not match the pins {sorted(want)}: "
                             f"missing {sorted(want - set(got))}, extra {sorted(set(got) - want)}")
        tmp = dest / f".{group}.tar.xz.tmp"
        manifest = []
        with tarfile.open(tmp, "w:xz", preset=6) as tar:
            seen = set()
            for w in wheels:
                manifest.append({"wheel": w.name, "sha256": hashlib.sha256(w.read_bytes()).hexdigest()})
                with zipfile.ZipFile(w) as zf:
                    for info in zf.infolist():
                        if info.is_dir() or info.filename in seen:
                            continue
                        seen.add(info.filename)
                        ti = tarfile.TarInfo(info.filename)
                        ti.size = info.file_size
                        ti.mode = 0o755 if (info.external_attr >> 16) & 0o111 else 0o644
                        with zf.open(info) as fh:
                            tar.addfile(ti, fh)
            blob = json.dumps(manifest, indent=1).encode()
            ti = tarfile.TarInfo("fgp-wheels.json")
            ti.size = len(blob)
            tar.addfile(ti, io.BytesIO(blob))
        os.replace(tmp, dest / f"{group}.tar.xz")
        sizes[group] = (dest / f"{group}.tar.xz").stat().st_size
    return sizes


def unpack_wheels(src: Path | None = None, sites: dict[str, str] | None = None) -> dict[str, list[str]]:
    """src/<group>.tar.xz -> the group's site directory (fresh); loose src/*.whl go to the common one."""
    src, sites, done = src or WHEEL_DIR, sites or SITES, {}
    for group, site in sites.items():
        archive = src / f"{group}.tar.xz"
        if not archive.is_file():
            continue
        shutil.rmtree(site, ignore_errors=True)
        with tarfile.open(archive, "r:xz") as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(site, filter="data")
            else:  # Python < 3.11.4: our own archive, written by pack_wheels
                tar.extractall(site)
        manifest = Path(site, "fgp-wheels.json")
        done[group] = [m["wheel"] for m in json.loads(manifest.read_text())] if manifest.is_file() else []
    for wheel in sorted(src.glob("*.whl")):   # extra wheels carried loose
        Path(sites["common"]).mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(sites["common"])
        done.setdefault("loose", []).append(wheel.name)
    return done


# ------------------------------------------------------------------------------------------------
# the build (a step of its own: gpu_all.py --build DIR)


def build(work: Path, result: Path) -> int:
    """setup.py build_ext into ``work`` (ninja, MAX_JOBS = the CPU count), then move the
    modules into fgp_fast/ atomically (steps running beside the build never see half a file), then
    check in a fresh interpreter that both backends load."""
    t0 = time.perf_counter()
    env = dict(os.environ, FGP_BUILD_CUDA="1", MAX_JOBS=os.environ.get("MAX_JOBS", str(os.cpu_count() or 4)))
    print(f"TORCH_CUDA_ARCH_LIST={env.get('TORCH_CUDA_ARCH_LIST', '(setup.py default)')} MAX_JOBS={env['MAX_JOBS']} "
          f"ninja={shutil.which('ninja')}", flush=True)
    # one extension after the other (no build_ext -j: torch writes each one's build.ninja into the
    # same build-temp folder); ninja compiles the files of each in parallel
    argv = [sys.executable, "setup.py", "build_ext", "--build-temp", str(work / "temp"), "--build-lib", str(work / "lib")]
    rc = subprocess.call(argv, cwd=ROOT, env=env)
    info = {"seconds": round(time.perf_counter() - t0, 1), "rc": rc,
            "arch_list": env.get("TORCH_CUDA_ARCH_LIST"), "ninja": shutil.which("ninja") is not None}
    if rc == 0:
        built = sorted((work / "lib" / "fgp_fast").glob("_C*.so"))
        for so in built:
            tmp = ROOT / "fgp_fast" / f".{so.name}.tmp"
            shutil.copy2(so, tmp)
            os.replace(tmp, ROOT / "fgp_fast" / so.name)
        info["modules"] = [so.name for so in built]
        check = _run([sys.executable, "-c", "from fgp_fast.ops import native; import json; print(json.dumps("
                      "{'cpp': native.cpp_unavailable_reason('cpu'), 'cuda': native.cuda_unavailable_reason('cuda')}))"],
                     120, cwd=ROOT, env=env)
        try:
            loaded = json.loads(check.stdout.strip().splitlines()[-1])
        except (AttributeError, IndexError, json.JSONDecodeError):
            loaded = {"cpp": "check failed", "cuda": (check.stderr[-500:] if check else "check timed out")}
        info["cpp_backend"] = loaded["cpp"] or "available"
        info["cuda_backend"] = loaded["cuda"] or "available"
        print(f"cpp backend: {info['cpp_backend']}; cuda backend: {info['cuda_backend']}")
        rc = 0 if loaded["cpp"] is None and loaded["cuda"] is None else 1
        if rc:
            print(f"error: built, but a backend does not load: cpp {info['cpp_backend']}; cuda {info['cuda_backend']}")
    result.write_text(json.dumps(info, indent=1))
    return rc


# ------------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    name: str
    group: str
    what: str
    budget_s: int
    status: str = "planned"          # planned, pass, fail, timeout, partial, skipped
    reason: str = ""
    rc: int | None = None
    seconds: float | None = None
    timeout_s: float | None = None   # the timeout it ran under (the budget, or less near the deadline)
    result: dict | list | None = None
    log_tail: str = ""


def step_env(step: Step, facts: dict, work: Path, sites: dict[str, str] | None = None) -> dict[str, str]:
    sites, env = sites or SITES, dict(os.environ)
    paths = [str(ROOT)] + [sites[s] for s in step.sites if Path(sites[s]).is_dir()]
    if facts.get("pytest_from_fallback"):
        paths.append(sites["fallback"])
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    ninja = sorted(Path(sites["fallback"]).glob("ninja-*.data/scripts/ninja"))  # the wheel's binary
    if not facts.get("ninja") and ninja:
        env["PATH"] = f"{ninja[-1].parent}{os.pathsep}{env.get('PATH', '')}"
    if facts.get("cuda_home"):
        env["CUDA_HOME"] = facts["cuda_home"]
    if step.name == "build" and facts.get("capability") and "TORCH_CUDA_ARCH_LIST" not in env:
        env["TORCH_CUDA_ARCH_LIST"] = facts["capability"]   # the card's own arch only: the shortest build
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", MPLBACKEND="Agg",
               PYTEST_ADDOPTS="-p no:cacheprovider", TRITON_CACHE_DIR=str(work / "triton-cache"),
               TORCHINDUCTOR_CACHE_DIR=str(work / "inductor-cache"))
    env.update(step.env)
    return env


def resolve_argv(step: Step, facts: dict) -> list[str]:
    return [facts.get("sanitizer_path") or "compute-sanitizer" if a == "{sanitizer}" else a for a in step.argv]


def unmet(step: Step, facts: dict, outcomes: dict[str, Outcome]) -> str | None:
    """Why ``step`` cannot run (a missing fact, or a needed step that did not pass), or None."""
    for need in step.needs:
        if need in outcomes:
            if outcomes[need].status != "pass":
                return f"needs {need} ({outcomes[need].status})"
        elif need in MISSING_HINTS and not facts.get(need):
            return f"missing {need}"
    return None


def _kill(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_group(group: Group, facts: dict, work: Path, outcomes: dict[str, Outcome], deadline: float,
              log=print) -> None:
    """Start every runnable step of the group at once; each ends by itself or at its timeout."""
    running = []
    try:
        _start_and_wait(group, facts, work, outcomes, deadline, log, running)
    finally:  # interrupted: no step outlives the run
        for _, proc, logfile, _ in running:
            _kill(proc)
            logfile.close()


def _start_and_wait(group, facts, work, outcomes, deadline, log, running) -> None:
    for step in group.steps:
        out = outcomes[step.name]
        why = unmet(step, facts, outcomes)
        left = deadline - time.monotonic()
        if why is None and left < min(MIN_STEP_S, step.budget):
            why = f"no time left ({left:.0f} s of the {TOTAL_BUDGET_S} s run)"
        if why is not None:
            out.status, out.reason = "skipped", why
            log(f"-- {step.name}: skipped, {why}")
            continue
        out.timeout_s = round(min(step.budget, left), 1)
        logfile = open(work / "logs" / f"{step.name}.log", "w")
        argv = resolve_argv(step, facts)
        logfile.write(f"$ {' '.join(argv)}\n")
        logfile.flush()
        try:
            proc = subprocess.Popen(argv, cwd=ROOT, env=step_env(step, facts, work), stdout=logfile,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            logfile.close()
            out.status, out.reason, out.seconds = "fail", f"could not start: {exc}", 0.0
            log(f"-- {step.name}: {out.reason}")
            continue
        log(f"-> {step.name} (timeout {out.timeout_s:.0f} s): {step.what}")
        running.append((step, proc, logfile, time.monotonic()))
    while running:
        time.sleep(0.2)
        for item in list(running):
            step, proc, logfile, t0 = item
            out = outcomes[step.name]
            timed_out = proc.poll() is None and time.monotonic() - t0 > out.timeout_s
            if proc.poll() is None and not timed_out:
                continue
            _kill(proc)   # at its timeout; or what it left running (a server, compile workers)
            logfile.close()
            running.remove(item)
            out.seconds, out.rc = round(time.monotonic() - t0, 1), proc.returncode
            finish(step, out, work, timed_out)
            log(f"<- {step.name}: {out.status} in {out.seconds:.0f} s{': ' + out.reason if out.reason else ''}")


def finish(step: Step, out: Outcome, work: Path, timed_out: bool) -> None:
    """Status, reason and result of a step that ended, from its exit status, log and JSON."""
    text = (work / "logs" / f"{step.name}.log").read_text(errors="replace")
    out.log_tail = "\n".join(text.splitlines()[-40:])[-4000:]
    if step.result and Path(step.result).is_file():
        try:
            out.result = json.loads(Path(step.result).read_text())
        except json.JSONDecodeError as exc:
            out.reason = f"unreadable result JSON: {exc}"
    if step.kind == "pytest":
        out.result = parse_pytest(text)
    elif step.kind == "sanitizer":
        out.result = parse_sanitizer(text)
    if timed_out:   # what a benchmark's JSON already holds is kept
        out.status = "partial" if step.kind == "run" and out.result else "timeout"
        out.reason = out.reason or f"killed after {out.timeout_s:.0f} s"
    elif step.kind == "sanitizer" and out.result.get("errors"):
        first = out.result["first_reports"][:1]
        out.status, out.reason = "fail", f"{out.result['errors']} sanitizer errors" + (f": {first[0]}" if first else "")
    elif out.rc != 0:
        out.status = "fail"
        out.reason = out.reason or last_error(text) or f"exit status {out.rc}"
    elif step.kind == "pytest" and not out.result.get("passed"):
        out.status, out.reason = "fail", "no test passed (all skipped?): " + "; ".join(out.result.get("skips", []))
    elif step.kind == "sanitizer" and out.result.get("errors") is None:
        out.status, out.reason = "fail", "no sanitizer summary in the log"
    else:
        out.status = "pass"


def parse_pytest(text: str) -> dict:
    counts = {}
    tail = text.splitlines()[-5:]
    for line in tail:
        for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)", line):
            counts["errors" if word.startswith("error") else word] = int(n)
    counts["skips"] = [line.strip()[:200] for line in text.splitlines() if line.startswith("SKIPPED")][:3]
    counts["failures"] = [line.strip()[:200] for line in text.splitlines() if line.startswith(("FAILED", "ERROR "))][:10]
    return counts


def parse_sanitizer(text: str) -> dict:
    m = re.search(r"(?:ERROR|RACECHECK) SUMMARY: (\d+) (?:errors?|hazards?)", text)
    reports = [line.strip()[:200] for line in text.splitlines()
               if re.match(r"=========\s+(Invalid|Uninitialized|Race|Error|Program hit|Unused|Host API|at )", line)]
    return {"errors": int(m.group(1)) if m else None, "first_reports": reports[:12],
            "case_ok": "sanitizer case ok" in text}


def last_error(text: str) -> str:
    """The last line that looks like an error (Python exception, compiler error, FAILED), shortened."""
    for line in reversed(text.splitlines()):
        s = line.strip()
        if (re.match(r"^([A-Za-z_.]*(Error|Exception)\b|error:|FAILED|SystemExit|=+\s*Error)", s)
                or " error: " in s):
            return s[:240]
    return ""


# ------------------------------------------------------------------------------------------------
# the report


def headline(out: Outcome) -> str:
    """One line of the figures that matter most for a step."""
    r = out.result
    try:
        if out.name == "build" and isinstance(r, dict):
            return (f"cuda {r.get('cuda_backend', '?')}, cpp {r.get('cpp_backend', '?')}; archs {r.get('arch_list')}; "
                    f"{r.get('seconds')} s, ninja {r.get('ninja')}")
        if out.name.endswith("_tests") and isinstance(r, dict):
            return ", ".join(f"{r[k]} {k}" for k in ("passed", "failed", "errors", "skipped") if r.get(k))
        if isinstance(r, dict) and "first_reports" in r:
            return f"{r['errors']} errors" + (f"; {r['first_reports'][0]}" if r["first_reports"] else "")
        if out.name == "parity" and isinstance(r, dict):
            bad = [c["case"] for c in r["cases"] if not c["ok"]]
            return f"{r['total'] - r['failed']}/{r['total']} ok" + (f"; failing: {'; '.join(bad)[:150]}" if bad else "")
        if out.name in ("flow_bench", "triton_bench") and isinstance(r, list):
            return "; ".join(f"{row.get('mesh', '')[:5]} {row['method'][:28]} {row['ms_per_frame']:.3g} ms"
                             for row in r if "ms_per_frame" in row)[:230]
        if out.name == "diffusion" and isinstance(r, dict):
            keys = ("step_graph_channels_last_ms_with_reference", "end_to_end_fps_1_steps",
                    "end_to_end_fps_2_steps", "end_to_end_fps_4_steps", "peak_mem_GiB_end_to_end_2_steps",
                    "step_compiled_ms_with_reference")
            return ", ".join(f"{k}={r[k]:.3g}" for k in keys if isinstance(r.get(k), (int, float)))
        if out.name == "compile_warm" and isinstance(r, dict):
            return f"first torch.compile call {r.get('step_compile_s_first')} s"
        if out.name == "stream" and isinstance(r, list):
            return "; ".join(f"{x['size']}² {x['mode']} {x['fps_out']:.1f} fps p50 {x['p50_ms']:.0f} p95 "
                             f"{x['p95_ms']:.0f} ms" for x in r)
        if out.name == "train" and isinstance(r, dict):
            return "; ".join(f"s{st} B{b} {e.get('step_ms', e.get('error'))} ms {e.get('peak_mem_GiB', '')} GiB"
                             for st, d in r["stages"].items() for b, e in d["batches"].items())
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        return f"(result not summarised: {type(exc).__name__}: {exc})"
    return ""


def flatten(obj, prefix: str = "") -> dict:
    if isinstance(obj, dict):
        flat = {}
        for k, v in obj.items():
            flat.update(flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix[:-1]: obj}


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|").replace("\n", " ")[:120]


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [f"# gpu_all: {report['status']}", "",
             f"{', '.join(m.get('gpus') or ['no GPU'])}; torch {m.get('torch')} (CUDA {m.get('torch_cuda')}), "
             f"triton {m.get('triton')}, {m.get('nvcc_version', 'no nvcc')}; Python {m.get('python')}. "
             f"Started {report['started']}, {report['wall_s']} s of the {report['budget_s']} s budget"
             f"{' (dry run: nothing ran)' if report['dry_run'] else ''}.", ""]
    if report["missing"]:
        lines += ["Missing here:", ""] + [f"- {x}" for x in report["missing"]] + [""]
    lines += ["| step | status | s / budget | figures or reason |", "|---|---|---|---|"]
    for o in report["steps"]:
        secs = "-" if o["seconds"] is None else f"{o['seconds']:.0f}"
        note = (o["headline"] or o["what"] if o["status"] in ("pass", "planned") else
                f"{o['headline']} ({o['reason']})" if o["status"] == "partial" else o["reason"])
        lines.append(f"| {o['name']} | {o['status']} | {secs} / {o['budget_s']} | {_cell(note) if note else ''} |")
    for o in report["steps"]:
        r = o["result"]
        quiet = o["name"] == "build" or o["name"].endswith("_tests") or isinstance(r, dict) and r.get("errors") == 0
        if not r or quiet:   # their headline says it all
            continue
        lines += ["", f"## {o['name']}", ""]
        rows = r if isinstance(r, list) else r.get("cases") if isinstance(r, dict) and "cases" in r else None
        if rows and all(isinstance(x, dict) for x in rows):
            flat = [flatten(x) for x in rows]
            cols = list(dict.fromkeys(k for x in flat for k in x))[:10]
            lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(_cell(x.get(c, "")) for c in cols) + " |" for x in flat]
        else:
            lines += ["| key | value |", "|---|---|"]
            lines += [f"| {k} | {_cell(v)} |" for k, v in flatten(r).items()]
    return "\n".join(lines) + "\n"


def build_report(outcomes: dict[str, Outcome], facts: dict, started: str, wall: float, dry_run: bool) -> dict:
    steps = []
    for o in outcomes.values():
        d = asdict(o)
        d["headline"] = headline(o)
        steps.append(d)
    miss = missing(facts)
    fatal = [x for x in miss if x.split(":")[0] in FATAL]
    states = {o.status for o in outcomes.values()}
    status = ("dry run" if dry_run else "no GPU: stopped" if fatal else
              "all passed" if states <= {"pass"} else
              "incomplete" if states & {"planned"} else "failures")
    return {"schema": 1, "status": status, "started": started, "wall_s": round(wall, 1),
            "budget_s": TOTAL_BUDGET_S, "dry_run": dry_run, "machine": facts, "missing": miss, "steps": steps}


def write_report(outdir: Path, report: dict, work: Path | None) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    (outdir / "gpu_all.json").write_text(json.dumps(report, indent=1, default=str))
    (outdir / "gpu_all.md").write_text(markdown(report))
    if work is None or not (work / "logs").is_dir():
        return
    with open(outdir / "gpu_all.log", "w") as fh:   # every log's end, in plan order
        for o in report["steps"]:
            path = work / "logs" / f"{o['name']}.log"
            if path.is_file():
                lines = path.read_text(errors="replace").splitlines()
                fh.write(f"\n===== {o['name']}: {o['status']} ({len(lines)} lines, last 150)\n")
                fh.write("\n".join(lines[-150:]) + "\n")
    with tarfile.open(outdir / "logs.tar.gz", "w:gz") as tar:   # the whole logs
        for path in sorted((work / "logs").glob("*.log")):
            if path.stat().st_size <= 8 * 2**20:
                tar.add(path, arcname=f"logs/{path.name}")


def summary(report: dict, outdir: Path) -> str:
    lines = [f"==== gpu_all: {report['status']} in {report['wall_s']:.0f} s (budget {report['budget_s']} s) on "
             f"{', '.join(report['machine'].get('gpus') or ['no GPU'])}"]
    reasons = {(o["status"], o["reason"]) for o in report["steps"]}
    if len(report["steps"]) > 1 and len(reasons) == 1 and report["steps"][0]["status"] == "skipped":
        lines.append(f"all {len(report['steps'])} steps skipped: {report['steps'][0]['reason']}")
    else:
        for o in report["steps"]:
            secs = "-" if o["seconds"] is None else f"{o['seconds']:.0f}"
            note = o["headline"] if o["status"] in ("pass", "partial") else o["reason"] or o["headline"]
            lines.append(f"{o['name']:15s} {o['status']:8s} {secs:>4s}/{o['budget_s']:<4d} {note}"[:200])
    for x in report["missing"]:
        lines.append(f"missing: {x}"[:200])
    lines.append(f"report: {outdir}/gpu_all.md, gpu_all.json; logs: gpu_all.log, logs.tar.gz")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", nargs="?", default=None, help="where the report goes (default $OUT/gpu or ./gpu_all_out)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and budgets, write a planned report")
    ap.add_argument("--only", default=None, help="comma list of steps (with the steps they need)")
    ap.add_argument("--skip", default="", help="comma list of steps to leave out")
    ap.add_argument("--build", metavar="DIR", help=argparse.SUPPRESS)       # the build step itself
    ap.add_argument("--result", metavar="JSON", help=argparse.SUPPRESS)
    ap.add_argument("--wheel-list", metavar="GROUP", help="print the pins of one wheel group (for fetch_gpu_wheels.sh)")
    ap.add_argument("--pack-wheels", nargs=2, metavar=("DOWNLOAD", "DEST"), help="pack downloaded wheels per group")
    args = ap.parse_args(argv)
    if args.build:
        return build(Path(args.build), Path(args.result))
    if args.wheel_list:
        print("\n".join(read_wheel_list().get(args.wheel_list, [])))
        return 0
    if args.pack_wheels:
        for group, size in pack_wheels(Path(args.pack_wheels[0]), Path(args.pack_wheels[1])).items():
            print(f"{args.pack_wheels[1]}/{group}.tar.xz {size / 2**20:.1f} MiB")
        return 0

    outdir = Path(args.outdir or (Path(os.environ["OUT"]) / "gpu" if os.environ.get("OUT") else ROOT / "gpu_all_out"))
    outdir = outdir.resolve()
    work = Path(tempfile.gettempdir()) / "fgp-gpu-all"
    groups = select(plan(work, sys.executable), set(args.only.split(",")) if args.only else None,
                    set(filter(None, args.skip.split(","))))
    started, t_start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic()
    deadline = t_start + TOTAL_BUDGET_S
    outcomes = {s.name: Outcome(s.name, g.name, s.what, s.budget) for g in groups for s in g.steps}
    print(f"gpu_all: {len(outcomes)} steps in {len(groups)} groups, planned {planned_seconds(groups)} s "
          f"(deadline {TOTAL_BUDGET_S} s); probing the machine", flush=True)
    facts = probe()
    miss = missing(facts)
    for x in miss:
        print(f"missing: {x}", flush=True)

    if args.dry_run:
        would = {}   # what a run here would do: a runnable step is assumed to pass
        for g in groups:
            print(f"[{g.name}] {g.budget} s" + (" (steps run at the same time)" if len(g.steps) > 1 else ""))
            for s in g.steps:
                why = unmet(s, facts, would)
                would[s.name] = Outcome(s.name, g.name, s.what, s.budget, status="skipped" if why else "pass")
                print(f"  {s.name:15s} {s.budget:4d} s  {s.what}" + (f"  [here: skipped, {why}]" if why else ""))
                print(f"  {'':15s}        needs {', '.join(s.needs) or '-'}; $ {' '.join(resolve_argv(s, facts))}")
        print(f"total: prerequisites {PREREQ_BUDGET_S} s + groups {sum(g.budget for g in groups)} s = "
              f"{planned_seconds(groups)} s planned, deadline {TOTAL_BUDGET_S} s")
        report = build_report(outcomes, facts, started, time.monotonic() - t_start, dry_run=True)
        write_report(outdir, report, None)
        print(f"planned report: {outdir}/gpu_all.md")
        return 0

    shutil.rmtree(work, ignore_errors=True)
    (work / "logs").mkdir(parents=True)
    (work / "results").mkdir()
    link = ROOT / "fgp_fast" / "kernels"   # the in-place tree: fgp_fast.kernels is kernels/ (installed by pip)
    made_link = not link.exists()
    if made_link:
        link.symlink_to("../kernels")
    stop = {"signal": None}

    def on_signal(signum, frame):
        stop["signal"] = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        if any(x.split(":")[0] in FATAL for x in miss):
            print("gpu_all: stopping: " + "; ".join(x for x in miss if x.split(":")[0] in FATAL), flush=True)
            for o in outcomes.values():
                o.status, o.reason = "skipped", "prerequisites missing (see above)"
            report = build_report(outcomes, facts, started, time.monotonic() - t_start, dry_run=False)
            write_report(outdir, report, work)
            print(summary(report, outdir))
            return 2
        t0 = time.monotonic()
        unpacked = unpack_wheels()
        facts["wheels_unpacked"] = unpacked
        facts["pytest_from_fallback"] = not facts["pytest"] and Path(SITES["fallback"], "pytest").is_dir()
        facts["pytest"] = facts["pytest"] or facts["pytest_from_fallback"]
        print(f"wheels unpacked in {time.monotonic() - t0:.1f} s: "
              + ("; ".join(f"{k}: {len(v)}" for k, v in unpacked.items()) or "none carried"), flush=True)
        for g in groups:
            print(f"[{g.name}] budget {g.budget} s, {deadline - time.monotonic():.0f} s left", flush=True)
            run_group(g, facts, work, outcomes, deadline, log=lambda s: print(s, flush=True))
            write_report(outdir, build_report(outcomes, facts, started, time.monotonic() - t_start, False), work)
    except KeyboardInterrupt:
        for o in outcomes.values():
            if o.status == "planned":
                o.status, o.reason = "skipped", f"gpu_all interrupted (signal {stop['signal'] or 'INT'})"
    finally:
        if made_link and link.is_symlink():
            link.unlink()
    report = build_report(outcomes, facts, started, time.monotonic() - t_start, dry_run=False)
    write_report(outdir, report, work)
    print(summary(report, outdir), flush=True)
    return 0 if report["status"] == "all passed" else 1


if __name__ == "__main__":
    sys.exit(main())
