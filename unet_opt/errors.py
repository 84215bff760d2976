"""The one exception type for user mistakes: the CLI prints it as a single `error:` line, exit 2."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by Slurm, Kubernetes, systemd, `kill`): handled as Ctrl-C, and the exit code is 143."""
