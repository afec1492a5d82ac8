"""A network namespace that holds only the loopback interface, for running Ray where traffic must not
leave the machine (tests, benchmarks): Ray advertises a node address of its own choosing (the host's
external interface even when told 127.0.0.1), so the only sure bound is a namespace where no other
interface exists. Needs `unshare` and `ip` (util-linux, iproute2) and root or user namespaces."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence

from pathrt.errors import DistributedError


def in_loopback_namespace() -> bool:
    """Whether this process sees no network interface but `lo`."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def loopback_command(argv: Sequence[str]) -> list[str]:
    """`argv` run in a new network namespace with only `lo`, brought up (127.0.0.1 works, nothing else
    exists); DistributedError if such a namespace cannot be made here (never a fallback to the host's)."""
    command = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    try:
        probe = subprocess.run([*command, "python3", "-c", "import socket; print(socket.if_nameindex())"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DistributedError(f"cannot make a loopback-only network namespace ({exc}); install util-linux and "
                               "iproute2 and run as root (or with user namespaces)") from exc
    if probe.returncode != 0 or "'lo'" not in probe.stdout or probe.stdout.count("(") != 1:
        raise DistributedError("cannot make a loopback-only network namespace (`unshare --net` + `ip link set lo "
                               f"up` said: {(probe.stderr or probe.stdout).strip()[:300]}); run as root (or with "
                               "user namespaces)")
    return [*command, *argv]
