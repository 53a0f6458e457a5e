"""``squish run FILE``: one container in the foreground, without a daemon.

Registered as a verb by the ``squish`` command (``squish.main``), which
imports this module only when the verb runs or its options are asked for.
It uses the daemon's layer settings (``squish.daemon.config``) and runtime,
prints the container's id, copies its log to stdout until it exits, and
stops it on Ctrl-C or SIGTERM; its exit status is the container's.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
from pathlib import Path

import anyio

from squish import paths
from squish.daemon.config import checked_host_ip, layer_settings, read_config
from squish.errors import SquishError
from squish.model.host import load_squishfile
from squish.reconcile.spec import container_spec
from squish.runtime import DEFAULT_HOST_IP, DEFAULT_STOP_GRACE, ContainerSpec
from squish.runtime.bwrap_runtime import BwrapRuntime


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="the squishfile to run")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="layer cache, built-in base and logs (default: $XDG_STATE_HOME/squish)",
    )
    parser.add_argument(
        "--host-ip",
        default=os.environ.get("SQUISH_HOST_IP", DEFAULT_HOST_IP),
        help="address port forwards bind to unless a port says otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_GRACE,
        help="seconds between SIGTERM and SIGKILL on Ctrl-C (default: %(default)s)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="layer settings, as for the daemon (default: $SQUISH_CONFIG, else "
        "$XDG_CONFIG_HOME/squish/config.toml if it exists)",
    )


def _refuse_root() -> None:
    if os.getuid() == 0:
        raise SquishError(
            "squish is rootless-only and will not run containers as root; "
            "run it as an ordinary user (e.g. runuser -u USER -- squish ...)"
        )


def run(args: argparse.Namespace) -> int:
    """Run one squishfile in the foreground until it exits or Ctrl-C."""
    _refuse_root()
    args.host_ip = checked_host_ip(args.host_ip)
    squishfile = load_squishfile(args.file)
    state = args.state_dir or paths.state_dir()
    # The same layer settings as the daemon: its config file and environment.
    store = layer_settings(read_config(args.config)).store(state)
    spec = container_spec(squishfile, store)
    return anyio.run(_run_foreground, spec, state, args)


async def _run_foreground(spec: ContainerSpec, state: Path, args: argparse.Namespace) -> int:
    run_dir = paths.runtime_dir() / f"run-{os.getpid()}"
    log_path = state / "logs" / f"{spec.name}.log"
    offset = log_path.stat().st_size if log_path.exists() else 0
    try:
        async with BwrapRuntime(
            run_dir=run_dir, log_dir=state / "logs", default_host_ip=args.host_ip
        ) as runtime:
            with (
                runtime.subscribe() as exits,
                anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals,
            ):
                container = await runtime.start(spec)
                ports = ", ".join(p.describe(args.host_ip) for p in container.ports)
                if args.json:
                    print(json.dumps({"id": container.id, "name": container.name}), flush=True)
                else:
                    print(container.id, flush=True)
                    print(
                        f"squish: {container.name} running"
                        + (f", ports {ports}" if ports else "")
                        + f"; log {log_path}; Ctrl-C stops it",
                        file=sys.stderr,
                    )
                async with anyio.create_task_group() as tg:
                    if not args.json:
                        tg.start_soon(_follow, log_path, offset)

                    async def stop_on_signal() -> None:
                        async for _ in signals:
                            await runtime.stop(container.id, grace=args.stop_timeout)
                            return

                    tg.start_soon(stop_on_signal)
                    async for event in exits:
                        if event.container_id == container.id:
                            break
                    await anyio.sleep(0.05)  # let the follower print the last lines
                    tg.cancel_scope.cancel()
                if event.reason:
                    print(f"squish: {event.reason}", file=sys.stderr)
                return event.exit_code
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


async def _follow(path: Path, offset: int) -> None:
    """Copy what the container logs to our stdout (like an attached podman run)."""
    async with await anyio.open_file(path, "rb") as log:
        await log.seek(offset)
        while True:
            chunk = await log.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            else:
                await anyio.sleep(0.05)
