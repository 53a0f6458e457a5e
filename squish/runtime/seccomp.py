"""The default seccomp filter of every container (``[security] seccomp = "default"``).

Built once per runtime with libseccomp (Debian's libseccomp2, through
pyseccomp), never as hand-written BPF, and given to bwrap (``--seccomp FD``)
for the container's command and to the exec server for every exec.
Modelled on podman's default (containers-common's ``seccomp.json``) and
Flatpak's:

- an allowlist: what ordinary programs use (files, memory, processes,
  signals, sockets, time, ...); a system call the filter does not know
  (one newer than it, or unusual) fails with ENOSYS, as if the kernel had
  none, which is what makes libc fall back (``clone3`` to ``clone``);
- refused with EPERM, the kernel's word for "not allowed": making a user
  namespace from inside (``unshare``/``clone`` with ``CLONE_NEWUSER``),
  the keyring (``keyctl``, ``add_key``, ``request_key``), ``bpf``,
  ``perf_event_open``, ``userfaultfd``, ``kexec_*``, ``open_by_handle_at``,
  mounting (``mount``, ``umount2``, ``pivot_root`` and the new mount API:
  ``fsopen``, ``fsconfig``, ``fsmount``, ``fspick``, ``open_tree``,
  ``move_mount``, ``mount_setattr``), kernel modules, setting the clock,
  swap, reboot, ``io_uring`` (as docker's default since 2023: a large
  surface of kernel bugs; programs fall back to plain system calls), and
  ``ioctl``'s ``TIOCSTI`` and ``TIOCLINUX`` (typing into, or taking over,
  a terminal).

The filter is for the host's own architecture only: a 32-bit (i386, x32)
program in a container is killed at its first system call (run it with
``seccomp = "unconfined"``). Each architecture more doubled the filter,
and what loading it costs a start (1.10x a start without it, against
1.03x: ``bench/start_latency.py``).

``ptrace`` stays allowed, as in podman's default for current kernels: a
container's pid namespace holds only its own processes, so it can trace
nothing outside (strace and debuggers work inside).
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Iterator

import pyseccomp as seccomp

_CLONE_NEWUSER = 0x10000000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C
_LOW32 = 0xFFFFFFFF

# What a container's processes may call. Names the kernel of an
# architecture does not have are skipped there.
ALLOWED = (
    # files and directories
    "access",
    "chdir",
    "chmod",
    "chown",
    "chown32",
    "close",
    "close_range",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "getcwd",
    "getdents",
    "getdents64",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "_llseek",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "newfstatat",
    "open",
    "openat",
    "openat2",
    "pread64",
    "preadv",
    "preadv2",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "rmdir",
    "sendfile",
    "sendfile64",
    "setxattr",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "tee",
    "truncate",
    "truncate64",
    "umask",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vmsplice",
    "write",
    "writev",
    "fanotify_mark",
    "memfd_create",
    "name_to_handle_at",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "futimesat",
    # memory
    "brk",
    "madvise",
    "membarrier",
    "mincore",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mremap",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "remap_file_pages",
    "get_mempolicy",
    "set_mempolicy",
    "mbind",
    "process_madvise",
    "process_mrelease",
    # processes, threads, scheduling
    "arch_prctl",
    "capget",
    "capset",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "fork",
    "vfork",
    "futex",
    "futex_time64",
    "futex_waitv",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "gettid",
    "getuid",
    "getuid32",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "pidfd_getfd",
    "pidfd_open",
    "pidfd_send_signal",
    "prctl",
    "prlimit64",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "rseq",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "tgkill",
    "tkill",
    "ugetrlimit",
    "uname",
    "wait4",
    "waitid",
    "waitpid",
    "times",
    "sysinfo",
    "ipc",
    "seccomp",
    "restart_syscall",
    "sigreturn",
    "rt_sigreturn",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sigaction",
    "sigaltstack",
    "signal",
    "signalfd",
    "signalfd4",
    "sigpending",
    "sigprocmask",
    "sigsuspend",
    "pause",
    "alarm",
    "nice",
    "set_mempolicy_home_node",
    # waiting, events, time
    "clock_getres",
    "clock_getres_time64",
    "clock_gettime",
    "clock_gettime64",
    "clock_nanosleep",
    "clock_nanosleep_time64",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "gettimeofday",
    "adjtimex",  # a query without CAP_SYS_TIME (ntp_gettime); setting the clock needs it
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_pgetevents_time64",
    "io_setup",
    "io_submit",
    "nanosleep",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pselect6",
    "pselect6_time64",
    "select",
    "_newselect",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    # pipes, sockets, IPC
    "accept",
    "accept4",
    "bind",
    "connect",
    "getpeername",
    "getsockname",
    "getsockopt",
    "listen",
    "pipe",
    "pipe2",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "send",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setsockopt",
    "shutdown",
    "socket",
    "socketcall",
    "socketpair",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedreceive_time64",
    "mq_timedsend",
    "mq_timedsend_time64",
    "mq_unlink",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    # architecture-specific helpers
    "modify_ldt",
    "cacheflush",
    "breakpoint",
    "set_tls",
    "riscv_flush_icache",
    "s390_pci_mmio_read",
    "s390_pci_mmio_write",
    "sync_file_range2",
)

# Refused with EPERM rather than ENOSYS: what the filter knows and forbids.
REFUSED = (
    "add_key", "keyctl", "request_key", "bpf", "perf_event_open", "userfaultfd",
    "kexec_load", "kexec_file_load", "open_by_handle_at", "mount", "umount", "umount2",
    "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount",
    "mount_setattr", "init_module", "finit_module", "delete_module", "create_module",
    "acct", "swapon", "swapoff", "reboot", "settimeofday", "clock_settime",
    "clock_settime64", "clock_adjtime", "clock_adjtime64", "stime", "syslog",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "quotactl", "quotactl_fd", "setns", "chroot", "iopl", "ioperm", "lookup_dcookie",
    "nfsservctl", "vhangup", "uselib", "ustat", "sysfs", "_sysctl", "fanotify_init",
    "kcmp", "sethostname", "setdomainname",
)  # fmt: skip

_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)  # podman's: Linux, 32-bit, query


@functools.cache
def default_filter() -> bytes:
    """The default filter, as BPF (what bwrap's ``--seccomp`` reads)."""
    action_refused = seccomp.ERRNO(errno.EPERM)
    rules = seccomp.SyscallFilter(seccomp.ERRNO(errno.ENOSYS))
    # A tree of the system calls, not a list: each call is checked in a few
    # comparisons instead of up to a few hundred.
    rules.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    for name in ALLOWED:
        _add(rules, seccomp.ALLOW, name)
    for name in REFUSED:
        _add(rules, action_refused, name)
    # Making a user namespace from inside: the rest of clone and unshare is allowed.
    for name in ("clone", "unshare"):
        _add(rules, seccomp.ALLOW, name, seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, 0))
        _add(
            rules,
            action_refused,
            name,
            seccomp.Arg(0, seccomp.MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER),
        )
    # ioctl, but TIOCSTI and TIOCLINUX. The kernel reads the request as 32
    # bits, so the filter must too (an unconditional allow would override
    # any refusal): every other low-32-bit value is allowed, by masks.
    for mask, value in _all_but(32, (_TIOCSTI, _TIOCLINUX)):
        _add(rules, seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, mask, value))
    for request in (_TIOCSTI, _TIOCLINUX):
        _add(rules, action_refused, "ioctl", seccomp.Arg(1, seccomp.MASKED_EQ, _LOW32, request))
    for persona in _PERSONALITIES:
        _add(rules, seccomp.ALLOW, "personality", seccomp.Arg(0, seccomp.EQ, persona))
    read, write = os.pipe()
    try:
        with os.fdopen(write, "wb") as sink:
            rules.export_bpf(sink)
        return _read_all(read)
    finally:
        os.close(read)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _add(rules: seccomp.SyscallFilter, action: int, name: str, *args: seccomp.Arg) -> None:
    number = seccomp.resolve_syscall(seccomp.Arch.NATIVE, name)
    if number < 0:
        return  # not a system call of this architecture (libseccomp's pseudo-numbers)
    rules.add_rule(action, number, *args)


def _all_but(bits: int, excluded: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """(mask, value) pairs whose matches are exactly the ``bits``-bit values not excluded.

    From the top bit down: a branch no excluded value shares is one pair;
    a branch that is an excluded value itself gets none.
    """

    def cover(mask: int, value: int, bit: int, left: tuple[int, ...]) -> Iterator[tuple[int, int]]:
        if not left:
            yield mask, value
            return
        if bit < 0:
            return  # exactly an excluded value
        for chosen in (0, 1 << bit):
            sub = tuple(e for e in left if e & (1 << bit) == chosen)
            yield from cover(mask | 1 << bit, value | chosen, bit - 1, sub)

    yield from cover(0, 0, bits - 1, excluded)
