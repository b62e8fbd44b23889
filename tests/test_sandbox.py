"""The sandbox contains each kind of misbehaving program, reports it, and leaves nothing behind."""

import os
import socket
import tempfile
import time
from pathlib import Path

import pytest

from textdiff.rl.sandbox import run_code


def _leftovers() -> tuple[list[str], list[int]]:
    dirs = [p for p in os.listdir(tempfile.gettempdir()) if p.startswith("textdiff_sandbox_")]
    procs = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if b"textdiff_sandbox_" in Path(f"/proc/{pid}/cmdline").read_bytes():
                procs.append(int(pid))
        except OSError:
            pass
    return dirs, procs


@pytest.fixture
def contained():
    """Runs the test, then asserts no sandbox directory or process is left over."""
    before_dirs, _ = _leftovers()
    yield
    dirs, procs = _leftovers()
    assert not procs, f"sandbox processes left running: {procs}"
    assert set(dirs) <= set(before_dirs), f"sandbox directories left behind: {dirs}"


def _run(code: str, timeout: float = 5.0, **kwargs):
    start = time.monotonic()
    result = run_code(code, timeout=timeout, **kwargs)
    assert time.monotonic() - start < timeout + 3, "the caller was held past the timeout"
    return result


def test_a_correct_program_passes_and_its_output_is_captured(contained):
    result = _run("import math\nprint(math.factorial(5))\nassert sum(range(4)) == 6\n")
    assert result.status == "passed" and result.passed and result.stdout == "120\n"


def test_a_failing_assertion_fails(contained):
    result = _run("def f(x):\n    return x + 1\nassert f(1) == 3, 'wrong'\n")
    assert result.status == "failed" and "AssertionError: wrong" in result.detail
    assert _run("def f(:\n").status == "failed"  # syntax error


def test_infinite_loop_times_out(contained):
    result = _run("while True:\n    pass\n", timeout=1.0)
    assert result.status == "timeout"
    assert _run("import time\ntime.sleep(60)\n", timeout=1.0).status == "timeout"  # wall clock, no CPU used


def test_fork_bomb_is_refused(contained):
    result = _run("import os\nwhile True:\n    os.fork()\n", timeout=3.0)
    assert result.status == "failed" and "os.fork" in result.detail
    result = _run("import subprocess\nsubprocess.Popen(['sh', '-c', ':(){ :|:& };:'])\n", timeout=3.0)
    assert result.status == "failed" and "not allowed" in result.detail


def test_memory_bomb_hits_the_memory_limit(contained):
    result = _run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))\n", memory_mb=256)
    assert result.status == "error" and "memory" in result.detail.lower()


def test_writing_outside_its_directory_is_refused(contained, tmp_path):
    target = tmp_path / "outside.txt"
    caller_file = tmp_path / "caller.txt"
    caller_file.write_text("precious")
    for code in (f"open({str(target)!r}, 'w').write('x')", f"open({str(caller_file)!r}, 'a').write('x')",
                 f"import os\nos.remove({str(caller_file)!r})", f"import shutil\nshutil.rmtree({str(tmp_path)!r})",
                 f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')"):
        result = _run(code)
        assert result.status == "failed" and "not allowed" in result.detail, (code, result)
    assert not target.exists() and caller_file.read_text() == "precious"
    # inside its own (throwaway) directory it may write freely
    assert _run("open('scratch.txt', 'w').write('ok')\nassert open('scratch.txt').read() == 'ok'\n").passed


def test_reading_the_callers_files_is_refused(contained, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cr3t-token")
    for code in (f"print(open({str(secret)!r}).read())", f"import os\nprint(os.listdir({str(tmp_path)!r}))",
                 f"print(open({os.path.abspath(__file__)!r}).read())", "print(open('/etc/passwd').read())"):
        result = _run(code)
        assert result.status == "failed" and "not allowed" in result.detail, (code, result)
        assert "s3cr3t" not in result.stdout and "secret.txt" not in result.stdout


def test_opening_a_socket_is_refused(contained):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        result = _run(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1).sendall(b'hi')\n")
        assert result.status == "failed" and "not allowed" in result.detail
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever connected
    finally:
        server.close()


def test_huge_output_is_cut_at_the_file_size_limit(contained):
    result = _run("while True:\n    print('x' * 100_000)\n", file_mb=1, output_bytes=1000)
    assert result.status == "error" and "size limit" in result.detail
    assert len(result.stdout) == 1000


def test_os_exit_is_not_a_pass(contained):
    result = _run("import os\nos._exit(0)\nassert False\n")
    assert result.status == "error" and "before finishing" in result.detail
    assert _run("raise SystemExit(3)\n").status == "failed"
    assert _run("import sys\nsys.exit(0)\n").status == "passed"


def test_segfault_is_reported_not_propagated(contained):
    result = _run("import faulthandler\nfaulthandler._sigsegv()\n")
    assert result.status == "error" and "SIGSEGV" in result.detail


def test_bad_limits_raise():
    with pytest.raises(ValueError, match="positive"):
        run_code("print(1)", timeout=0)
