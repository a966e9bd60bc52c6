"""Bad input: the corpus in testdata/bad-input (made by its make_corpus.py) and property-based fuzzing.

For every case and every fuzzed input: exit non-zero with one valid CNI error object carrying the
expected code (or the documented success), strict JSON on stdout, no traceback anywhere, and
nothing written outside dataDir and the device-info tree. Subprocess runs check the last part by
comparing the case's scratch folder before and after; in-process runs (cni.run with io
objects) record every write-like call through a Python audit hook.
"""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st

from deviceid_inject import cni
from deviceid_inject import config as configuration
from deviceid_inject.config import DEFAULT_DATA_DIR, DEFAULT_DEVICE_INFO_ROOT
from deviceid_inject.protocol import SUPPORTED_VERSIONS
from testbed import served
from testbed.harness import base_env
from testbed.helpers import (
    SYSFS,
    TESTDATA,
    Impl,
    cni_env,
    contract_violations,
    passed_through,
    plugin_command,
    run_plugin,
    strict_json,
)

pytestmark = [pytest.mark.badinput]

CORPUS = TESTDATA / "bad-input"
MANIFEST: list[dict[str, Any]] = json.loads((CORPUS / "manifest.json").read_text())
REGULAR = [case for case in MANIFEST if "bug" not in case]
VICTIM_TEXT = "nothing may touch this file\n"
WORKERS = 4  # plugin runs are CPU-bound: a few more than the CI's 2 cores keeps them busy


# --- writes, as an audit hook sees them (in-process runs) ------------------------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_PATH_EVENTS = {  # event: (indexes of path arguments, whether the call follows a final symlink)
    "os.mkdir": ((0,), False),
    "os.rename": ((0, 1), False),
    "os.replace": ((0, 1), False),
    "os.remove": ((0,), False),
    "os.rmdir": ((0,), False),
    "os.symlink": ((1,), False),
    "os.link": ((1,), False),
    "os.mkfifo": ((0,), False),
    "os.mknod": ((0,), False),
    "os.truncate": ((0,), True),
    "os.chmod": ((0,), True),
    "os.chown": ((0,), True),
    "os.utime": ((0,), True),
    "shutil.rmtree": ((0,), False),
    "shutil.copyfile": ((1,), True),
    "shutil.move": ((0, 1), False),
}
_SPAWN_EVENTS = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn")


def _where(path: Any, follow: bool) -> str | None:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, str):  # a file descriptor: judged when it was opened
        return None
    if not os.path.isabs(path):  # no normpath: '..' must be resolved as the kernel does
        path = os.path.join(os.getcwd(), path)
    head, tail = os.path.split(path.rstrip("/") or "/")
    if follow or tail in ("", ".", ".."):
        return os.path.realpath(path)
    return os.path.join(os.path.realpath(head), tail)


def _finds_a_library(event: str, args: tuple) -> bool:
    """pyudev finds libudev with ctypes.util.find_library, which runs `ldconfig -p`."""
    return event == "subprocess.Popen" and os.path.basename(str(args[0])) == "ldconfig"


class WriteRecorder:
    """Every write-like call the recording thread makes, with the path it would really touch."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.busy = False
        self.writes: list[tuple[str, str]] = []
        self.spawns: list[str] = []

    def hook(self, event: str, args: tuple) -> None:
        if self.thread != threading.get_ident() or self.busy:
            return
        self.busy = True
        try:
            if event == "open":
                path, _, flags = args
                if isinstance(flags, int) and flags & _WRITE_FLAGS:
                    self._add(event, path, follow=not flags & os.O_NOFOLLOW)
            elif event in _PATH_EVENTS:
                indexes, follow = _PATH_EVENTS[event]
                for index in indexes:
                    self._add(event, args[index], follow)
            elif event.startswith(_SPAWN_EVENTS) and not _finds_a_library(event, args):
                self.spawns.append(f"{event} {args!r:.200}")
        finally:
            self.busy = False

    def _add(self, event: str, path: Any, follow: bool) -> None:
        where = _where(path, follow)
        if where is not None:
            self.writes.append((event, where))

    @contextmanager
    def recording(self) -> Iterator[WriteRecorder]:
        self.writes, self.spawns = [], []
        self.thread = threading.get_ident()
        try:
            yield self
        finally:
            self.thread = None

    def outside(self, roots: list[str]) -> list[str]:
        """Writes outside every root (resolved); making a root's own parent folders is part of making it."""
        real_roots = [os.path.realpath(r) for r in roots]
        bad = []
        for event, where in self.writes:
            if "/__pycache__/" in where or where == os.devnull:  # bytecode caching; a child's stdio
                continue
            inside = any(where == r or where.startswith(r.rstrip("/") + "/") for r in real_roots)
            parent_of_root = event == "os.mkdir" and any(r.startswith(where.rstrip("/") + "/") for r in real_roots)
            if not (inside or parent_of_root):
                bad.append(f"{event} {where}")
        return bad + self.spawns


RECORDER = WriteRecorder()
sys.addaudithook(RECORDER.hook)


def run_in_process(environ: dict[str, str], stdin: bytes) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cni.run(environ, io.BytesIO(stdin), out, err)
    return code, out.getvalue(), err.getvalue()


# --- one corpus case --------------------------------------------------------------------------------------


@dataclass
class Scene:
    """A case made concrete in its own scratch folder."""

    case: dict[str, Any]
    base: Path
    stdin: bytes
    env: dict[str, str | None]
    roots: list[str]
    before: dict[str, tuple] = field(default_factory=dict)

    @property
    def command(self) -> str:
        return self.case["command"]

    def environ(self) -> dict[str, str]:
        """The environment run_plugin would give the plugin, for in-process runs."""
        return cni_env(self.command, **self.env)


def prepare(case: dict[str, Any], base: Path) -> Scene:
    assert not any(c in str(base) for c in '"\\@'), f"{base} cannot stand in a JSON string as is"
    places = {
        "@BASE@": str(base),
        "@DEVINFO@": str(base / "devinfo"),
        "@STATE@": str(base / "state"),
        "@SYSFS@": str(SYSFS),
    }

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    (base / "outside").mkdir(parents=True)
    (base / "outside" / "victim").write_text(VICTIM_TEXT)
    for op in case["setup"]:
        path = Path(fill(op["path"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        if op["op"] == "mkdir":
            path.mkdir(parents=True, exist_ok=True)
        elif op["op"] == "write":
            path.write_text(op["text"])
        elif op["op"] == "symlink":
            path.symlink_to(fill(op["target"]))
        elif op["op"] == "mkfifo":
            os.mkfifo(path)
        else:
            raise AssertionError(f"unknown setup op {op}")
    stdin = (CORPUS / case["stdin"]).read_bytes()
    for key, value in places.items():
        stdin = stdin.replace(key.encode(), value.encode())
    if "pad_to" in case:
        stdin += b" " * (case["pad_to"] - len(stdin))
    env = {k: (fill(v) if isinstance(v, str) else v) for k, v in case["env"].items()}
    scene = Scene(case, base, stdin, env, roots_of(stdin, base))
    scene.before = snapshot(base, scene.roots)
    return scene


def decoded(stdin: bytes) -> Any:
    """stdin as the plugin decodes it (strict UTF-8, then JSON), or None when it cannot."""
    try:
        return json.loads(stdin.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def roots_of(stdin: bytes, base: Path) -> list[str]:
    """The config's deviceInfoRoot and dataDir when it names usable ones, else the case's own."""
    roots = {"deviceInfoRoot": str(base / "devinfo"), "dataDir": str(base / "state")}
    conf = decoded(stdin)
    if isinstance(conf, dict):
        for key in roots:
            if isinstance(conf.get(key), str) and conf[key].startswith("/") and "\0" not in conf[key]:
                roots[key] = conf[key]
    return list(roots.values())


def snapshot(base: Path, roots: list[str]) -> dict[str, tuple]:
    """Everything under `base` outside the (resolved) roots: type, size, mode, mtime, link target."""
    real_roots = [os.path.realpath(r) for r in roots]
    seen: dict[str, tuple] = {}
    for folder, dirs, names in os.walk(base):
        keep = []
        for name in dirs + names:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if any(real == r or real.startswith(r + "/") for r in real_roots) and not os.path.islink(path):
                continue
            st_ = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st_.st_mode) else None
            seen[os.path.relpath(path, base)] = (st_.st_size, st_.st_mode, st_.st_mtime_ns, link)
            if name in dirs and not stat.S_ISLNK(st_.st_mode):
                keep.append(name)
        dirs[:] = keep
    return seen


def changed_outside(before: dict[str, tuple], after: dict[str, tuple], base: Path, roots: list[str]) -> list[str]:
    """What differs between two snapshots, but for new folders on the way to a root: making a root
    means making its parents."""
    real_roots = [os.path.realpath(r) for r in roots]
    changed = []
    for path in sorted(set(before) | set(after)):
        if before.get(path) == after.get(path):
            continue
        real = os.path.realpath(base / path)
        if path not in before and stat.S_ISDIR(after[path][1]) and any(r.startswith(real + "/") for r in real_roots):
            continue
        changed.append(f"{path}: {before.get(path)} -> {after.get(path)}")
    return changed


def judge(scene: Scene, code: int, stdout: str, stderr: str) -> list[str]:
    """Everything wrong with one run of a case; [] when it behaved."""
    problems = contract_violations(scene.command if "CNI_COMMAND" not in scene.env else "?", code, stdout, stderr)
    expect = scene.case["expect"]
    try:
        answer = strict_json(stdout) if stdout.strip() else None
    except ValueError:
        answer = None
    got = 0 if code == 0 else (answer or {}).get("code")
    if expect["exit"] == "ok" and code != 0:
        problems.append(f"expected success, got code {got}: {(answer or {}).get('msg', stdout[:300])}")
    elif expect["exit"] == "error" and (code == 0 or got not in expect["codes"]):
        problems.append(f"expected an error with code {expect['codes']}, got {'success' if code == 0 else got}")
    elif expect["exit"] == "either" and code != 0 and got not in expect["codes"]:
        problems.append(f"expected success or code {expect['codes']}, got {got}")
    if (scene.base / "outside" / "victim").read_text() != VICTIM_TEXT:
        problems.append("the victim file outside the roots changed")
    changed = changed_outside(scene.before, snapshot(scene.base, scene.roots), scene.base, scene.roots)
    if changed:
        problems.append(f"written outside the roots: {changed[:5]}")
    return problems


def run_case_subprocess(case: dict[str, Any], base: Path) -> list[str] | None:
    """The case's problems; None when it is not the server's to answer while the suite runs
    through one (its call runs on the exec path, which the suite without a server covers)."""
    scene = prepare(case, base)
    if served.VIA_SERVER and not served.reaches_server(scene.environ()):
        return None
    try:
        run = run_plugin(scene.command, scene.stdin, env=scene.env)
    except (AssertionError, ValueError) as exc:  # run_plugin's own checks: no traceback, one JSON object
        return [f"run_plugin: {type(exc).__name__}: {str(exc)[:300]}", *_rerun(scene)]
    return judge(scene, run.code, run.stdout, run.stderr)


def _rerun(scene: Scene) -> list[str]:
    """What the plugin really printed, for the report, when run_plugin's checks failed."""
    proc = subprocess.run(plugin_command(), input=scene.stdin, env=scene.environ(), capture_output=True, timeout=60)
    return [f"exit {proc.returncode}, stdout {proc.stdout[:300]!r}, stderr {proc.stderr[-500:]!r}"]


def run_case_in_process(case: dict[str, Any], base: Path) -> list[str]:
    scene = prepare(case, base)
    with RECORDER.recording() as recorder:
        code, stdout, stderr = run_in_process(scene.environ(), scene.stdin)
    problems = judge(scene, code, stdout, stderr)
    problems += [f"in-process write outside the roots: {w}" for w in recorder.outside(scene.roots)]
    return problems


@contextmanager
def host_defaults_untouched() -> Iterator[None]:
    """The host's default roots must look the same afterwards (no case may fall back to them)."""

    def look() -> dict[str, Any]:
        places = (DEFAULT_DATA_DIR, DEFAULT_DEVICE_INFO_ROOT)
        return {p: sorted(os.listdir(p)) if os.path.isdir(p) else os.path.exists(p) for p in places}

    before = look()
    yield
    assert look() == before


def report(failures: dict[str, list[str]]) -> str:
    return "\n".join(f"{case}: {'; '.join(problems)}" for case, problems in sorted(failures.items()))


# --- the corpus -------------------------------------------------------------------------------------------


def test_the_corpus_is_big_and_covers_every_kind() -> None:
    assert len(MANIFEST) >= 200
    groups = {case["group"] for case in MANIFEST}
    assert {"truncated", "malformed", "non-utf8", "wrong-type", "prev-result", "cni-version", "large", "ifname",
            "container-id", "devinfo-path", "symlink", "not-a-file", "sysfs-loop", "netns"} <= groups  # fmt: skip
    assert len({case["id"] for case in MANIFEST}) == len(MANIFEST)
    for case in MANIFEST:
        assert (CORPUS / case["stdin"]).is_file(), case["id"]


def test_every_corpus_case_as_a_subprocess(impl: Impl, tmp_path: Path) -> None:
    with host_defaults_untouched(), ThreadPoolExecutor(WORKERS) as pool:
        answers = list(pool.map(lambda ic: run_case_subprocess(ic[1], tmp_path / f"c{ic[0]:03d}"), enumerate(REGULAR)))
        failures = {case["id"]: problems for case, problems in zip(REGULAR, answers, strict=False) if problems}
    ran = sum(answer is not None for answer in answers)
    assert ran >= len(REGULAR) - 20, f"only {ran} of {len(REGULAR)} cases ran"
    assert not failures, f"{len(failures)} of {ran} cases misbehaved:\n{report(failures)}"


def test_every_corpus_case_in_process_writes_only_inside_the_roots(tmp_path: Path) -> None:
    with host_defaults_untouched():
        failures = {}
        for index, case in enumerate(REGULAR):
            problems = run_case_in_process(case, tmp_path / f"c{index:03d}")
            if problems:
                failures[case["id"]] = problems
    assert not failures, f"{len(failures)} of {len(REGULAR)} cases misbehaved:\n{report(failures)}"


@pytest.mark.exec_path
def test_without_cni_command_the_executable_is_the_operator_tool(impl: Impl, make_config, roots) -> None:
    """No CNI_COMMAND: not a plugin run but the operator's command line (no runtime does this).
    It must print usage on stderr, nothing on stdout, and touch nothing."""
    env = base_env(CNI_CONTAINERID="ctr-1", CNI_IFNAME="net1")
    env.update(passed_through())
    stdin = json.dumps(make_config()).encode()
    proc = subprocess.run(plugin_command(), input=stdin, env=env, capture_output=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (2, b"")
    assert b"usage" in proc.stderr.lower() and b"Traceback" not in proc.stderr
    assert not roots["devinfo"].exists() and not roots["state"].exists()


# --- property-based fuzzing ----------------------------------------------------------------------------------

# Text as an environment or a JSON decoder can carry it: no NUL (no environment holds one); lone
# surrogates included (what undecodable bytes in the environment and \ud800 escapes become).
TEXT = st.text(st.characters(blacklist_characters="\x00"), max_size=24)
SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats(allow_nan=False, allow_infinity=False) | TEXT
)
JSON = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4), max_leaves=12
)
NOT_AN_ABSOLUTE_PATH = JSON.filter(lambda v: not (isinstance(v, str) and v.startswith("/")))
PCI = st.sampled_from(["0000:3b:02.3", "0000:3b:01.5", "3b:02.3", "0001:af:01.2", "zzzz", "", "0000:3b:02.9"])
SYSFS_TREES = st.sampled_from([str(SYSFS / name) for name in ("vf-iavf", "dpdk", "mlx5-rdma", "switchdev", "virtio")])
SEGMENT = st.sampled_from(["..", ".", "cni", "devinfo", "state", "outside", "victim", "x", ""]) | TEXT.filter(
    lambda t: "/" not in t and t not in (".", "..")
)


def under(base: str, max_up: int):
    """Paths below `base` (first climbing out of it at most `max_up` levels, with '..' anywhere
    after), or values that are no path."""
    ups = st.integers(0, max_up).map(lambda n: [".."] * n)
    parts = st.tuples(ups, st.lists(SEGMENT, max_size=4))
    return parts.map(lambda p: "/".join([base, *p[0], *p[1]])) | NOT_AN_ABSOLUTE_PATH


def interfaces():
    iface = st.fixed_dictionaries(
        {},
        optional={
            "name": st.sampled_from(["net1", "eth0", "../x"]) | JSON,
            "mac": st.sampled_from(["02:00:00:00:00:01", "02:99:00:00:00:01"]) | JSON,
            "sandbox": st.sampled_from(["/var/run/netns/pod", ""]) | JSON,
            "pciID": PCI | JSON,
            "mtu": JSON,
        },
    )
    return st.lists(iface | JSON, max_size=3) | JSON


def prev_results():
    return (
        st.fixed_dictionaries(
            {},
            optional={
                "cniVersion": st.sampled_from(SUPPORTED_VERSIONS) | JSON,
                "interfaces": interfaces(),
                "ips": st.lists(st.fixed_dictionaries({"address": TEXT}, optional={"version": JSON, "interface": JSON}))
                | JSON,
                "dns": JSON,
                "ip4": JSON,
            },
        )
        | JSON
    )


def valid_config(base: str) -> dict[str, Any]:
    """A valid config over the vf-iavf fixture whose roots are under `base`."""
    return {
        "cniVersion": "1.1.0",
        "name": "n6-dpdk",
        "type": "deviceid-inject",
        "sysfsRoot": str(SYSFS / "vf-iavf"),
        "deviceInfoRoot": f"{base}/devinfo",
        "dataDir": f"{base}/state",
        "prevResult": {"cniVersion": "1.1.0", "interfaces": [{"name": "net1", "sandbox": "/var/run/netns/pod"}]},
    }


@st.composite
def configs(draw, base: str) -> dict[str, Any]:
    """A valid config with some keys replaced by anything. Never without deviceInfoRoot, dataDir or
    sysfsRoot (their defaults are the host's own), never with a logFile path (a legitimate write
    outside the roots)."""
    conf = valid_config(base)
    changes = {
        "cniVersion": st.sampled_from([*SUPPORTED_VERSIONS, "0.2.0", "9.9.9"]) | JSON,
        "name": TEXT | JSON,
        "type": TEXT | JSON,
        "sysfsRoot": SYSFS_TREES | under(base, 1),
        "deviceInfoRoot": under(base, 1),
        "dataDir": under(base, 1),
        "required": JSON,
        "deviceID": PCI | JSON,
        "pfNames": st.lists(st.sampled_from(["ens1f0", "nope0"]) | TEXT, max_size=3) | JSON,
        "vhostNet": JSON,
        "logFile": NOT_AN_ABSOLUTE_PATH,
        "logLevel": st.sampled_from(["error", "warning", "info", "debug", "trace"]) | JSON,
        "prevResult": prev_results(),
        "runtimeConfig": st.fixed_dictionaries(
            {}, optional={"CNIDeviceInfoFile": under(base, 2), "deviceID": PCI | JSON}
        )
        | JSON,
        "cni.dev/valid-attachments": st.lists(
            st.fixed_dictionaries({"containerID": TEXT, "ifname": TEXT}) | JSON, max_size=3
        )
        | JSON,
        "extra": JSON,
    }
    for key in draw(st.lists(st.sampled_from(sorted(changes)), unique=True, max_size=5)):
        if key in ("name", "type", "required", "prevResult", "extra") and draw(st.booleans()):
            conf.pop(key, None)
        else:
            conf["extra-key" if key == "extra" else key] = draw(changes[key])
    return conf


ENV_TEXT = TEXT.filter(lambda t: "=" not in t)
ENVIRONMENTS = st.fixed_dictionaries(
    {},
    optional={
        "CNI_COMMAND": st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"]) | ENV_TEXT,
        "CNI_CONTAINERID": st.sampled_from(["ctr-1", "a..", "0" * 64, "lock-1"]) | ENV_TEXT,
        "CNI_IFNAME": st.sampled_from(["net1", "eth0", "a" * 15]) | ENV_TEXT,
        "CNI_NETNS": st.sampled_from(["/proc/self/ns/net", "", "/var/run/netns/none"]) | ENV_TEXT,
        "CNI_ARGS": st.sampled_from(["IgnoreUnknown=1;K8S_POD_NAME=p", "a=b=c", ";"]) | ENV_TEXT,
        "CNI_PATH": ENV_TEXT,
    },
)
COMMANDS = st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION"])
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mangled(draw, data: bytes) -> bytes:
    """`data` with a few bytes flipped, dropped or inserted."""
    data = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        how = draw(st.sampled_from(["flip", "drop", "insert", "cut"]))
        if how == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif how == "drop" and data:
            del data[at]
        elif how == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=3))
        else:
            del data[at:]
    return bytes(data)


def could_write_elsewhere(stdin: bytes, scratch: str) -> bool:
    """Whether a mangled config would let even a correct plugin write outside `scratch`: a root
    flipped to another absolute path, a root key lost (the default is the host's own folder), an
    absolute logFile. Such examples are not run."""
    conf = decoded(stdin)
    if not isinstance(conf, dict):
        return False
    for key in ("deviceInfoRoot", "dataDir"):
        value = conf.get(key)
        if key not in conf:
            return True
        if isinstance(value, str) and value.startswith("/") and not os.path.normpath(value).startswith(scratch + "/"):
            return True
    log = conf.get("logFile")
    return isinstance(log, str) and log.startswith("/")


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def fuzz_once(root: Path, environ: dict[str, str], stdin: bytes, command: str) -> None:
    """One in-process run: the output contract holds and nothing is written outside the roots."""
    base = tempfile.mkdtemp(dir=root)
    stdin = stdin.replace(b"@BASE@", base.encode())
    assume(not could_write_elsewhere(stdin, str(root)))
    env = cni_env(command, **environ)
    with RECORDER.recording() as recorder:
        code, stdout, stderr = run_in_process(env, stdin)
    assert code in (0, 1)
    problems = contract_violations(env.get("CNI_COMMAND", "?"), code, stdout, stderr)
    assert not problems, (problems, stdout[:500])
    assert recorder.outside(roots_of(stdin, Path(base))) == []


@FUZZ
@given(config=configs("@BASE@"), command=COMMANDS)
def test_fuzz_config_keys(fuzz_root: Path, config: dict[str, Any], command: str) -> None:
    fuzz_once(fuzz_root, {}, json.dumps(config).encode(), command)


PER_ATTACHMENT = ("prevResult", "runtimeConfig", "cni.dev/valid-attachments")


@contextmanager
def cache_lookups() -> Iterator[list[bool]]:
    """Every answer config._known_valid gives while the block runs: True is a cache hit."""
    real = configuration._known_valid
    seen: list[bool] = []

    def spy(entry: tuple[str, bytes]) -> bool:
        seen.append(real(entry))
        return seen[-1]

    configuration._known_valid = spy
    try:
        yield seen
    finally:
        configuration._known_valid = real


def outcome(root: Path, config: dict[str, Any], command: str, warm_up: bool) -> tuple[tuple[int, Any], bool]:
    """(exit code, error code) of one in-process run in a fresh scratch folder, and whether the run
    was answered from the validated-config cache. With `warm_up`, a DEL of the same config without
    its per-attachment keys runs first, so that a config jsonschema passed is taken from the cache;
    then, whenever the warm-up left an entry, the run must be a hit."""
    base = tempfile.mkdtemp(dir=root)
    env = {"CNI_CONTAINERID": "ctr-1", "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "net1"}
    remembered = False
    if warm_up:
        static = {k: v for k, v in config.items() if k not in PER_ATTACHMENT}
        run_in_process({**env, "CNI_COMMAND": "DEL"}, json.dumps(static).replace("@BASE@", base).encode())
        remembered = any(Path(base).rglob(f"{configuration.VALIDATED_DIR}/*"))
    stdin = json.dumps(config).replace("@BASE@", base).encode()
    with cache_lookups() as lookups:
        code, stdout, _ = run_in_process({**env, "CNI_COMMAND": command}, stdin)
    if remembered:
        assert False not in lookups, "the warm-up left an entry, yet the run missed the cache"
    return (code, (strict_json(stdout).get("code") if code else None)), True in lookups


VALID_CONFIG = valid_config("@BASE@")


@FUZZ
@example(config=VALID_CONFIG, command="ADD")
@example(config={**VALID_CONFIG, "runtimeConfig": {"deviceID": 5}}, command="DEL")
@given(config=configs("@BASE@"), command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]))
def test_fuzz_the_validated_config_cache_changes_no_answer(
    fuzz_root: Path, config: dict[str, Any], command: str
) -> None:
    """A config first seen and the same config once its static part is cached get the same answer:
    the per-attachment checks that replace jsonschema then must agree with it. The cache is really
    used: a cold run never hits it, a warm one hits whenever the warm-up left an entry, and the
    unmodified valid config (an explicit example, so always run) does."""
    cold, cold_hit = outcome(fuzz_root, config, command, warm_up=False)
    warm, warm_hit = outcome(fuzz_root, config, command, warm_up=True)
    assert cold == warm
    assert not cold_hit
    hypothesis_event("cache hit" if warm_hit else "cache miss")
    if {k: v for k, v in config.items() if k not in PER_ATTACHMENT} == {
        k: v for k, v in VALID_CONFIG.items() if k not in PER_ATTACHMENT
    }:
        assert warm_hit


@FUZZ
@given(data=st.data(), command=COMMANDS)
def test_fuzz_stdin_bytes(fuzz_root: Path, data: st.DataObject, command: str) -> None:
    valid = json.dumps(data.draw(configs("@BASE@"))).encode()
    stdin = data.draw(st.binary(max_size=300) | mangled(valid) | st.just(valid[: len(valid) // 2]))
    fuzz_once(fuzz_root, {}, stdin, command)


@FUZZ
@given(environ=ENVIRONMENTS, command=COMMANDS)
def test_fuzz_environment(fuzz_root: Path, environ: dict[str, str], command: str) -> None:
    fuzz_once(fuzz_root, environ, json.dumps(VALID_CONFIG).encode(), command)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data(), command=COMMANDS)
def test_fuzz_stdin_through_the_executable(impl: Impl, fuzz_root: Path, data: st.DataObject, command: str) -> None:
    """The same fuzzing, fewer examples, through a real process of each implementation."""
    base = Path(tempfile.mkdtemp(dir=fuzz_root))
    (base / "outside").mkdir()
    (base / "outside" / "victim").write_text(VICTIM_TEXT)
    valid = json.dumps(data.draw(configs(str(base)))).encode()
    stdin = data.draw(mangled(valid) | st.just(valid))
    assume(not could_write_elsewhere(stdin, str(fuzz_root)))
    roots = roots_of(stdin, base)
    before = snapshot(base, roots)
    try:
        run = run_plugin(command, stdin)
    except AssertionError as exc:
        raise AssertionError(f"run_plugin: {exc}") from None
    assert contract_violations(command, run.code, run.stdout, run.stderr) == [], run.stdout[:500]
    assert changed_outside(before, snapshot(base, roots), base, roots) == []
