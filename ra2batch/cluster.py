"""Finding the Ray cluster a command runs on, the way Ray users expect, and never waiting forever.

Every command that needs a cluster takes ``--address``:

- unset: Ray's own rule: ``RAY_ADDRESS`` when set (as ``ray job submit`` sets it), else the cluster
  running on this machine (the one ``ray start --head`` recorded), else a new local Ray instance
  for this command alone;
- ``auto``: the cluster ``RAY_ADDRESS`` names or the one running here; an error when there is none;
- ``local``: a new local Ray instance, whatever runs here;
- ``HOST:PORT`` (or ``ray://HOST:PORT``): that cluster.

A command never passes its own resources (``num_cpus``) to a cluster it joins, and checks that the
cluster answers within ``CONNECT_TIMEOUT_S`` before handing over to ``ray.init``, whose own waits
on an address that is gone last minutes. A cluster recorded on this machine that no longer runs (a
stale ``ray_current_cluster``) is passed over for a new local instance, with a note saying so.
"""

from __future__ import annotations

import os
import socket
import sys

ADDRESS_HELP = ("Ray cluster to run on: auto (the one RAY_ADDRESS names, else the one running on this machine), "
                "local (a new Ray instance for this command), or HOST:PORT; default: RAY_ADDRESS, else the "
                "cluster running on this machine, else a new local instance")
CONNECT_TIMEOUT_S = 10.0


class ClusterError(RuntimeError):
    """No cluster to run on, or one that does not answer; the message names the address and what to do."""


def _reachable(address: str, timeout_s: float) -> bool:
    """Whether something listens at ``address`` (``HOST:PORT``, optionally ``ray://``-prefixed)."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def _recorded() -> str | None:
    """The cluster ``ray start`` recorded on this machine (Ray's ``ray_current_cluster``), if any."""
    from ray._private.utils import read_ray_address

    return read_ray_address()


def connect(address: str | None = None, *, require_running: bool = False, quiet: bool = False) -> str:
    """Join (or start) the cluster ``address`` names (see the module's rules); returns what it is,
    for a command's summary. ``require_running``: an error instead of a new local instance (warm
    pools live on a standing cluster). Raises :class:`ClusterError`."""
    import ray

    if ray.is_initialized():
        return "the Ray cluster this process runs in"
    if address == "local":
        ray.init(address="local", include_dashboard=False, log_to_driver=not quiet)
        return "a local Ray instance started for this command"
    explicit = address not in (None, "auto")
    env = os.environ.get("RAY_ADDRESS") or None
    target, source = (address, "--address") if explicit else (env, "RAY_ADDRESS") if env else (_recorded(), "this machine")
    if target is not None and target != "auto" and not _reachable(target, CONNECT_TIMEOUT_S):
        if source == "this machine" and not require_running and address is None:
            print(f"note: the Ray cluster recorded on this machine ({target}) is not running; starting Ray locally",
                  file=sys.stderr)
            target = None
        else:
            raise ClusterError(
                f"cannot reach the Ray cluster at {target} (from {source}) within {CONNECT_TIMEOUT_S:g} s: is it "
                f"running (`ray status --address {target}`)? Start one with `ray start --head`, or pass "
                "--address local to run on a new local Ray instance")
    if target is None:
        if require_running or address == "auto":
            raise ClusterError("no running Ray cluster: start one with `ray start --head`, set RAY_ADDRESS, or pass "
                               "--address HOST:PORT")
        ray.init(address="local", include_dashboard=False, log_to_driver=not quiet)
        return "a local Ray instance started for this command"
    ray.init(address=target, log_to_driver=not quiet)
    return f"the Ray cluster at {target} (from {source})"
