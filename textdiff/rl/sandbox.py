"""Run untrusted generated Python code in a separate, resource-limited process.

Layers, from the outside in:
1. A fresh interpreter (`python -I`) in its own session (process group), in a throwaway working directory that is
   deleted afterwards; the caller waits with a wall-clock timeout and kills the whole group on expiry, so nothing
   it started survives. The caller never raises because of the code: every outcome is a `SandboxResult`.
2. Kernel limits set by the child before the code runs: CPU seconds (RLIMIT_CPU), address space (RLIMIT_AS), file
   size (RLIMIT_FSIZE, which also caps stdout/stderr: they go to files), open files, and processes (RLIMIT_NPROC).
3. Where the kernel allows it, a new network namespace (no interface but a down loopback: no network at all), and
   under root a drop to an unprivileged uid (so RLIMIT_NPROC binds and root-only files are out of reach).
4. A Python audit hook, installed before the code runs and impossible to remove from Python: it refuses sockets,
   subprocesses / fork / exec / os.system, ctypes, signals to other processes, and any file or directory access
   outside the working directory except reading the interpreter's own library directories (so imports work).

Threat model: buggy or careless generated code (infinite loops, fork or memory bombs, stray writes, network
calls), as in RL rollouts; not a determined attacker with native-code exploits (use a VM or gVisor for that).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

STATUSES = ("passed", "failed", "timeout", "error")

# The child's bootstrap: it runs before the untrusted code, in the child interpreter. Arguments (JSON on argv):
# limits, the result pipe fd, allowed read roots, and whether to unshare the network / drop privileges.
_BOOTSTRAP = r'''
import errno, json, os, sys, traceback
cfg = json.loads(sys.argv[1])
result_fd = cfg["result_fd"]
def report(status, detail=""):
    os.write(result_fd, json.dumps({"status": status, "detail": detail[-2000:]}).encode())
    os.close(result_fd)

import resource
def limit(name, value):
    try:
        resource.setrlimit(name, (value, value))
    except (ValueError, OSError):
        pass
isolation = []
if cfg["unshare_network"]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        CLONE_NEWNET, CLONE_NEWUSER = 0x40000000, 0x10000000
        flags = CLONE_NEWNET if os.geteuid() == 0 else CLONE_NEWNET | CLONE_NEWUSER
        if libc.unshare(flags) == 0:
            isolation.append("netns")
        del ctypes, libc
        sys.modules.pop("ctypes", None)
    except Exception:
        pass
if cfg["drop_to_uid"] is not None and os.geteuid() == 0:
    try:
        os.setgroups([])
        os.setgid(cfg["drop_to_uid"])
        os.setuid(cfg["drop_to_uid"])
        isolation.append("uid")
    except OSError:
        pass
limit(resource.RLIMIT_CPU, cfg["cpu_seconds"])
limit(resource.RLIMIT_AS, cfg["memory_bytes"])
limit(resource.RLIMIT_FSIZE, cfg["file_bytes"])
limit(resource.RLIMIT_NOFILE, 64)
limit(resource.RLIMIT_NPROC, cfg["max_processes"])
limit(resource.RLIMIT_CORE, 0)

workdir = os.path.realpath(os.getcwd())
read_roots = tuple(os.path.realpath(p) for p in cfg["read_roots"])
def inside(path, roots):
    try:
        if isinstance(path, int):
            return True  # an already-open descriptor
        path = os.path.realpath(os.path.join(workdir, os.fsdecode(path)))
    except Exception:
        return False
    return any(path == r or path.startswith(r + os.sep) for r in roots)

BLOCKED_PREFIXES = ("socket.", "subprocess.", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                    "os.system", "os.kill", "os.killpg", "ctypes.", "pty.", "os.startfile", "winreg.", "syslog.",
                    "sys.remote_exec", "mmap.__new__", "resource.setrlimit", "resource.prlimit", "os.setuid",
                    "os.setgid", "os.chroot")
PATH_EVENTS_WRITE = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.chmod", "os.chown", "os.symlink",
                     "os.link", "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.mknod", "shutil.rmtree",
                     "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.move", "os.chdir",
                     "shutil.chown", "os.setxattr", "os.removexattr"}
PATH_EVENTS_READ = {"os.listdir", "os.scandir", "os.walk", "glob.glob", "os.getxattr", "os.listxattr", "os.fwalk",
                    "pathlib.Path.glob", "pathlib.Path.rglob"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

def hook(event, args):
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if inside(path, (workdir,)) or (not writing and inside(path, read_roots)):
            return
        raise PermissionError(f"sandbox: {'writing' if writing else 'reading'} {path!r} is not allowed")
    if event == "import" and args[0] in ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_socket"):
        raise PermissionError(f"sandbox: importing {args[0]} is not allowed")
    if event.startswith(BLOCKED_PREFIXES):
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event in PATH_EVENTS_WRITE or event in PATH_EVENTS_READ:
        paths = [a for a in args if isinstance(a, (str, bytes, os.PathLike))]
        roots = (workdir,) if event in PATH_EVENTS_WRITE else (workdir,) + read_roots
        if not all(inside(p, roots) for p in paths):
            raise PermissionError(f"sandbox: {event} outside the working directory is not allowed")

source = open(cfg["program"], encoding="utf-8").read()
code = None
try:
    code = compile(source, "program.py", "exec")
except BaseException as err:
    report("failed", f"{type(err).__name__}: {err}")
    os._exit(0)
sys.addaudithook(hook)
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except SystemExit as err:
    if err.code in (None, 0):
        report("passed")
    else:
        report("failed", f"SystemExit({err.code!r})")
except MemoryError:
    report("error", "MemoryError: memory limit")
except OSError as err:
    if err.errno == errno.EFBIG:  # Python ignores SIGXFSZ: an oversized write fails with EFBIG instead
        report("error", "file/output size limit")
    else:
        report("failed", f"{type(err).__name__}: {err}")
except RecursionError as err:
    report("failed", f"RecursionError: {err}")
except BaseException as err:
    report("failed", "".join(traceback.format_exception_only(type(err), err)).strip())
else:
    report("passed")
sys.stdout.flush()
os._exit(0)
'''


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run."""

    status: str
    """'passed' (ran to the end), 'failed' (raised: an assertion, a refused operation, ...), 'timeout'
    (wall-clock or CPU limit), or 'error' (crashed, killed by a signal, exited early, memory/output limit)."""
    detail: str = ""
    """the exception, signal or limit that decided the status."""
    stdout: str = ""
    """the first `output_bytes` of standard output."""
    stderr: str = ""
    """the first `output_bytes` of standard error."""
    wall_seconds: float = 0.0
    """how long the child ran."""
    isolation: list[str] = field(default_factory=list)
    """kernel isolation that was in effect besides rlimits and the audit hook ('netns', 'uid')."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _read_roots() -> list[str]:
    # the interpreter's own code (stdlib, site-packages, the venv) is readable so that imports work
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    roots |= {p for p in sys.path if p and os.path.isdir(p) and "site-packages" in p}
    roots |= {"/dev/null", "/dev/urandom", "/proc/self"}
    return sorted(roots)


def _readable_by_others(path: str) -> bool:
    """Every directory from / down to `path` is searchable, and `path` readable, by an unprivileged user."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        prefix = os.sep.join(parts[:i]) or os.sep
        try:
            mode = os.stat(prefix).st_mode
        except OSError:
            return False
        if not mode & 0o001 or (prefix == path and not mode & 0o004):
            return False
    return True


def _network_namespace_available() -> bool:
    return sys.platform.startswith("linux")


def run_code(
    code: str,
    *,
    timeout: float = 5.0,
    cpu_seconds: int | None = None,
    memory_mb: int = 512,
    file_mb: int = 8,
    output_bytes: int = 10_000,
    max_processes: int = 64,
    isolate_network: bool = True,
    drop_privileges: bool = True,
) -> SandboxResult:
    """Run `code` (a whole Python program) in the sandbox and report what happened; never raises for the code.

    timeout: wall-clock seconds before the process group is killed; cpu_seconds: CPU limit (default: timeout).
    memory_mb: address-space limit; file_mb: largest file the code (or its stdout/stderr) may write.
    """
    if timeout <= 0 or memory_mb <= 0 or file_mb <= 0:
        raise ValueError(f"timeout, memory_mb and file_mb must be positive, got {timeout}, {memory_mb}, {file_mb}")
    workdir = tempfile.mkdtemp(prefix="textdiff_sandbox_")
    start = time.monotonic()
    proc = None
    read_fd, write_fd = os.pipe()
    try:
        program = os.path.join(workdir, "program.py")
        with open(program, "w", encoding="utf-8") as f:
            f.write(code)
        # an unprivileged uid only if it can still read the interpreter (not so for a Python under /root)
        can_drop = drop_privileges and os.geteuid() == 0
        can_drop = can_drop and all(_readable_by_others(r) for r in (sys.base_prefix, sys.prefix, os.path.dirname(
            os.path.realpath(sys.executable))))
        drop_uid = 65534 if can_drop else None
        if drop_uid is not None:
            os.chown(workdir, drop_uid, drop_uid)
            os.chown(program, drop_uid, drop_uid)
        cfg = {
            "result_fd": write_fd,
            "program": program,
            "cpu_seconds": int(cpu_seconds or max(1, int(timeout) + 1)),
            "memory_bytes": memory_mb * 1024 * 1024,
            "file_bytes": file_mb * 1024 * 1024,
            "max_processes": max_processes,
            "read_roots": _read_roots(),
            "unshare_network": isolate_network and _network_namespace_available(),
            "drop_to_uid": drop_uid,
        }
        out_path, err_path = os.path.join(workdir, "stdout"), os.path.join(workdir, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            if drop_uid is not None:
                os.fchown(out.fileno(), drop_uid, drop_uid)
                os.fchown(err.fileno(), drop_uid, drop_uid)
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOTSTRAP, json.dumps(cfg)],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                pass_fds=(write_fd,),
                start_new_session=True,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": workdir, "TMPDIR": workdir},
            )
        os.close(write_fd)
        write_fd = -1
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)
        if timed_out:
            proc.wait()
        wall = time.monotonic() - start
        report = _read_report(read_fd)
        stdout, stderr = _head(out_path, output_bytes), _head(err_path, output_bytes)
        isolation = []  # reconstructed from the config (the child cannot be trusted to report it)
        if cfg["unshare_network"]:
            isolation.append("netns")
        if drop_uid is not None:
            isolation.append("uid")
        rc = proc.returncode
        if timed_out:
            result = SandboxResult("timeout", f"wall-clock limit {timeout}s", stdout, stderr, wall, isolation)
        elif rc is not None and rc < 0 and -rc == signal.SIGXCPU:
            result = SandboxResult("timeout", f"CPU limit {cfg['cpu_seconds']}s", stdout, stderr, wall, isolation)
        elif rc is not None and rc < 0 and -rc == signal.SIGXFSZ:
            result = SandboxResult("error", f"file/output size limit {file_mb} MB", stdout, stderr, wall, isolation)
        elif rc is not None and rc < 0:
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
            result = SandboxResult("error", f"killed by {name}", stdout, stderr, wall, isolation)
        elif report is None:
            result = SandboxResult("error", f"exited with code {rc} before finishing", stdout, stderr, wall,
                                   isolation)
        else:
            result = SandboxResult(report["status"], report.get("detail", ""), stdout, stderr, wall, isolation)
        if result.status not in STATUSES:
            result = SandboxResult("error", f"bad report {report!r}", stdout, stderr, wall, isolation)
        return result
    except OSError as err:  # the sandbox itself failed (no fork, disk full, ...): still a result, not a crash
        return SandboxResult("error", f"sandbox failure: {err}", wall_seconds=time.monotonic() - start)
    finally:
        if proc is not None and proc.poll() is None:
            _kill_group(proc.pid)
            proc.wait()
        for fd in (read_fd, write_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        shutil.rmtree(workdir, ignore_errors=True)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_report(fd: int) -> dict | None:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    try:
        report = json.loads(b"".join(chunks).decode())
    except (ValueError, UnicodeDecodeError):
        return None
    return report if isinstance(report, dict) and "status" in report else None


def _head(path: str, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", errors="replace")
    except OSError:
        return ""
