"""``squish layer pull|import|ls|rm|gc``: the layer cache, through the daemon.

Registered by ``squish.cli.commands`` as the ``layer`` subcommand. The daemon owns
the cache and knows which containers use what (``squish.daemon.layer_admin``), so
every action is an API call. Downloads and uploads show a progress bar when
stderr is a terminal; ``--json`` prints the daemon's answer instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.filesize import decimal

from squish import api_schema as schema
from squish.cli.client import Client
from squish.errors import SquishError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

Table = Callable[[list[str], list[list[str]]], None]

_CHUNK = 1 << 20


def configure(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="layer_command", metavar="ACTION", required=True)

    def action(name: str, help: str, *examples: str) -> argparse.ArgumentParser:
        heading = "Example:" if len(examples) == 1 else "Examples:"
        sub = actions.add_parser(
            name,
            help=help,
            description=help,
            epilog="\n".join([heading, *(f"  {example}" for example in examples)]),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        # Accepted after the action too; SUPPRESS keeps it from resetting the earlier one.
        sub.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help="print JSON for scripts"
        )
        return sub

    pull = action(
        "pull",
        "download a layer: NAME VERSION from its registry, or alpine VERSION",
        "squish layer pull python 3.11",
        "squish layer pull alpine 3.20",
    )
    pull.add_argument(
        "name", metavar="NAME", help="the layer's name (alpine: the Alpine minirootfs)"
    )
    pull.add_argument(
        "version", metavar="VERSION", help="its version (for alpine a branch: the newest 3.20.x)"
    )
    pull.add_argument("--sha256", help="the archive's digest, if the registry publishes none")
    add = action(
        "import",
        "add a layer from a local archive (for hosts with no network): NAME VERSION FILE",
        "squish layer import python 3.11 python-3.11-x86_64.tar.gz",
        "squish layer import alpine 3.20 alpine-minirootfs-3.20.3-x86_64.tar.gz",
    )
    add.add_argument("name", metavar="NAME", help="the layer's name (alpine: the base rootfs)")
    add.add_argument("version", metavar="VERSION", help="the version it is stored as")
    add.add_argument(
        "archive", type=Path, metavar="FILE", help="the archive (tar, tar.gz, tar.xz, tar.zst, zip)"
    )
    add.add_argument("--sha256", help="refuse the archive unless it has this digest")
    action(
        "ls",
        "list the layers in the cache and the containers using them",
        "squish layer ls",
        "squish layer ls --json",
    )
    remove = action(
        "rm", "remove a layer no container uses: NAME VERSION", "squish layer rm python 3.11"
    )
    remove.add_argument("name", metavar="NAME", help="the layer's name")
    remove.add_argument("version", metavar="VERSION", help="its version")
    action("gc", "remove every layer no squishfile or container uses", "squish layer gc")


def run(args: argparse.Namespace, client: Client, table: Table) -> int:
    """Carry out ``args.layer_command``; the exit status."""
    as_json: bool = args.json
    match args.layer_command:
        case "pull":
            layer = _pull(client, args.name, args.version, sha256=args.sha256, quiet=as_json)
            _show(layer, "pulled", as_json)
        case "import":
            layer = _import(
                client, args.name, args.version, args.archive, sha256=args.sha256, quiet=as_json
            )
            _show(layer, "imported", as_json)
        case "ls":
            layers = client.layers()
            if as_json:
                print(json.dumps(layers, indent=2))
            else:
                table(
                    ["NAME", "VERSION", "KIND", "SIZE", "SHA256", "USED BY"],
                    [_row(layer) for layer in layers],
                )
        case "rm":
            _show(client.remove_layer(args.name, args.version), "removed", as_json)
        case "gc":
            removed: list[schema.LayerInfo] = client.gc_layers()["removed"]
            if as_json:
                print(json.dumps(removed, indent=2))
            else:
                for layer in removed:
                    _show(layer, "removed", False)
                sizes = {layer.get("entry"): int(layer.get("size", 0)) for layer in removed}
                freed = sum(sizes.values())  # an entry shared by two names counts once
                print(f"{len(removed)} layer(s) removed, {decimal(freed)} freed")
    return 0


def _pull(
    client: Client, name: str, version: str, sha256: str | None, quiet: bool
) -> schema.LayerInfo:
    with _progress(f"{name} {version}", quiet) as advance:
        for item in client.pull_layer(name, version, sha256=sha256):
            if "progress" in item:
                done = item["progress"].get("done", 0)
                advance(int(done), item["progress"].get("total"))
            elif "error" in item:
                raise SquishError(str(item["error"]))
            elif "layer" in item:
                layer: schema.LayerInfo = item["layer"]
                return layer
    raise SquishError("the daemon ended the pull without saying how it went")


def _import(
    client: Client, name: str, version: str, archive: Path, *, sha256: str | None, quiet: bool
) -> schema.LayerInfo:
    try:
        file = archive.open("rb")
        total = archive.stat().st_size
    except OSError as exc:
        raise SquishError(f"{archive}: cannot read it: {exc.strerror}") from exc
    with file, _progress(f"{name} {version}", quiet) as advance:

        def chunks() -> Iterator[bytes]:
            done = 0
            while chunk := file.read(_CHUNK):
                done += len(chunk)
                advance(done, total)
                yield chunk

        return client.import_layer(
            name, version, chunks(), source=str(archive.absolute()), sha256=sha256
        )


class _progress:
    """A download bar on stderr when it is a terminal; otherwise nothing."""

    def __init__(self, label: str, quiet: bool) -> None:
        self.bar: Progress | None = None
        self.task: TaskID | None = None
        if not quiet and sys.stderr.isatty():
            # Imported only here: rich's console costs more than the rest of `squish`.
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.bar.add_task(label, total=None)

    def __enter__(self) -> Callable[[int, int | None], None]:
        if self.bar is not None:
            self.bar.start()
        return self.advance

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def advance(self, done: int, total: int | None) -> None:
        if self.bar is not None and self.task is not None:
            self.bar.update(self.task, completed=done, total=total)


def _show(layer: schema.LayerInfo, verb: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps(layer, indent=2))
        return
    size = decimal(int(layer.get("size", 0)))
    print(f"{verb} {_label(layer)} ({size}, sha256 {_short(layer)})")


def _label(layer: schema.LayerInfo) -> str:
    if layer.get("kind") == "unpacked":
        return f"unpacked layer {str(layer.get('entry', ''))[:12]}"
    return f"{layer.get('name')} {layer.get('version')}"


def _short(layer: schema.LayerInfo) -> str:
    return str(layer.get("sha256") or layer.get("entry") or "")[:12]


def _row(layer: schema.LayerInfo) -> list[str]:
    return [
        str(layer.get("name", "")),
        str(layer.get("version", "")),
        str(layer.get("kind", "")),
        decimal(int(layer.get("size", 0))),
        _short(layer),
        ", ".join(layer.get("used_by", [])) or "-",
    ]
