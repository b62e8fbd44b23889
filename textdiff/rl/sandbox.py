"""Run untrusted generated Python code in a jail, and judge it from outside the code's reach.

Layers, from the outside in (`SandboxResult.isolation` lists those in effect):
1. A bubblewrap jail (`sandbox_jail`): new user, PID, network, mount, IPC and UTS namespaces; a root holding only
   the interpreter and its libraries (read-only), a private /proc and /dev, and a size-capped tmpfs /tmp as the
   only writable place; no inherited fds but its pipes, a cleared environment, its own session, killed with its
   caller. The caller's files, /root, /work, its processes and the network do not exist in there.
2. Host uid 65534 with no capabilities; not dumpable, so even its own memory is closed to it through /proc.
3. A seccomp filter (`sandbox_seccomp`): no ptrace / process_vm / pidfd, no new namespaces or mounts, no keyrings,
   bpf, perf, userfaultfd or io_uring, no sockets but AF_UNIX.
4. rlimits set before the code runs: CPU seconds, address space, file size (and the tmpfs size), open files,
   processes, no core files. The caller keeps a wall clock and kills the jail's PID 1 on expiry, which ends every
   process in it; output beyond `file_mb` ends the run.
5. A Python audit hook (second layer only): processes, sockets, ctypes, writes outside /tmp, the frames of other
   threads and the gc's object lists are refused at the Python level too.

The verdict never comes from the exit status, nor from anything the code can write:
- `run_code(program)`: `passed` means the program's last line was reached. A trusted harness runs the program on a
  thread started from C (no harness frame on its stack) and reports on a pipe, each line prefixed with a per-run
  secret nonce that it received on stdin and holds only where the program cannot reach it; `sys.exit(0)`,
  `os._exit(0)`, exceptions and signals are never a pass, and a forged report lacks the nonce.
- `run_code(candidate, tests=Tests(...))`: the tests run in a second jail (the judge) that the candidate cannot
  see; the judge calls the candidate's entry point over a pipe, receives plain builtin values only (so an object
  that equals everything cannot cross), and reports on a pipe the candidate never holds. The tests never reach
  the candidate's jail. Code rewards (`rewards.humaneval_reward`) use this form.

Threat model: generated code that is buggy, careless or adversarial at the Python and system-call level (RL
policies search for reward hacks). Out of scope: kernel exploits, and memory-corruption bugs of CPython itself,
which could forge the program-form verdict from inside (the tests form does not rely on the code's process).
Residual risks: `site_packages=True` mounts packages (numpy) that read raw memory, with the same effect on the
program form; a caller that is not root gets bwrap's own uid mapping, where the code stays dumpable (no
'non-dumpable' in `isolation`); values cross to the judge as copies (a test cannot see the candidate mutate its
arguments) and exceptions by builtin type name; seccomp is built for x86-64 only (elsewhere the jail refuses).
`isolation="audit-hook-only"` names the weaker mode without the jail (layers 4-5 only, uid unchanged) for machines
without bubblewrap; the jail mode never falls back to it silently but raises SandboxUnavailableError.
"""

from __future__ import annotations

import functools
import os
import secrets
import selectors
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from textdiff.rl import sandbox_jail as jail

STATUSES = ("passed", "failed", "timeout", "error")
ISOLATION_MODES = ("jail", "audit-hook-only")
_HARNESS_PATH = Path(__file__).with_name("sandbox_harness.py")
# run as `python -I -S -c` in the sandbox: read (code, config) on stdin and hand over to the harness's run()
_BOOTSTRAP = """
def _read_all():
    import os
    chunks = []
    while chunk := os.read(0, 65536):
        chunks.append(chunk)
    return b''.join(chunks)
def _bootstrap():
    import marshal
    code, config = marshal.loads(_read_all())
    namespace = {'__name__': 'textdiff_sandbox_harness', '__builtins__': __builtins__}
    exec(code, namespace)
    namespace['run'](config)
_bootstrap()
"""
_READ_CHUNK = 65536
_AUDIT_HOOK = True  # tests switch the second layer off to show that the jail alone holds


class SandboxUnavailableError(RuntimeError):
    """The requested isolation cannot be set up on this machine; nothing was run. The message says why."""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run."""

    status: str
    """'passed' (the program reached its end / the tests passed), 'failed' (an exception, a refused operation, an
    early exit, a failed test), 'timeout' (wall-clock or CPU limit) or 'error' (crashed, killed, memory/output
    limit, or tests that could not run)."""
    detail: str = ""
    """the exception, signal or limit that decided the status."""
    stdout: str = ""
    """the first `output_bytes` of the program's standard output."""
    stderr: str = ""
    """the first `output_bytes` of the program's standard error."""
    wall_seconds: float = 0.0
    """how long the run took, jail included."""
    isolation: list[str] = field(default_factory=list)
    """the layers in effect, e.g. ['bwrap:user,pid,net,mount,ipc,uts', 'uid:65534', 'non-dumpable', 'seccomp',
    'rlimits', 'audit-hook', 'verdict:judge-jail']."""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@dataclass(frozen=True)
class Tests:
    """Trusted tests that judge a candidate's function from a separate jail."""

    code: str
    """defines `check(candidate)`, which raises (e.g. AssertionError) when the candidate is wrong."""
    entry_point: str
    """the name of the candidate's function that `check` receives."""
    setup: str = ""
    """trusted code run before `code` in the judge (HumanEval: the prompt, whose helpers some tests call)."""


def run_code(
    code: str,
    *,
    tests: Tests | None = None,
    timeout: float = 5.0,
    cpu_seconds: int | None = None,
    memory_mb: int = 512,
    file_mb: int = 8,
    output_bytes: int = 10_000,
    max_processes: int = 64,
    site_packages: bool = False,
    isolation: str = "jail",
) -> SandboxResult:
    """Run `code` (a whole Python program, or with `tests` a candidate defining `tests.entry_point`) in the sandbox
    and report what happened; never raises because of the code.

    timeout: wall-clock seconds for the whole run; cpu_seconds: CPU limit per process (default: timeout + 1).
    memory_mb: address-space limit; file_mb: largest file, total of /tmp, and most output per stream.
    site_packages: also mount the running environment's site-packages (read-only); numpy and the like then let the
    code read raw memory, which weakens the program-form verdict (not the tests form). isolation: 'jail', or
    'audit-hook-only' to accept running without the jail (see the module docstring).
    Raises SandboxUnavailableError when the isolation asked for cannot be set up, ValueError for bad limits.
    """
    if timeout <= 0 or memory_mb <= 0 or file_mb <= 0 or max_processes <= 0:
        raise ValueError(f"timeout, memory_mb, file_mb and max_processes must be positive, got {timeout}, "
                         f"{memory_mb}, {file_mb}, {max_processes}")
    if isolation not in ISOLATION_MODES:
        raise ValueError(f"unknown isolation {isolation!r}; valid: {', '.join(ISOLATION_MODES)}")
    if isolation == "jail" and (problem := jail.jail_problem()):
        raise SandboxUnavailableError(f"cannot build the sandbox jail: {problem}. Pass isolation='audit-hook-only' "
                                      "to run with Python-level protection only.")
    cpu = int(cpu_seconds or int(timeout) + 1)
    # (soft, hard); the CPU hard limit one second later, so that the soft one ends the process with SIGXCPU
    rlimits = {"RLIMIT_CPU": (cpu, cpu + 1), "RLIMIT_AS": (memory_mb << 20,) * 2, "RLIMIT_FSIZE": (file_mb << 20,) * 2,
               "RLIMIT_NOFILE": (64, 64), "RLIMIT_NPROC": (max_processes,) * 2, "RLIMIT_CORE": (0, 0)}
    run = _Run(isolation, site_packages=site_packages, file_bytes=file_mb << 20, output_bytes=output_bytes)
    try:
        if tests is None:
            run.start("program", {"code": code}, rlimits)
        else:
            j2c, c2j = os.pipe(), os.pipe()  # judge -> candidate, candidate -> judge
            try:
                run.start("judge", {"tests": tests.code, "setup": tests.setup, "entry_point": tests.entry_point,
                                    "rpc_in": c2j[0], "rpc_out": j2c[1]}, rlimits)
                run.start("serve", {"code": code, "entry_point": tests.entry_point, "rpc_in": j2c[0],
                                    "rpc_out": c2j[1]}, rlimits)
            finally:
                for fd in j2c + c2j:
                    os.close(fd)
        run.begin()
        run.wait(timeout)
    finally:
        run.stop()
    return run.result(timeout, cpu, file_mb)


class _Cell:
    """One sandboxed process of a run and what the caller has read from it."""

    def __init__(self, role: str, process: jail.Process, report_fd: int, config: bytes):
        self.role, self.process, self.report_fd = role, process, report_fd
        self.pending_stdin = config
        self.output = {"out": bytearray(), "err": bytearray()}  # the first `output_bytes` of stdout / stderr
        self.output_total = {"out": 0, "err": 0}
        self.report = bytearray()
        self.exited = False
        self.open_streams = 3  # stdout, stderr, report


class _Run:
    """The processes of one `run_code` call, the loop that feeds and reads them, and the verdict."""

    def __init__(self, isolation: str, *, site_packages: bool, file_bytes: int, output_bytes: int):
        self.isolation, self.site_packages = isolation, site_packages
        self.file_bytes, self.output_bytes = file_bytes, output_bytes
        self.nonce = secrets.token_hex(16)
        self.cells: dict[str, _Cell] = {}
        self.starting: list[tuple] = []  # (role, jail.StartingJail or jail.Process, report fd, config) not begun
        self.selector = selectors.DefaultSelector()
        self.workdir = tempfile.mkdtemp(prefix="textdiff_sandbox_") if isolation != "jail" else None
        self.start_time = time.monotonic()
        self.timed_out = self.output_exceeded = False

    # 1. start ------------------------------------------------------------------------------------------------
    def start(self, role: str, config: dict, rlimits: dict) -> None:
        """Launch one sandboxed process; `begin` lets all of them go on (jails are set up side by side)."""
        import marshal

        report_r, report_w = os.pipe()
        rpc = tuple(config[k] for k in ("rpc_in", "rpc_out") if k in config)
        config = {**config, "role": role, "nonce": self.nonce, "report_fd": report_w, "rlimits": rlimits,
                  "audit_hook": _AUDIT_HOOK}
        try:
            if self.isolation == "jail":
                config.update(uid=jail.SANDBOX_UID, verify=True,
                              write_roots=["/tmp", "/dev/null"], read_roots=None,
                              sys_path=jail.jail_sys_path(self.site_packages))
                program = [jail.interpreter().jail_executable(), "-I", "-S", "-c", _BOOTSTRAP]
                try:
                    started = jail.start_jailed(program, (report_w, *rpc), site_packages=self.site_packages,
                                                tmp_bytes=self.file_bytes)
                except jail.JailError as err:
                    os.close(report_r)
                    raise SandboxUnavailableError(f"cannot build the sandbox jail: {err}") from None
            else:
                interp = jail.interpreter()
                extra = list(interp.site_packages) if self.site_packages else []
                config.update(uid=None, verify=False, write_roots=[self.workdir, "/dev/null"], sys_path=extra,
                              read_roots=[interp.prefix, self.workdir, "/dev/null", "/dev/urandom", "/proc/self",
                                          *extra])
                program = [interp.executable, "-I", "-S", "-c", _BOOTSTRAP]
                started = jail.start_plain(program, (report_w, *rpc), cwd=self.workdir)
        finally:
            os.close(report_w)
        self.starting.append((role, started, report_r, marshal.dumps((_harness_code(), config))))

    def begin(self) -> None:
        while self.starting:
            role, started, report_r, config = self.starting.pop(0)
            if isinstance(started, jail.StartingJail):
                try:
                    process = started.finish()
                except jail.JailError as err:
                    os.close(report_r)
                    raise SandboxUnavailableError(f"cannot build the sandbox jail: {err}") from None
            else:
                process = started
            cell = _Cell(role, process, report_r, config)
            self.cells[role] = cell
            popen = process.popen
            for stream in (popen.stdin, popen.stdout, popen.stderr):
                os.set_blocking(stream.fileno(), False)
            os.set_blocking(report_r, False)
            self.selector.register(popen.stdin, selectors.EVENT_WRITE, (cell, "stdin"))
            self.selector.register(popen.stdout, selectors.EVENT_READ, (cell, "out"))
            self.selector.register(popen.stderr, selectors.EVENT_READ, (cell, "err"))
            self.selector.register(report_r, selectors.EVENT_READ, (cell, "report"))
            self.selector.register(process.exit_fd, selectors.EVENT_READ, (cell, "exit"))

    # 2. feed and read until the deciding process is done ----------------------------------------------------
    def wait(self, timeout: float) -> None:
        deciding = self.cells["judge" if "judge" in self.cells else "program"]
        deadline = self.start_time + timeout
        while not (deciding.exited and deciding.open_streams == 0):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.timed_out = True
                return
            for key, _ in self.selector.select(remaining):
                cell, what = key.data
                self._handle(key, cell, what)
                if self.output_exceeded:
                    return

    def _handle(self, key, cell: _Cell, what: str) -> None:
        if what == "stdin":
            try:
                written = os.write(key.fd, cell.pending_stdin[:_READ_CHUNK])
            except BrokenPipeError:
                written = len(cell.pending_stdin)
            cell.pending_stdin = cell.pending_stdin[written:]
            if not cell.pending_stdin:
                self.selector.unregister(key.fileobj)
                try:
                    cell.process.popen.stdin.close()
                except BrokenPipeError:
                    pass
            return
        if what == "exit":
            self.selector.unregister(key.fileobj)
            cell.exited = True
            if self.isolation != "jail":  # a plain process's leftovers would hold its pipes open
                cell.process.kill()
            return
        try:
            chunk = os.read(key.fd, _READ_CHUNK)
        except BlockingIOError:
            return
        if not chunk:
            self.selector.unregister(key.fileobj)
            cell.open_streams -= 1
            return
        if what == "report":
            if len(cell.report) < 1 << 20:  # the code may flood a report pipe it holds; the harness writes first
                cell.report += chunk
            return
        buffer = cell.output[what]
        buffer += chunk[: max(0, self.output_bytes - len(buffer))]
        cell.output_total[what] += len(chunk)
        if cell.output_total[what] > self.file_bytes:
            self.output_exceeded = True

    # 3. end everything ----------------------------------------------------------------------------------------
    def stop(self) -> None:
        for _, started, report_r, _ in self.starting:  # launched, never begun (another one failed)
            if isinstance(started, jail.StartingJail):
                started.abort()
            else:
                started.kill()
                started.close()
            os.close(report_r)
        for cell in self.cells.values():
            cell.process.kill()
            # what was still in the pipes when the processes ended
            for stream, buffer in zip((cell.process.popen.stdout, cell.process.popen.stderr), cell.output.values()):
                buffer += _drain(stream.fileno(), self.output_bytes - len(buffer))
            if len(cell.report) < 1 << 20:
                cell.report += _drain(cell.report_fd, 1 << 20)
            cell.process.close()
            os.close(cell.report_fd)
        self.selector.close()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # 4. verdict -----------------------------------------------------------------------------------------------
    def _lines(self, cell: _Cell) -> dict[str, str]:
        """The first line of each kind that carries this run's nonce."""
        found: dict[str, str] = {}
        for line in bytes(cell.report).split(b"\n"):
            parts = line.split(b" ")
            if len(parts) != 3 or not secrets.compare_digest(parts[0], self.nonce.encode()):
                continue
            kind = parts[1].decode(errors="replace")
            try:
                found.setdefault(kind, bytes.fromhex(parts[2].decode()).decode(errors="replace"))
            except ValueError:
                continue
        return found

    def result(self, timeout: float, cpu: int, file_mb: int) -> SandboxResult:
        wall = time.monotonic() - self.start_time
        reports = {role: self._lines(cell) for role, cell in self.cells.items()}
        deciding = "judge" if "judge" in self.cells else "program"
        for role, lines in reports.items():
            if "refuse" in lines:
                raise SandboxUnavailableError(f"the sandbox jail did not hold ({role}): {lines['refuse']}")
            # a process that ended by itself before its harness said ready never ran (one we ended may not have)
            if "ready" not in lines and not self.timed_out and (role == deciding or self.cells[role].exited):
                stderr = bytes(self.cells[role].output["err"]).decode(errors="replace").strip()[-1000:]
                raise SandboxUnavailableError(f"the sandbox {role} process did not start: {stderr or 'no output'}")
        code_cell = self.cells.get("program") or self.cells["serve"]
        isolation = self._isolation(reports)
        stdout = bytes(code_cell.output["out"]).decode(errors="replace")
        stderr = bytes(code_cell.output["err"]).decode(errors="replace")

        def make(status: str, detail: str) -> SandboxResult:
            return SandboxResult(status, detail, stdout, stderr, wall, isolation)

        if self.timed_out:
            return make("timeout", f"wall-clock limit {timeout}s")
        if self.output_exceeded:
            return make("error", f"file/output size limit {file_mb} MB")
        lines = reports[deciding]
        status, detail = lines.get("status"), lines.get("detail", "")
        killed = self._signal(code_cell)
        if status in ("failed", "error") and killed == "SIGXCPU":
            return make("timeout", f"CPU limit {cpu}s")
        if status == "failed" and detail.startswith(("MemoryError: memory limit", "file/output size limit")):
            return make("error", detail)
        if status in STATUSES:
            return make(status, detail)
        if deciding == "judge":
            judge_err = bytes(self.cells["judge"].output["err"]).decode(errors="replace").strip()[-1000:]
            return make("error", f"the judge ended without a verdict: {judge_err}")
        if killed == "SIGXCPU":
            return make("timeout", f"CPU limit {cpu}s")
        if killed == "SIGXFSZ":
            return make("error", f"file/output size limit {file_mb} MB")
        if killed:
            return make("error", f"killed by {killed}")
        return make("error", f"exited with code {code_cell.process.popen.returncode} before finishing")

    def _signal(self, cell: _Cell) -> str | None:
        """The signal that ended the harness, if any (bwrap reports 128 + signal; a plain process, -signal)."""
        rc = cell.process.popen.returncode
        number = rc - 128 if self.isolation == "jail" and rc and rc > 128 else (-rc if rc and rc < 0 else 0)
        if not number:
            return None
        return signal.Signals(number).name if number in signal.Signals._value2member_map_ else f"signal {number}"

    def _isolation(self, reports: dict[str, dict[str, str]]) -> list[str]:
        """The layers in effect, from what was configured and what every harness confirmed from inside."""
        import ast

        facts = [ast.literal_eval(lines["ready"]) for lines in reports.values() if "ready" in lines]
        layers = []
        if self.isolation == "jail":
            layers.append(f"bwrap:{jail.NAMESPACES}")
            uids = {f["uid"] for f in facts}
            if uids == {jail.SANDBOX_UID}:
                layers.append(f"uid:{jail.SANDBOX_UID}" + ("" if os.geteuid() == 0 else f"(host {os.geteuid()})"))
            if facts and not any(f.get("own_memory_readable", True) for f in facts):
                layers.append("non-dumpable")
            if facts and all(f.get("seccomp") == "2" for f in facts):
                layers.append("seccomp")
        layers += ["rlimits"] + (["audit-hook"] if _AUDIT_HOOK else [])
        if "judge" in self.cells:
            layers.append("verdict:judge-jail" if self.isolation == "jail" else "verdict:judge-process")
        else:
            layers.append("verdict:nonce")
        return layers


@functools.lru_cache(maxsize=1)
def _harness_code():
    """The harness, compiled once here (the sandboxed interpreter is this one, so the code object fits it)."""
    return compile(_HARNESS_PATH.read_text(), "<sandbox-harness>", "exec")


def _drain(fd: int, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        try:
            chunk = os.read(fd, _READ_CHUNK)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        if size < limit:
            chunks.append(chunk[: limit - size])
        size += len(chunk)
    return b"".join(chunks)


def jail_available() -> str | None:
    """None when the jail can be built here, else why not (the first run still proves it)."""
    return jail.jail_problem()


__all__ = ["ISOLATION_MODES", "STATUSES", "SandboxResult", "SandboxUnavailableError", "Tests", "jail_available",
           "run_code"]
