"""What every ``ra2batch`` command line shares: flag names, exit codes, where messages go.

- Exit codes: 0 success; 2 a usage or input error (a flag, a config file, an input, a bundle or an
  output location that cannot be used; nothing was done); 1 a failure while running (the cluster,
  another writer, a job that stopped); 3 ``ra2batch train`` wrote its bundle but the bundle failed its
  quality check (``ra2batch.training.quality``: flagged in its bundle.json, the figures named on stderr).
- Streams: results and summaries on stdout; progress and notes on stderr; errors on stderr as one
  line, ``ra2batch COMMAND: error: ...``.
- Flags: ``--input`` is what a command reads, ``--output`` what it writes, ``--address`` the Ray
  cluster, ``--storage-options`` extra S3 settings. Names that earlier releases used stay as hidden
  aliases for one release.

Nothing here imports more than the standard library: building the parsers must stay fast.
"""

from __future__ import annotations

import argparse
import json
import sys

USAGE = 2
RUNTIME = 1
FLAGGED = 3


def error(command: str, message: object, code: int) -> int:
    """Print ``ra2batch COMMAND: error: <first line of message>`` to stderr; returns ``code``."""
    text = str(message).strip()
    print(f"ra2batch {command}: error: {text.splitlines()[0] if text else type(message).__name__}", file=sys.stderr)
    return code


def add_storage_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=json.loads, default=None, metavar="JSON",
                   help="extra S3 settings, e.g. '{\"endpoint_url\": \"http://127.0.0.1:9000\"}' (credentials and "
                        "endpoint also come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")


def add_address(p: argparse.ArgumentParser) -> None:
    from ra2batch.cluster import ADDRESS_HELP

    p.add_argument("--address", default=None, metavar="auto|local|HOST:PORT", help=ADDRESS_HELP)


def add_renamed(p: argparse.ArgumentParser, flag: str, *old: str, required: bool = False, **kwargs) -> None:
    """``flag`` with its earlier names ``old`` as hidden aliases. A required flag is checked by
    :func:`check_required` (argparse would demand the new name even when the old one is given)."""
    dest = flag.lstrip("-").replace("-", "_")
    p.add_argument(flag, dest=dest, **kwargs)
    hidden = {k: v for k, v in kwargs.items() if k in ("action", "type", "nargs", "choices")}
    for name in old:
        p.add_argument(name, dest=dest, help=argparse.SUPPRESS, default=argparse.SUPPRESS, **hidden)
    if required:
        p.set_defaults(**{f"_required_{dest}": flag})


def check_required(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """argparse's "the following arguments are required" for flags added by :func:`add_renamed`."""
    missing = [flag for key, flag in vars(args).items()
               if key.startswith("_required_") and getattr(args, key[len("_required_"):], None) is None]
    if missing:
        p.error(f"the following arguments are required: {', '.join(missing)}")
