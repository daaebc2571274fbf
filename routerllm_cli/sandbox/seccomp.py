"""The seccomp filter every sandboxed process runs under, built here as classic BPF bytes.

Two variants of one program. The full filter (installed by the child's bootstrap before any untrusted line)
refuses new processes (fork, vfork, clone without CLONE_THREAD; clone3 gets ENOSYS so libc falls back to clone
for threads) and execve. The spawn-allowing variant leaves those out: bubblewrap loads it from a file descriptor
and still has to exec the interpreter, which then stacks the full filter on top. Both refuse, with EPERM:
- SysV IPC and memfd_create (memory outside the address-space limit, and a channel between samples);
- socket() (with no network namespace, a Unix socket file of the host would otherwise be reachable);
- namespaces, mounts, chroot/pivot_root, ptrace and cross-process memory access, bpf, perf, userfaultfd,
  io_uring, the key store and file handles (ways out of the other layers, none needed by a HumanEval answer).
A syscall of a foreign architecture, or under the x32 numbering, is refused too: the same call under another
number is no way around the filter.
"""

from __future__ import annotations

import os
import struct

_DENY = ("shmget", "shmat", "shmctl", "shmdt", "semget", "semop", "semctl", "semtimedop", "msgget", "msgsnd",
         "msgrcv", "msgctl", "memfd_create", "socket", "unshare", "setns", "mount", "umount2", "pivot_root",
         "chroot", "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "userfaultfd", "perf_event_open",
         "keyctl", "add_key", "request_key", "io_uring_setup", "open_tree", "move_mount", "fsopen", "fsmount",
         "name_to_handle_at", "open_by_handle_at", "kcmp")
_SPAWN = ("fork", "vfork", "execve", "execveat")

# AUDIT_ARCH_* and syscall numbers (x86_64: asm/unistd_64.h; aarch64: asm-generic/unistd.h).
_TABLES: dict[str, tuple[int, dict[str, int]]] = {
    "x86_64": (0xC000003E, dict(
        fork=57, vfork=58, execve=59, execveat=322, clone=56, clone3=435, shmget=29, shmat=30, shmctl=31,
        shmdt=67, semget=64, semop=65, semctl=66, semtimedop=220, msgget=68, msgsnd=69, msgrcv=70, msgctl=71,
        memfd_create=319, socket=41, unshare=272, setns=308, mount=165, umount2=166, pivot_root=155, chroot=161,
        ptrace=101, process_vm_readv=310, process_vm_writev=311, bpf=321, userfaultfd=323, perf_event_open=298,
        keyctl=250, add_key=248, request_key=249, io_uring_setup=425, open_tree=428, move_mount=429, fsopen=430,
        fsmount=432, name_to_handle_at=303, open_by_handle_at=304, kcmp=312)),
    "aarch64": (0xC00000B7, dict(
        execve=221, execveat=281, clone=220, clone3=435, shmget=194, shmat=196, shmctl=195, shmdt=197,
        semget=190, semop=193, semctl=191, semtimedop=192, msgget=186, msgsnd=189, msgrcv=188, msgctl=187,
        memfd_create=279, socket=198, unshare=97, setns=268, mount=40, umount2=39, pivot_root=41, chroot=51,
        ptrace=117, process_vm_readv=270, process_vm_writev=271, bpf=280, userfaultfd=282, perf_event_open=241,
        keyctl=219, add_key=217, request_key=218, io_uring_setup=425, open_tree=428, move_mount=429, fsopen=430,
        fsmount=432, name_to_handle_at=264, open_by_handle_at=265, kcmp=272)),
}

_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K, ..., BPF_RET|K
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050001, 0x00050026  # SECCOMP_RET_ALLOW, RET_ERRNO|EPERM, |ENOSYS
_CLONE_THREAD = 0x10000


def supported() -> bool:
    return os.uname().machine in _TABLES


def build_filter(*, allow_spawn: bool = False, machine: str | None = None) -> bytes | None:
    """The filter as `struct sock_filter` bytes (native order), or None on an architecture without a table."""
    table = _TABLES.get(machine or os.uname().machine)
    if table is None:
        return None
    arch, nr = table
    checks = [(nr[name], "deny") for name in _DENY]
    if not allow_spawn:
        checks += [(nr[name], "deny") for name in _SPAWN if name in nr]
        checks += [(nr["clone3"], "nosys"), (nr["clone"], "clone")]
    head = 5
    allow_at = head + len(checks)
    labels = {"clone": allow_at + 1, "deny": allow_at + 5, "nosys": allow_at + 6}
    prog = [(_LD, 0, 0, 4),  # seccomp_data.arch
            (_JEQ, 1, 0, arch),
            (_RET, 0, 0, _EPERM),
            (_LD, 0, 0, 0),  # seccomp_data.nr
            (_JGE, labels["deny"] - 5, 0, 0x40000000)]
    for i, (number, what) in enumerate(checks):
        prog.append((_JEQ, labels[what] - (head + i) - 1, 0, number))
    prog += [(_RET, 0, 0, _ALLOW),
             (_LD, 0, 0, 16), (_JSET, 0, 1, _CLONE_THREAD), (_RET, 0, 0, _ALLOW), (_RET, 0, 0, _EPERM),  # clone
             (_RET, 0, 0, _EPERM),
             (_RET, 0, 0, _ENOSYS)]
    if any(not 0 <= jt <= 255 for _, jt, _, _ in prog):
        raise AssertionError("seccomp filter jump out of range")
    return b"".join(struct.pack("=HBBI", code, jt, jf, k) for code, jt, jf, k in prog)
