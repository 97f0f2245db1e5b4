/* Child processes for the CLI, never through a shell: an argv array goes to
 * posix_spawnp as it is, so no path, flag or file name is ever read as shell
 * syntax. The child gets this process's environment. */
#include <errno.h>
#include <spawn.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/cli.h"

extern char **environ;

int fy_cli_spawn(char *const argv[], int out_fd, int err_fd, pid_t *pid, fy_err *err) {
    posix_spawn_file_actions_t fa;
    int rc = posix_spawn_file_actions_init(&fa);
    if (rc) return fy_fail(err, "cannot run %s (%s)", argv[0], strerror(rc));
    if (out_fd >= 0) rc = posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
    if (!rc && err_fd >= 0) rc = posix_spawn_file_actions_adddup2(&fa, err_fd, STDERR_FILENO);
    if (!rc) rc = posix_spawnp(pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc) return fy_fail(err, "cannot run %s (%s)", argv[0], strerror(rc));
    return 0;
}

int fy_cli_wait(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return 127;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
