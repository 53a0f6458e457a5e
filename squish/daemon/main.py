"""The squish daemon: ``squish daemon`` (also installed as ``squishd``).

Wires the parts together for one state directory: the directory source, the
real runtime, the layer store, the reconciler, the JSON API on a unix socket
and the Prometheus exporter. Structured concurrency throughout: everything
runs in one task group, and leaving it (SIGTERM, SIGINT) stops every
container cleanly before the process exits 0.

Rootless only: as uid 0 it refuses to start unless told ``--allow-root``.
One daemon per state directory: an exclusive lock on ``daemon.lock`` there;
a second daemon says who holds it and leaves the live one alone. A socket
left behind by a killed daemon is replaced; one that answers is never
touched, nor removed, whichever state directory the second daemon has.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

import anyio

from squish import __version__, paths
from squish.daemon import sdnotify
from squish.daemon.api import check_socket, make_app, serve, serve_tcp, webhook_app
from squish.daemon.config import (
    LayerSettings,
    allowed_host_paths,
    checked_host_ip,
    guard_settings,
    layer_settings,
    read_config,
)
from squish.daemon.control import DaemonControl
from squish.daemon.layer_admin import LayerAdmin
from squish.daemon.metrics import Metrics
from squish.daemon.source_admin import SourceAdmin
from squish.errors import SquishError
from squish.layers import LayerStore
from squish.model.placement import Node
from squish.reconcile.plan import Backoff
from squish.reconcile.reconciler import Reconciler
from squish.runtime import DEFAULT_HOST_IP, DEFAULT_START_TIMEOUT, DEFAULT_STOP_GRACE
from squish.runtime.bwrap_runtime import BwrapRuntime
from squish.runtime.logs import DEFAULT_RATE
from squish.sources import StatusSource
from squish.sources.directory import DirectorySource
from squish.sources.git import GitSource
from squish.sources.guard import GuardedSource, PruneGuard, Running
from squish.sources.multi import MultiSource
from squish.sources.placed import PlacedSource, wanted_on

log = logging.getLogger("squish.daemon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--manifests",
        type=Path,
        default=Path(env("SQUISH_MANIFESTS", "manifests")),
        help="directory of squishfiles to keep running (default: ./manifests; $SQUISH_MANIFESTS)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env("SQUISH_STATE_DIR", str(paths.state_dir()))),
        help="layer cache, logs, lock (default: $XDG_STATE_HOME/squish; $SQUISH_STATE_DIR)",
    )
    parser.add_argument(
        "--metrics-addr",
        default=env("SQUISH_METRICS_ADDR", "127.0.0.1:9478"),
        help="HOST:PORT of the Prometheus exporter, 'off' for none (default: %(default)s)",
    )
    parser.add_argument(
        "--host-ip",
        default=env("SQUISH_HOST_IP", DEFAULT_HOST_IP),
        help="address port forwards bind to unless a port says otherwise (default: %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=env("SQUISH_LOG_FORMAT", "text"),
        help="the log on stderr: text lines or JSON objects (default: %(default)s; "
        "$SQUISH_LOG_FORMAT)",
    )
    parser.add_argument(
        "--log-rate",
        type=int,
        default=int(env("SQUISH_LOG_RATE", str(DEFAULT_RATE))),
        metavar="BYTES",
        help="bytes a second each container may write into its log; the rest is dropped, "
        "counted and said in the log; 0: no limit (default: %(default)s; $SQUISH_LOG_RATE)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=5.0,
        help="seconds between full resyncs (default: %(default)g)",
    )
    parser.add_argument(
        "--parallelism",
        type=int,
        default=8,
        help="actions carried out at once (default: %(default)s)",
    )
    parser.add_argument(
        "--stop-timeout",
        type=float,
        default=DEFAULT_STOP_GRACE,
        help="seconds between SIGTERM and SIGKILL when a container stops (default: %(default)g)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT,
        help="seconds a container may take to start (its mounts, its network) before it is "
        "killed and its start counted as failed (default: %(default)g)",
    )
    parser.add_argument(
        "--backoff-initial",
        type=float,
        default=10.0,
        help="seconds before a crashed container's second restart (default: %(default)g)",
    )
    parser.add_argument(
        "--backoff-max",
        type=float,
        default=300.0,
        help="the longest wait between restarts, doubling up to it (default: %(default)g)",
    )
    parser.add_argument(
        "--backoff-reset",
        type=float,
        default=600.0,
        help="seconds of running after which the backoff starts over (default: %(default)g)",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="PATH",
        help="layer settings file (default: $SQUISH_CONFIG, else "
        "$XDG_CONFIG_HOME/squish/config.toml if it exists)",
    )
    parser.add_argument(
        "--default-base",
        default=None,
        metavar="BASE",
        help="base of squishfiles that name none: busybox (built in), alpine:<version> "
        "(downloaded at start-up) or a rootfs directory (default: busybox; "
        "$SQUISH_DEFAULT_BASE)",
    )
    parser.add_argument(
        "--alpine-mirror",
        default=None,
        metavar="URL",
        help='where alpine = "<version>" is downloaded from (default: '
        "dl-cdn.alpinelinux.org; $SQUISH_ALPINE_MIRROR)",
    )
    parser.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="[NAME=]TEMPLATE",
        help="layer registry URL template, e.g. https://host/{name}/{version}/{arch}.tar.gz, "
        "for layer NAME or for all (repeatable; $SQUISH_REGISTRY)",
    )
    git = parser.add_argument_group("GitOps")
    git.add_argument(
        "--git",
        default=env("SQUISH_GIT"),
        metavar="URL",
        help="also keep the squishfiles of this git repository running ($SQUISH_GIT)",
    )
    git.add_argument(
        "--git-ref",
        default=env("SQUISH_GIT_REF", "main"),
        metavar="REF",
        help="the branch or tag to follow (default: %(default)s; $SQUISH_GIT_REF)",
    )
    git.add_argument(
        "--git-path",
        default=env("SQUISH_GIT_PATH", "."),
        metavar="PATH",
        help="directory of the squishfiles in the repository (default: %(default)s)",
    )
    git.add_argument(
        "--sync-interval",
        type=float,
        default=float(env("SQUISH_SYNC_INTERVAL", "30")),
        metavar="SECONDS",
        help="seconds between fetches of the repository (default: %(default)g)",
    )
    git.add_argument(
        "--webhook-addr",
        default=env("SQUISH_WEBHOOK_ADDR", "off"),
        metavar="HOST:PORT",
        help="listen for push webhooks here, 'off' for none (default: %(default)s)",
    )
    git.add_argument(
        "--webhook-secret-file",
        type=Path,
        default=None,
        metavar="PATH",
        help="the webhook's shared secret (or $SQUISH_WEBHOOK_SECRET)",
    )
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument(
        "--node",
        default=env("SQUISH_NODE"),
        metavar="NAME",
        help="this host's name for [placement] nodes (default: the short hostname; $SQUISH_NODE)",
    )
    fleet.add_argument(
        "--label",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a label of this host for [placement] labels (repeatable)",
    )
    guard = parser.add_argument_group("prune guard")
    guard.add_argument(
        "--prune-guard",
        type=float,
        default=None,
        metavar="PERCENT",
        help="hold back a change of the manifests (a git revision, an emptied directory) that "
        "would stop at least this share of the running containers, and more than one "
        "(default: 100, i.e. all of them; $SQUISH_PRUNE_GUARD; [sources] in the config)",
    )
    guard.add_argument(
        "--allow-prune-all",
        action="store_true",
        help="apply such changes anyway: no prune guard ($SQUISH_ALLOW_PRUNE_ALL=1)",
    )
    parser.add_argument(
        "--allow-host-path",
        action="append",
        default=[],
        metavar="DIR",
        help="let squishfiles from the git source name host paths under DIR as path layers "
        "(repeatable; also $SQUISH_ALLOW_HOST_PATH, colon-separated, and the config file's "
        "[sources] allow_host_paths); checked after resolving symlinks",
    )
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run as root anyway (containers are then not rootless; not recommended)",
    )


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if event := getattr(record, "event", None):
            entry["event"] = event
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("squish")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _lock(state_dir: Path) -> IO[str]:
    """Hold ``daemon.lock`` for the life of the process (the kernel drops it on death)."""
    path = state_dir / "daemon.lock"
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        handle = path.open("a+")
    except OSError as exc:
        raise SquishError(
            f"cannot open the daemon's lock {path}: {exc.strerror or exc}; remove it or fix "
            "its permissions, or use another --state-dir"
        ) from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise SquishError(
            f"another squish daemon (pid {holder}) is running on {state_dir}; stop it first "
            "or use another --state-dir"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _parse_addr(value: str, flag: str = "--metrics-addr") -> tuple[str, int] | None:
    if value == "off":
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise SquishError(f"{flag}: expected HOST:PORT or 'off', got {value!r}")
    return host.strip("[]"), int(port)


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one.

    The runtime holds a handful of fds per container (its log pipe and file,
    pidfds, slirp4netns's exit pipe); the usual soft limit of 1024 would cap
    a daemon at about 180 containers, where the hard limit is far higher.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        # "Unlimited" is not a value the kernel takes for open files; its
        # ceiling is fs.nr_open.
        hard = int(Path("/proc/sys/fs/nr_open").read_text())
    if hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _webhook_secret(args: argparse.Namespace) -> bytes:
    if args.webhook_secret_file is not None:
        try:
            return bytes(args.webhook_secret_file.read_bytes().strip())
        except OSError as exc:
            raise SquishError(
                f"--webhook-secret-file {args.webhook_secret_file}: {exc.strerror}"
            ) from exc
    return os.environ.get("SQUISH_WEBHOOK_SECRET", "").encode()


def run(args: argparse.Namespace) -> int:
    if os.getuid() == 0 and not args.allow_root:
        raise SquishError(
            "squish is rootless-only: it runs containers as the user that runs it, and as root "
            "that would be root. Run it as an ordinary user (e.g. runuser -u squish -- squish "
            "daemon), or pass --allow-root if you really mean it"
        )
    _setup_logging(args.log_format)
    config = read_config(args.config)
    args.guard = guard_settings(
        config, percent=args.prune_guard, allow_prune_all=args.allow_prune_all
    )
    args.host_paths = allowed_host_paths(config, args.allow_host_path)
    args.layers = layer_settings(
        config,
        default_base=args.default_base,
        alpine_mirror=args.alpine_mirror,
        registries=args.registry,
    )
    _raise_fd_limit()
    args.host_ip = checked_host_ip(args.host_ip)
    metrics_addr = _parse_addr(args.metrics_addr)
    args.webhook = _parse_addr(args.webhook_addr, "--webhook-addr")
    args.webhook_secret = _webhook_secret(args)
    if args.webhook is not None and not args.git:
        raise SquishError("--webhook-addr: a webhook makes git sources sync; give --git URL too")
    if args.webhook is not None and not args.webhook_secret:
        raise SquishError(
            "--webhook-addr: a webhook needs a shared secret (--webhook-secret-file or "
            "$SQUISH_WEBHOOK_SECRET); unsigned requests would let anyone trigger fetches"
        )
    args.node = Node.parse(args.node or default_node_name(), args.label)
    lock = _lock(args.state_dir)
    socket_path = Path(args.socket) if args.socket else paths.socket_path()
    try:
        # Before anything starts; a socket found in the way is never removed
        # here: a live one is refused, a dead one replaced by serve(), which
        # also removes its own, and only its own, when it stops.
        check_socket(socket_path)
        args.manifests = args.manifests.absolute()
        args.manifests.mkdir(parents=True, exist_ok=True)
        return anyio.run(_serve, args, socket_path, metrics_addr)
    except BaseExceptionGroup as group:
        # An error of ours that stopped the task group (the socket, taken by
        # another daemon between the check and the listen) is one line too.
        ours, rest = group.split(SquishError)
        if ours is None or rest is not None:
            raise
        first: BaseException = ours
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None
    finally:
        lock.close()


async def _prefetch(store: LayerStore, branch: str) -> None:
    """Download the default Alpine base in the background, retrying until it is cached.

    Containers needing it meanwhile wait for the same download (the
    resolver's lock per branch) rather than fail.
    """
    delay = 10.0
    while True:
        try:
            release = await anyio.to_thread.run_sync(store.alpine.materialise, branch)
        except SquishError as exc:
            log.warning("default base alpine:%s: %s; retrying in %gs", branch, exc, delay)
            await anyio.sleep(delay)
            delay = min(delay * 2, 300.0)
            continue
        log.info("default base alpine:%s is Alpine %s", branch, release.version)
        return


async def _serve(
    args: argparse.Namespace, socket_path: Path, metrics_addr: tuple[str, int] | None
) -> int:
    state: Path = args.state_dir
    manifests: Path = args.manifests
    metrics = Metrics(version=__version__)
    stop_metrics = metrics.serve(*metrics_addr) if metrics_addr else None
    try:
        # Open before the runtime and closed after it: a second SIGTERM or Ctrl-C
        # while it stops the containers is caught (and ignored), never fatal.
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with BwrapRuntime(
                run_dir=state / "run",
                log_dir=state / "logs",
                default_host_ip=args.host_ip,
                stop_grace=args.stop_timeout,
                log_rate=args.log_rate,
                log_counter=metrics,
            ) as runtime:
                metrics.count_networks(runtime.network_sizes)
                settings: LayerSettings = args.layers
                store = settings.store(
                    state,
                    observer=lambda kind, result, size: metrics.layer_fetched(
                        kind, result, downloaded=size
                    ),
                )
                running = Running()
                guard = PruneGuard(
                    running,
                    threshold=args.guard.percent / 100,
                    enabled=args.guard.enabled,
                    wanted=wanted_on(args.node),
                )
                sources: list[StatusSource] = [
                    GuardedSource(
                        DirectorySource(manifests), guard, name="manifests", url=str(manifests)
                    )
                ]
                if args.git:
                    sources.append(
                        GitSource(
                            args.git,
                            ref=args.git_ref,
                            path=args.git_path,
                            work_dir=state / "sources" / "git",
                            cache=store.cache,
                            interval=args.sync_interval,
                            metrics=metrics,
                            guard=guard,
                            host_paths=args.host_paths,
                        )
                    )
                reconciler = Reconciler(
                    source=PlacedSource(MultiSource(sources), args.node),
                    runtime=runtime,
                    store=store,
                    manifests_dir=manifests,
                    log_dir=state / "logs",
                    metrics=metrics,
                    backoff=Backoff(args.backoff_initial, args.backoff_max, args.backoff_reset),
                    resync=args.resync,
                    parallelism=args.parallelism,
                    stop_grace=args.stop_timeout,
                    start_timeout=args.start_timeout,
                    state_dir=state,
                    default_host_ip=args.host_ip,
                    source_statuses=lambda: [source.status() for source in sources],
                    on_running=running.update,
                )
                reconciler.about = {
                    "node": args.node.name,
                    "labels": dict(args.node.labels),
                    "default_base": settings.default_base,
                }
                async with anyio.create_task_group() as tg:
                    await tg.start(reconciler.run)
                    layers = LayerAdmin(store, reconciler.layer_users)
                    admin = SourceAdmin(sources, reconciler.trigger)
                    control = DaemonControl(reconciler)
                    await tg.start(serve, make_app(control, layers, admin), socket_path)
                    if args.webhook is not None:
                        hooks = webhook_app(admin, args.webhook_secret)
                        await tg.start(serve_tcp, hooks, *args.webhook)
                    if settings.default_alpine is not None:
                        tg.start_soon(_prefetch, store, settings.default_alpine)
                    log.info(
                        "squish %s on node %s: watching %s, API on %s, metrics on %s",
                        __version__,
                        args.node.describe(),
                        ", ".join(source.status().url for source in sources),
                        socket_path,
                        args.metrics_addr,
                    )
                    sdnotify.ready()
                    async for signum in signals:
                        log.info("%s: stopping every container", signal.Signals(signum).name)
                        sdnotify.stopping()
                        reconciler.close()
                        tg.cancel_scope.cancel()
                        break
            # Leaving the runtime stops every container (SIGTERM, grace, SIGKILL).
        # Everything is stopped: one more SIGTERM or Ctrl-C has nothing left
        # to do, and must not turn the exit status 0 into a death by signal.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    finally:
        if stop_metrics is not None:
            stop_metrics()
    log.info("stopped")
    return 0


def default_node_name() -> str:
    """The host's short name: ``socket.gethostname()`` up to the first ``.``."""
    return socket.gethostname().partition(".")[0]
