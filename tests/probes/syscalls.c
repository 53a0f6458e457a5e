/* What the seccomp filter lets a container do: each system call the default
 * filter refuses, tried, printed as "name=ERRNO" (the errno's name, or "ok").
 * Built static with musl-gcc by tests/test_seccomp.py, run inside containers.
 * Arguments are harmless where the call would succeed: the point is which
 * error comes back (the filter's EPERM or ENOSYS, or the kernel's own). */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/timex.h>
#include <stdlib.h>
#include <unistd.h>

static const char *name(long result) {
    if (result >= 0) return "ok";
    switch (errno) {
    case EPERM: return "EPERM";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case ESRCH: return "ESRCH";
    case ENOENT: return "ENOENT";
    case ENOTTY: return "ENOTTY";
    case EACCES: return "EACCES";
    case E2BIG: return "E2BIG";
    case ENOKEY: return "ENOKEY";
    default: return strerror(errno);
    }
}

#define TRY(label, call) do { errno = 0; long r_ = (call); printf("%s=%s\n", label, name(r_)); } while (0)

int main(int argc, char **argv) {
    long outside = argc > 1 ? atol(argv[1]) : 999999;
    TRY("unshare_user", syscall(SYS_unshare, CLONE_NEWUSER));
    errno = 0;
    long cloned = syscall(SYS_clone, CLONE_NEWUSER | 17 /* SIGCHLD */, 0, 0, 0, 0);
    if (cloned == 0) _exit(0); /* the child, without the filter */
    printf("clone_user=%s\n", name(cloned));
    TRY("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
    TRY("add_key", syscall(SYS_add_key, "user", "squish", "x", 1, -3));
    TRY("request_key", syscall(SYS_request_key, "user", "squish", 0, 0));
    TRY("bpf", syscall(SYS_bpf, 0, 0, 0));
    TRY("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
    TRY("userfaultfd", syscall(SYS_userfaultfd, 0));
    TRY("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
    TRY("kexec_file_load", syscall(SYS_kexec_file_load, -1, -1, 0, 0, 0));
    TRY("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, 0, 0));
    TRY("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
    TRY("fsopen", syscall(430 /* fsopen */, "tmpfs", 0));
    TRY("fspick", syscall(433 /* fspick */, -1, "/", 0));
    TRY("open_tree", syscall(428 /* open_tree */, -1, "/", 0));
    TRY("move_mount", syscall(429 /* move_mount */, -1, "", -1, "", 0));
    TRY("mount_setattr", syscall(442 /* mount_setattr */, -1, "", 0, 0, 0));
    TRY("tiocsti", syscall(SYS_ioctl, 0, TIOCSTI, "x"));
    TRY("tiocsti_high_bits", syscall(SYS_ioctl, 0, (1UL << 32) | TIOCSTI, "x"));
    TRY("tioclinux", syscall(SYS_ioctl, 0, TIOCLINUX, "x"));
    TRY("clone3", syscall(435 /* clone3 */, 0, 0));
    TRY("io_uring_setup", syscall(425 /* io_uring_setup */, 1, 0));
    {
        struct timex query = {0}; /* modes 0: only reads the clock's state */
        TRY("adjtimex_query", syscall(SYS_adjtimex, &query));
    }
    TRY("ptrace_outside", syscall(SYS_ptrace, 16 /* PTRACE_ATTACH */, outside, 0, 0));
    TRY("getpid", syscall(SYS_getpid));
    TRY("fionread", syscall(SYS_ioctl, 0, FIONREAD, &outside));
    return 0;
}
