"""The sandbox: a jail around generated code, a verdict the code cannot forge, and nothing left behind.

Each escape class of issue 13 is a real attack program. Those the jail must stop on its own run twice: with the
audit hook (the second layer) and with it switched off, to show that the OS layers alone hold.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from textdiff.rl import sandbox
from textdiff.rl.sandbox import SandboxUnavailableError, run_code

REPO_FILE = Path(__file__).resolve()


def _sandbox_processes() -> list[int]:
    """Processes of a jail (bwrap, or the harness in the plain mode) still running anywhere on the machine."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"bwrap\0--args") or b"textdiff_sandbox_harness" in cmdline:
            found.append(int(pid))
    return found


def _marked_processes(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.fixture(autouse=True)
def contained():
    """Every test: afterwards no sandbox process is left and no sandbox directory (plain mode) remains."""
    before = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("textdiff_sandbox_")}
    yield
    assert not _sandbox_processes(), "sandbox processes left running"
    after = {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("textdiff_sandbox_")}
    assert after <= before, f"sandbox directories left behind: {after - before}"


@pytest.fixture(params=["all-layers", "jail-only"])
def layers(request, monkeypatch):
    """Run the test with the audit hook, and again without it (the OS layers alone)."""
    if request.param == "jail-only":
        monkeypatch.setattr(sandbox, "_AUDIT_HOOK", False)
    return request.param


def _run(code: str, timeout: float = 5.0, **kwargs):
    start = time.monotonic()
    result = run_code(code, timeout=timeout, **kwargs)
    assert time.monotonic() - start < timeout + 5, "the caller was held past the timeout"
    return result


# ---------------------------------------------------------------------------------------------- ordinary programs


def test_a_correct_program_passes_and_reports_its_layers():
    result = _run("import math\nprint(math.factorial(5))\nassert sum(range(4)) == 6\n")
    assert result.status == "passed" and result.passed and result.stdout == "120\n"
    assert result.isolation == ["bwrap:user,pid,net,mount,ipc,uts", "uid:65534", "non-dumpable", "seccomp",
                                "rlimits", "audit-hook", "verdict:nonce"]
    assert _run("open('scratch.txt', 'w').write('ok')\nassert open('/tmp/scratch.txt').read() == 'ok'\n").passed


def test_a_failing_assertion_fails():
    result = _run("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong'\n")
    assert result.status == "failed" and "AssertionError: wrong" in result.detail
    assert _run("def f(:\n").status == "failed"  # syntax error


def test_infinite_loop_times_out():
    assert _run("while True:\n    pass\n", timeout=1.0).status == "timeout"
    assert _run("import time\ntime.sleep(60)\n", timeout=1.0).status == "timeout"  # wall clock, no CPU used
    result = _run("while True:\n    pass\n", timeout=5.0, cpu_seconds=1)
    assert result.status == "timeout" and "CPU" in result.detail


def test_fork_bomb_is_refused():
    result = _run("import os\nwhile True:\n    os.fork()\n", timeout=3.0)
    assert result.status == "failed" and "os.fork" in result.detail


def test_memory_bomb_hits_the_memory_limit():
    result = _run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", memory_mb=256)
    assert result.status == "error" and "memory" in result.detail.lower()


def test_huge_output_is_cut_at_the_file_size_limit():
    result = _run("while True:\n    print('x' * 100_000)\n", file_mb=1, output_bytes=1000)
    assert result.status == "error" and "size limit" in result.detail
    assert len(result.stdout) == 1000
    result = _run("open('/tmp/big', 'wb').write(b'x' * (4 << 20))\n", file_mb=1)
    assert result.status == "error" and "size limit" in result.detail


def test_segfault_is_reported_not_propagated():
    result = _run("import faulthandler\nfaulthandler._sigsegv()\n")
    assert result.status == "error" and "SIGSEGV" in result.detail


def test_tests_form_passes_and_fails_on_the_candidate():
    check = "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate([1], [2]) == [1, 2]\n"
    tests = sandbox.Tests(check, "add")
    result = _run("def add(a, b):\n    return a + b\n", tests=tests)
    assert result.passed and result.isolation[-1] == "verdict:judge-jail"
    assert _run("def add(a, b):\n    return a - b\n", tests=tests).status == "failed"
    assert _run("def add(a, b):\n    while True: pass\n", tests=tests, timeout=1.0).status == "timeout"
    assert _run("def add(a, b):\n    return 1/0\n", tests=tests).status == "failed"


# ---------------------------------------------------------------------------------------------- escape classes


def test_runs_unprivileged_with_no_capabilities_under_seccomp(monkeypatch):
    # the old sandbox ran as root here (its uid drop was skipped: the interpreter sits under a 0700 /root), where
    # RLIMIT_NPROC never binds; now: uid 65534, no capabilities, own memory closed, seccomp, at most max_processes
    attack = """
import os, time
status = {l.split(':')[0]: l.split()[1] for l in open('/proc/self/status') if ':' in l and l.split()[1:]}
print('uid', os.getuid(), os.geteuid(), 'caps', status['CapEff'], status['CapPrm'])
try:
    open('/proc/self/mem', 'rb')
    print('MEM READABLE')
except OSError:
    pass
import socket
for name, call in (('socket', lambda: socket.socket(socket.AF_INET)), ('pidfd_open', lambda: os.pidfd_open(1))):
    try:
        call()
        print(name, 'allowed')
    except OSError as err:
        print(name, 'errno', err.errno)  # the seccomp filter answers EPERM
children = 0
try:
    for _ in range(40):
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        children += 1
except OSError:
    pass
print('children', children)
"""
    monkeypatch.setattr(sandbox, "_AUDIT_HOOK", False)  # os.fork is refused by the hook; this is about the kernel
    result = _run(attack, max_processes=8)
    assert "uid 65534 65534 caps 0000000000000000 0000000000000000" in result.stdout, result
    assert "MEM READABLE" not in result.stdout
    assert "socket errno 1" in result.stdout and "pidfd_open errno 1" in result.stdout
    children = int(result.stdout.split("children ")[1])
    assert 0 < children < 8  # RLIMIT_NPROC binds (it counts the harness's threads too)


def test_writes_outside_the_jail_never_land(layers, tmp_path):
    caller_file = tmp_path / "caller.txt"
    caller_file.write_text("precious")
    targets = [tmp_path / name for name in ("open.txt", "osopen.txt", "dirfd.txt", "fifo", "node", "race.txt")]
    repo_target = REPO_FILE.parent / "sandbox_was_here.txt"
    attack = f"""
import os, threading
t = {[str(p) for p in targets]!r}
def attempt(label, fn):
    try:
        fn()
        print('WROTE', label)
    except BaseException as err:
        print('refused', label, type(err).__name__)
attempt('open', lambda: open(t[0], 'w').write('x'))
attempt('append', lambda: open({str(caller_file)!r}, 'a').write('x'))
attempt('remove', lambda: os.remove({str(caller_file)!r}))
attempt('repo', lambda: open({str(repo_target)!r}, 'w').write('x'))
attempt('os.open', lambda: os.write(os.open(t[1], os.O_WRONLY | os.O_CREAT), b'x'))
# the old path check took any integer fd as inside, and relative paths against its first directory
attempt('dir_fd', lambda: os.open('root' + t[2], os.O_WRONLY | os.O_CREAT, dir_fd=os.open('/proc/self', os.O_RDONLY)))
attempt('mkfifo', lambda: os.mkfifo(t[3]))
attempt('mknod', lambda: os.mknod(t[4]))
attempt('shm', lambda: os.write(__import__('_posixshmem').shm_open('/textdiff_escape', os.O_CREAT | os.O_RDWR,
                                                                      0o600), b'x'))
# a symlink in the scratch directory, swapped by a thread between the path check and the open
stop = []
def swap():
    while not stop:
        for target in ('harmless', t[5]):
            try:
                os.remove('link')
            except OSError:
                pass
            try:
                os.symlink(target, 'link')
            except BaseException:
                pass
threading.Thread(target=swap, daemon=True).start()
for _ in range(300):
    try:
        open('link', 'w').write('x')
    except BaseException:
        pass
stop.append(1)
"""
    _run(attack)
    assert caller_file.read_text() == "precious"
    assert not [p for p in targets if p.exists()] and not repo_target.exists()
    assert not Path("/dev/shm/textdiff_escape").exists()


def test_the_callers_files_and_environment_stay_unreadable(layers, tmp_path, monkeypatch):
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("s3cr3t-file-token")
    monkeypatch.setenv("TEXTDIFF_TEST_SECRET", "s3cr3t-env-token")  # in the caller's environment
    attack = f"""
import os
def dump(path):
    for how in ('plain', 'dir_fd'):
        try:
            if how == 'plain':
                print(path, open(path, 'rb').read(4096))
            else:  # the old path check let a relative path from an fd of /proc/self reach anything
                os.fchdir(os.open('/proc/self', os.O_RDONLY))
                print(path, os.read(os.open('root' + path, os.O_RDONLY), 4096))
        except BaseException as err:
            print('refused', path, type(err).__name__)
print(dict(os.environ))
for path in ({str(secret_file)!r}, {str(REPO_FILE)!r}, '/root/.bashrc', '/etc/passwd'):
    dump(path)
pids = {{os.getppid(), os.getpid(), 1}}
try:
    pids |= {{int(p) for p in os.listdir('/proc') if p.isdigit()}}
except BaseException:
    pass
for pid in sorted(pids):
    dump(f'/proc/{{pid}}/environ')
    dump(f'/proc/{{pid}}/cmdline')
try:
    print('LISTING', os.listdir({str(tmp_path)!r}))
except BaseException as err:
    print('refused listdir', type(err).__name__)
"""
    result = _run(attack)
    for secret in ("s3cr3t-file-token", "s3cr3t-env-token", "LISTING", "the OS layers alone hold"):
        assert secret not in result.stdout and secret not in result.stderr, secret


def test_no_process_outlives_the_run(layers):
    marker = f"textdiff_escapee_{os.getpid()}_{time.monotonic_ns()}"
    attack = f"""
import os, sys, time, glob
exe = sys.executable or '/opt/python/bin/python3.11'
sleeper = [exe, '-c', 'import time; time.sleep(30)', {marker!r}]
try:  # a daemon: fork, new session, fork again, exec
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.execv(exe, sleeper)
        os._exit(0)
except BaseException as err:
    print('fork refused', type(err).__name__)
try:  # _posixsubprocess loaded under another name, fork_exec with setsid (passed the old import filter)
    import importlib.machinery as machinery, importlib.util as util
    path = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_posixsubprocess*')[0]
    spec = machinery.ModuleSpec('innocent._posixsubprocess',
                                machinery.ExtensionFileLoader('innocent._posixsubprocess', path), origin=path)
    ps = util.module_from_spec(spec)
    argv = [exe.encode(), b'-c', b'import time; time.sleep(30)', {marker.encode()!r}]
    # CPython 3.11's order: args, executables, close_fds, fds_to_keep, cwd, env, 6 stdio fds, the error pipe,
    # restore_signals, call_setsid, process_group, gid, groups, uid, umask, preexec_fn, allow_vfork
    ps.fork_exec(argv, [exe.encode()], False, (), None, None, -1, -1, -1, -1, -1, -1, *os.pipe(), True, True,
                 -1, None, None, None, -1, None, False)
    print('fork_exec ran')
except BaseException as err:
    print('fork_exec refused', type(err).__name__, err)
time.sleep(0.5)
"""
    _run(attack)
    time.sleep(0.2)
    assert not _marked_processes(marker), "a process of the run survived it"


def test_the_caller_cannot_be_signalled(layers):
    helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        attack = f"""
import os, signal
for pid in ({os.getpid()}, {helper.pid}, os.getppid(), 1):
    try:
        os.kill(pid, signal.SIGKILL)
        print('sent', pid)
    except BaseException as err:
        print('refused kill', pid, type(err).__name__)
    try:  # pidfd_send_signal was not covered by the old hook: it killed the caller
        signal.pidfd_send_signal(os.pidfd_open(pid), signal.SIGKILL)
        print('sent pidfd', pid)
    except BaseException as err:
        print('refused pidfd', pid, type(err).__name__)
try:
    os.kill(-1, signal.SIGKILL)  # everything this uid may signal
except BaseException as err:
    print('refused kill -1', type(err).__name__)
"""
        _run(attack)
        time.sleep(0.2)
        assert helper.poll() is None, "a process of the caller's was killed"
    finally:
        helper.kill()
        helper.wait()


def test_no_network(layers):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        attack = f"""
import os, sys
frame = sys._getframe()
while frame is not None:  # a hook configured by module globals can be disarmed from a frame further up
    if 'BLOCKED_PREFIXES' in frame.f_globals:
        frame.f_globals['BLOCKED_PREFIXES'] = ('-',)
    frame = frame.f_back
raw = sys.modules.get('_ctypes')  # left loaded by a harness that used ctypes before its hook
if raw is not None:  # then join the caller's network namespace
    try:
        class c_int(raw._SimpleCData):
            _type_ = 'i'
        class Function(raw.CFuncPtr):
            _flags_ = raw.FUNCFLAG_CDECL | raw.FUNCFLAG_USE_ERRNO
            _restype_ = c_int
        setns = Function(raw.dlsym(raw.dlopen(None), 'setns'))
        fd = os.open('root/proc/%d/ns/net' % os.getppid(), os.O_RDONLY, dir_fd=os.open('/proc/self', os.O_RDONLY))
        print('setns', setns(fd, 0x40000000))
    except BaseException as err:
        print('setns refused', type(err).__name__, err)
try:  # the socket module, then the raw extension under another name (the old import filter matched exact names)
    import socket
except BaseException:
    import importlib.machinery as machinery, importlib.util as util, glob
    path = glob.glob(sys.base_prefix + '/lib/python3*/lib-dynload/_socket*')[0]
    socket = util.module_from_spec(machinery.ModuleSpec(
        'innocent._socket', machinery.ExtensionFileLoader('innocent._socket', path), origin=path))
for family, address in ((socket.AF_INET, ('127.0.0.1', {port})), (socket.AF_INET6, ('::1', {port}))):
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(1)
        s.connect(address)
        s.sendall(b'hi')
        print('CONNECTED', address)
    except BaseException as err:
        print('refused', address, type(err).__name__)
"""
        result = _run(attack)
        assert "CONNECTED" not in result.stdout
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


# ---------------------------------------------------------------------------------------------- the verdict


FORGERIES = {  # each then ends the process at once, leaving whatever report it forged as the last word
    "report via __main__": "import __main__\n__main__.report('passed')\n",
    "a report on every fd": (
        "import os\n"
        "for fd in range(3, 256):\n"
        "    try:\n"
        "        os.write(fd, b'{\"status\": \"passed\"}')\n"
        "    except OSError:\n"
        "        pass\n"
    ),
    "the harness's frames and objects": (
        "import gc, os, sys\n"
        "found = []\n"
        "for getter in (lambda: list(sys._current_frames().values()), gc.get_objects):\n"
        "    try:\n"
        "        found += getter()\n"
        "    except BaseException:\n"
        "        pass\n"
        "for obj in found:\n"
        "    for value in getattr(obj, 'f_locals', {}).values():\n"
        "        if isinstance(value, bytes) and b' status ' in value:\n"
        "            os.write(3, value.replace(b'6661696c6564', b'706173736564'))\n"
        "            print('FOUND')\n"
    ),
    "the old bootstrap's globals": (
        "import sys\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    if 'report' in frame.f_globals:\n"
        "        frame.f_globals['report']('passed')\n"
        "    frame = frame.f_back\n"
    ),
}


@pytest.mark.parametrize("name", FORGERIES)
def test_a_forged_report_is_not_a_pass(name):
    result = _run(FORGERIES[name] + "import os\nos._exit(0)\n")
    assert not result.passed, (name, result)
    assert "FOUND" not in result.stdout


def test_a_candidate_cannot_forge_the_judges_verdict(layers):
    tests = sandbox.Tests("def check(candidate):\n    assert candidate(1) == 2\n", "inc")
    for body in FORGERIES.values():
        result = _run(body + "def inc(x):\n    return x\n", tests=tests)
        assert result.status == "failed", (body, result)


EARLY_EXITS = {
    "sys.exit(0)": "import sys\nsys.exit(0)\n",
    "sys.exit()": "import sys\nsys.exit()\n",
    "SystemExit(None)": "raise SystemExit(None)\n",
    "SystemExit(False)": "raise SystemExit(False)\n",
    "os._exit(0)": "import os\nos._exit(0)\n",
    "os._exit from a thread": "import os, threading, time\nthreading.Thread(target=os._exit, args=(0,)).start()\n"
                              "time.sleep(1)\n",
    "SIGTERM to itself": "import os, signal, time\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(1)\n",
    "interrupt_main": "import _thread, time\n_thread.interrupt_main()\ntime.sleep(1)\n",
    "SystemExit from a trace hook on check": (
        "import sys\n"
        "def tracer(frame, event, arg):\n"
        "    if event == 'call' and frame.f_code.co_name == 'check':\n"
        "        raise SystemExit(0)\n"
        "    return None\n"
        "sys.settrace(tracer)\n"
    ),
}
_CHECK = "def f():\n    return 1\ndef check(candidate):\n    assert candidate() == 2\ncheck(f)\n"


@pytest.mark.parametrize("name", EARLY_EXITS)
def test_exiting_early_is_never_a_pass(name):
    # the old sandbox scored sys.exit(0) / SystemExit(None or False) as passed
    result = _run(EARLY_EXITS[name] + _CHECK, timeout=3.0)
    assert not result.passed, (name, result)


def test_exiting_early_in_the_candidate_is_never_a_pass():
    tests = sandbox.Tests("def check(candidate):\n    assert candidate() == 2\n", "f")
    for name, body in EARLY_EXITS.items():
        assert not _run(body + "def f():\n    return 1\n", tests=tests, timeout=3.0).passed, name
    for name in ("sys.exit(0)", "SystemExit(None)", "os._exit(0)", "SystemExit from a trace hook on check"):
        in_call = "def f():\n    " + EARLY_EXITS[name].replace("\n", "\n    ") + "\n    return 1\n"
        assert not _run(in_call, tests=tests, timeout=3.0).passed, name


def test_the_tests_cannot_be_read_or_beaten():
    check = "def check(candidate):\n    assert candidate(3) == 'three'\n    assert candidate(4) == 'four'\n"
    tests = sandbox.Tests(check, "name")
    reader = """
import glob, os, re
def name(n):
    sources = []
    for path in ['program.py', __file__ if '__file__' in globals() else ''] + glob.glob('/proc/*/cmdline'):
        try:
            sources.append(open(path, errors='replace').read())
        except BaseException:
            pass
    for source in sources:
        found = re.search(r'candidate\\(%d\\) == (\\S+)' % n, source)
        if found:
            return eval(found.group(1))
"""
    always_equal = """
class Anything(str):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = str.__hash__
def name(n):
    return Anything()
"""
    for candidate in (reader, always_equal):
        result = _run(candidate, tests=tests)
        assert result.status == "failed", (candidate, result)


# ---------------------------------------------------------------------------------------------- refusing


def test_bad_limits_and_unknown_modes_raise():
    with pytest.raises(ValueError, match="positive"):
        run_code("print(1)", timeout=0)
    with pytest.raises(ValueError, match="unknown isolation"):
        run_code("print(1)", isolation="none")


def test_refuses_rather_than_running_weaker(monkeypatch):
    monkeypatch.setattr(sandbox.jail, "jail_problem", lambda: "no bwrap here")
    with pytest.raises(SandboxUnavailableError, match="no bwrap here.*audit-hook-only"):
        run_code("print(1)")
    monkeypatch.undo()
    monkeypatch.setattr(sandbox.jail, "bwrap", lambda: "/bin/false")  # a bwrap that cannot build the jail
    with pytest.raises(SandboxUnavailableError, match="cannot build the sandbox jail"):
        run_code("print(1)")


def test_the_weaker_mode_is_named_and_says_so(tmp_path):
    result = run_code("print(1)", isolation="audit-hook-only")
    assert result.passed and result.isolation == ["rlimits", "audit-hook", "verdict:nonce"]
    target = tmp_path / "outside.txt"
    result = run_code(f"open({str(target)!r}, 'w').write('x')", isolation="audit-hook-only")
    assert result.status == "failed" and "not allowed" in result.detail and not target.exists()
    assert not run_code("import sys\nsys.exit(0)\n", isolation="audit-hook-only").passed


def test_site_packages_only_when_asked():
    assert _run("import idna\n").status == "failed"
    assert _run("import idna\n", site_packages=True).passed
