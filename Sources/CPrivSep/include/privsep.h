#ifndef POP3_PRIVSEP_H
#define POP3_PRIVSEP_H

#include <sys/types.h>
#include <stddef.h>

/// Forks and execs `path` with `argv` (NULL-terminated), with `channel` as its descriptor 3, standard input and
/// output on /dev/null (standard error is kept, for logs) and every other descriptor closed. SIGCHLD, SIGPIPE,
/// SIGINT, SIGTERM and SIGHUP are reset to their defaults and the signal mask is cleared; `no_new_privs` is set.
/// With `change_identity` non-zero the child first becomes `uid`/`gid` (supplementary groups: `gid` only) and
/// checks it cannot regain root; uid or gid (uid_t)-1 is then refused. Between fork and exec only async-signal-safe
/// calls are made. Returns the child's pid, or -1 with errno set (fork failed).
pid_t pop3_spawn(const char *path, char *const argv[], int change_identity, uid_t uid, gid_t gid, int channel);

/// Sends `length` bytes (at least 1) with one descriptor attached (SCM_RIGHTS), or none when `fd` < 0.
/// Returns bytes sent or -1 with errno set. Retries EINTR.
ssize_t pop3_send_with_fd(int socket, const void *bytes, size_t length, int fd);

/// Receives up to `length` bytes; a descriptor that came with them is stored in `*fd` (else -1). Descriptors
/// beyond the first are closed. Received descriptors are close-on-exec. Returns bytes read (0 at end of stream)
/// or -1 with errno set. Retries EINTR.
ssize_t pop3_receive_with_fd(int socket, void *bytes, size_t length, int *fd);

#endif
