"""A seccomp-BPF filter for the sandbox jail, built as raw classic-BPF bytes (what `bwrap --seccomp FD` loads).

The jail's namespaces already hide the host; the filter removes the kernel interfaces that could reach past them
or attack the kernel from inside: tracing and cross-process memory access (ptrace, process_vm_*, pidfd_*), new
namespaces and mounts (unshare, setns, clone with CLONE_NEW*, mount and the new mount API), keyrings, bpf,
perf_event_open, userfaultfd, io_uring (whose operations bypass seccomp), module / kexec / swap / reboot / clock
calls, sockets other than AF_UNIX, `prctl(PR_SET_DUMPABLE)` (the harness relies on the process staying
non-dumpable so that /proc/self/mem is closed to it) and TIOCSTI. A refused call fails with EPERM (clone3 with
ENOSYS, so that libc falls back to clone, whose flags the filter can read); a foreign architecture or the x32 ABI
kills the process.

Only x86-64 is built here (`build_filter` raises elsewhere): the syscall numbers are per architecture and the
filter has only been exercised on x86-64.
"""

from __future__ import annotations

import platform
import struct

# classic BPF opcodes (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS: A = 32-bit word of seccomp_data at offset k
_JEQ = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET = 0x06  # BPF_RET | BPF_K
_RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
_RET_ALLOW = 0x7FFF0000
_EPERM, _ENOSYS = 1, 38

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]  (little-endian low words)
_OFF_NR, _OFF_ARCH = 0, 4


def _arg(i: int) -> int:
    return 16 + 8 * i


_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_SYSCALL_BIT = 0x40000000

# x86-64 numbers (arch/x86/entry/syscalls/syscall_64.tbl) of the calls refused outright
DENIED_X86_64 = {
    "ptrace": 101, "syslog": 103, "modify_ldt": 154, "pivot_root": 155, "personality": 135, "uselib": 134,
    "vhangup": 153, "adjtimex": 159, "chroot": 161, "acct": 163, "settimeofday": 164, "mount": 165,
    "umount2": 166, "swapon": 167, "swapoff": 168, "reboot": 169, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "init_module": 175, "delete_module": 176, "quotactl": 179,
    "lookup_dcookie": 212, "clock_settime": 227, "kexec_load": 246, "add_key": 248, "request_key": 249,
    "keyctl": 250, "unshare": 272, "perf_event_open": 298, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "clock_adjtime": 305, "setns": 308, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "finit_module": 313, "kexec_file_load": 320, "bpf": 321, "userfaultfd": 323, "pidfd_send_signal": 424,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "open_tree": 428, "move_mount": 429,
    "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "pidfd_open": 434, "pidfd_getfd": 438,
    "process_madvise": 440, "mount_setattr": 442, "quotactl_fd": 443, "process_mrelease": 448,
}
_NR_IOCTL, _NR_SOCKET, _NR_SOCKETPAIR, _NR_CLONE, _NR_PRCTL, _NR_CLONE3 = 16, 41, 53, 56, 157, 435
_AF_UNIX = 1
_PR_SET_DUMPABLE = 4
_TIOCSTI = 0x5412
# CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)  # struct sock_filter, native byte order


def _deny_if_arg(nr: int, arg: int, value: int, *, mask: bool = False, unless: bool = False) -> list[bytes]:
    """`nr` with args[arg] == value (or & value when `mask`) -> EPERM; `unless` inverts the test. Leaves the
    syscall number back in A for the checks that follow."""
    test = _op(_JSET if mask else _JEQ, value, 0, 1) if not unless else _op(_JEQ, value, 1, 0)
    return [
        _op(_JEQ, nr, 0, 4),  # another syscall: skip this block
        _op(_LD_W_ABS, _arg(arg)),
        test,  # true -> the next instruction (refuse); false -> reload nr and go on
        _op(_RET, _RET_ERRNO | _EPERM),
        _op(_LD_W_ABS, _OFF_NR),
    ]


def build_filter() -> bytes:
    """The compiled filter (an array of struct sock_filter) for this machine's architecture."""
    if platform.machine() not in ("x86_64", "AMD64"):
        raise OSError(f"the seccomp filter is built for x86-64 only, not {platform.machine()}")
    prog = [
        _op(_LD_W_ABS, _OFF_ARCH),
        _op(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _op(_RET, _RET_KILL_PROCESS),  # a foreign ABI (e.g. int 0x80 i386 calls)
        _op(_LD_W_ABS, _OFF_NR),
        _op(_JGE, _X32_SYSCALL_BIT, 0, 1),
        _op(_RET, _RET_KILL_PROCESS),  # the x32 ABI has its own numbers: refuse all of it
    ]
    for nr in sorted(DENIED_X86_64.values()):
        prog += [_op(_JEQ, nr, 0, 1), _op(_RET, _RET_ERRNO | _EPERM)]
    prog += [_op(_JEQ, _NR_CLONE3, 0, 1), _op(_RET, _RET_ERRNO | _ENOSYS)]  # its flags sit behind a pointer
    prog += _deny_if_arg(_NR_CLONE, 0, _CLONE_NEW_ANY, mask=True)
    prog += _deny_if_arg(_NR_SOCKET, 0, _AF_UNIX, unless=True)
    prog += _deny_if_arg(_NR_SOCKETPAIR, 0, _AF_UNIX, unless=True)
    prog += _deny_if_arg(_NR_PRCTL, 0, _PR_SET_DUMPABLE)
    prog += _deny_if_arg(_NR_IOCTL, 1, _TIOCSTI)
    prog.append(_op(_RET, _RET_ALLOW))
    return b"".join(prog)


__all__ = ["DENIED_X86_64", "build_filter"]
