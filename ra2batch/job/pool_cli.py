"""``ra2batch pool`` and ``jobs/model_pool.py``: start, list and stop warm model pools on a running cluster.

    ra2batch pool start --models s3://models/v3     # the actors load the bundle once
    ra2batch score --input ... --output ...          # every later job with that bundle uses them
    ra2batch pool stop                               # give their CPUs/GPUs back

Needs a cluster that outlives the command (``ray start --head``, ``RAY_ADDRESS`` or ``--address``): a
pool in a Ray started by the command itself would die with it.
"""

from __future__ import annotations

import argparse
import sys

from ra2batch.cliutil import RUNTIME, USAGE, add_address, add_storage_options, error


def _at_least(low: float, kind: type):
    """An argparse type: a number of ``kind`` no smaller than ``low``."""
    def parse(text: str):
        value = kind(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}, got {text}")
        return value
    parse.__name__ = kind.__name__  # argparse names it in "invalid int value"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=("start", "list", "stop"),
                   help="start: load a bundle into detached model actors; list: the running pools; "
                   "stop: kill pools (all, or --model-version's)")
    p.add_argument("--models", metavar="URI", help="start: model bundle, folder or s3://; default: the built-in "
                   "demo bundle")
    add_storage_options(p)
    add_address(p)
    p.add_argument("--model-version", metavar="HASH", help="stop: only the pool of this model version")
    g = p.add_argument_group("pool size (start; unset ones are sized like the scoring job's model actors)")
    g.add_argument("--actors", type=_at_least(1, int), metavar="N", help="model actors (fused detector + joint models)")
    g.add_argument("--actor-cpus", type=_at_least(0.01, float), metavar="N", help="CPUs reserved by each actor")
    g.add_argument("--actor-gpus", type=_at_least(0, float), metavar="N", help="GPUs reserved by each actor (fractions allowed)")
    g.add_argument("--torch-threads", type=_at_least(1, int), metavar="N", help="intra-op threads of each actor")
    g.add_argument("--decode-in-actors", action=argparse.BooleanOptionalAction, default=None,
                   help="the actors read and decode the files too (default: on pools without GPUs, where the same "
                   "cores would decode them anyway and a job then starts no worker processes); off: jobs decode "
                   "in their own CPU tasks (default with GPUs: decoding stays off the GPUs' critical path)")


def _config(args: argparse.Namespace):
    from ra2batch.job.config import JobConfig

    gpu = {"fuse_models": True, "detector_gpus": args.actor_gpus} if args.actor_gpus is not None else {}
    return JobConfig().merged({"detector_actors": args.actors, "actor_cpus": args.actor_cpus,
                               "torch_threads": args.torch_threads, "decode_in_actors": args.decode_in_actors, **gpu})


def main(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ValueError as e:
        return error("pool", e, USAGE)
    from ra2batch.cluster import ClusterError, connect
    from ra2batch.job import model_pool
    from ra2batch.job.pipeline import JobError, load_models

    try:
        bundle, uri, options = load_models(args.models, args.storage_options) if args.action == "start" else (
            None, None, None)
    except JobError as e:
        return error("pool", e, USAGE)
    try:
        connect(args.address, require_running=True, quiet=True)
        _act(args, config, bundle, uri, options)
    except (ClusterError, model_pool.PoolError) as e:
        return error("pool", e, RUNTIME)
    return 0


def _act(args: argparse.Namespace, config, bundle, uri: str | None, options) -> None:
    from ra2batch.job import model_pool

    if args.action == "start":
        model_pool.start_pool(uri, options, bundle.model_version, config,
                              progress=lambda m: print(m, file=sys.stderr, flush=True))
        print(f"model pool for {bundle.model_version} running; jobs scoring with this bundle use it "
              "(--model-pool auto, the default)")
    elif args.action == "list":
        pools = model_pool.running_pools()
        if not pools:
            print("no warm model pools on this cluster")
        for version, pool in sorted(pools.items()):
            info = pool.describe()
            print(f"{version}: {info['actors']} actor(s) on {info['device']}, {info['cpus']:g} CPU and "
                  f"{info['gpus']:g} GPU each, decoding {'in the actors' if info['decodes'] else 'in job tasks'}, "
                  f"models {info['models']}")
    else:
        stopped = model_pool.stop_pools(args.model_version)
        print(f"stopped {len(stopped)} model actor(s)" + (f": {', '.join(stopped)}" if stopped else
              (f" (no pool for model {args.model_version})" if args.model_version else " (no pools running)")))
