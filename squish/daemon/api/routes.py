"""The API's routes: :func:`make_app` builds the Starlette app from lists of operations.

The daemon (:mod:`squish.daemon.main`) and the tests call :func:`make_app`
around a :class:`~squish.daemon.control.ControlPlane` (the reconciler), and
optionally a :class:`~squish.daemon.layer_admin.LayerAdmin` and a
:class:`~squish.daemon.source_admin.SourceAdmin`. Each route is an
:class:`~squish.daemon.openapi.Operation`; the Starlette routes and the
OpenAPI document are both made from the same list, so they cannot drift.
An endpoint only translates: a request becomes one call on the control
plane (or an admin), its result becomes JSON; failures are answered by
:mod:`squish.daemon.api.errors`.

Routes (all under ``/v1``; the shapes are :mod:`squish.api_schema`'s, and
``GET /v1/openapi.json`` describes them all)::

    GET    /status                      DaemonStatus
    GET    /containers                  [Container]
    POST   /containers                  CreateRequest -> Container
    GET    /containers/{ref}            ContainerDetail (inspect)
    POST   /containers/{ref}/stop       Container
    POST   /containers/{ref}/start      StartRequest (optional) -> Container
    POST   /containers/{ref}/exec       ExecRequest -> ExecResult (the command's status, not HTTP's)
    DELETE /containers/{ref}            Container (as it was)
    GET    /containers/{ref}/logs       ?follow=1&tail=N&since=T&until=T&timestamps=1 (T: Unix
                                        seconds), text/plain stream; with timestamps each line
                                        starts "2026-12-01T10:00:00.123Z "
    GET    /events                      x-ndjson stream of Event
    GET    /networks                    [Network]
    GET    /networks/{name}             Network
    GET    /volumes                     [Volume]
    GET    /volumes/{name}              Volume (with its size)
    DELETE /volumes/{name}              Volume (409 while a squishfile names it)
    POST   /volumes/prune               VolumePrune
    GET    /secrets                     [Secret] (names and users, never values)
    PUT    /secrets/{name}              the body is the value -> Secret
    DELETE /secrets/{name}              Secret (409 while a squishfile names it)
    GET    /volumes/{name}/export       application/x-tar stream
    PUT    /volumes/{name}/import       the body is a tar (or compressed tar) -> Volume
    GET    /layers                      [LayerInfo]
    POST   /layers/pull                 PullRequest -> x-ndjson PullLine
    PUT    /layers/{name}/{version}     ?sha256=&source=; the body is the archive
    DELETE /layers/{name}/{version}     LayerInfo (409 while used)
    POST   /layers/gc                   GcResult
    GET    /sources                     [SourceStatus]
    POST   /sources/sync                SyncRequest (optional) -> [SourceStatus]
    GET    /openapi.json                the OpenAPI document

``{ref}`` is a container's name or a unique prefix of its id; an ambiguous
prefix answers 409 with the ``candidates``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict

import anyio
import anyio.from_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from squish import __version__
from squish import api_schema as schema
from squish.daemon.api.errors import handled, http_error, json_response, logger, one_line
from squish.daemon.api.requests import (
    query_count,
    query_flag,
    query_moment,
    read_body,
    valid_name,
    valid_sha256,
    valid_timeout,
)
from squish.daemon.api.streams import Drain, LogQuery, Stream, Write, follow_log
from squish.daemon.control import ControlPlane
from squish.daemon.layer_admin import LayerAdmin
from squish.daemon.openapi import (
    NDJSON,
    OCTETS,
    TAR,
    TEXT,
    BadRequest,
    Operation,
    Param,
    document,
)
from squish.daemon.source_admin import SourceAdmin
from squish.errors import SquishError
from squish.layers.download import receive_archive

__all__ = ["make_app"]


def make_app(
    control: ControlPlane, layers: LayerAdmin | None = None, sources: SourceAdmin | None = None
) -> Starlette:
    """The API app serving ``control`` (and the layer and source routes, if given)."""
    drain = Drain()
    operations = _container_operations(control, drain)
    if layers is not None:
        operations += _layer_operations(layers, drain)
    if sources is not None:
        operations += _source_operations(sources)

    async def openapi(request: Request) -> Response:
        return json_response(spec)

    operations.append(Operation("GET", "/v1/openapi.json", "this document", openapi, errors=()))
    spec = document(operations, version=__version__)
    app = Starlette(
        routes=[Route(op.path, handled(op.endpoint), methods=[op.method]) for op in operations],
        exception_handlers={HTTPException: http_error},
    )
    app.state.drain = drain
    app.state.openapi = spec
    return app


def _container_operations(control: ControlPlane, drain: Drain) -> list[Operation]:
    def ref_of(request: Request) -> str:
        return valid_name(request.path_params["ref"], "container name or id")

    async def status(request: Request) -> Response:
        return json_response(control.status())

    async def list_containers(request: Request) -> Response:
        return json_response(control.containers())

    async def create(request: Request) -> Response:
        body = await read_body(request, schema.CreateRequest)
        name = valid_name(body["name"])
        timeout = valid_timeout(body.get("timeout"))
        data = body["manifest"].encode()
        if body.get("wait", True):
            return json_response(await control.create(name, data, timeout=timeout))
        return json_response(await control.apply(name, data))

    async def inspect(request: Request) -> Response:
        return json_response(control.inspect(ref_of(request)))

    async def stop(request: Request) -> Response:
        return json_response(await control.stop(ref_of(request)))

    async def start(request: Request) -> Response:
        ref = ref_of(request)
        body = await read_body(request, schema.StartRequest, optional=True)
        return json_response(await control.start(ref, timeout=valid_timeout(body.get("timeout"))))

    async def delete(request: Request) -> Response:
        return json_response(await control.delete(ref_of(request)))

    async def exec_in(request: Request) -> Response:
        ref = ref_of(request)
        body = await read_body(request, schema.ExecRequest)
        command = body["command"]
        if not command or any("\0" in part for part in command):
            raise BadRequest("command must be a non-empty list of strings without NUL bytes")
        timeout = valid_timeout(body.get("timeout"))
        return json_response(await control.exec(ref, command, timeout=timeout))

    async def logs(request: Request) -> Response:
        query = LogQuery(
            follow=query_flag(request, "follow"),
            tail=query_count(request, "tail"),
            since_ms=query_moment(request, "since"),
            until_ms=query_moment(request, "until"),
            timestamps=query_flag(request, "timestamps"),
        )
        path = control.log_path(ref_of(request))

        async def pump(write: Write) -> None:
            await follow_log(path, query, write)

        return Stream(pump, "text/plain; charset=utf-8", drain)

    async def events(request: Request) -> Response:
        async def pump(write: Write) -> None:
            with control.subscribe() as subscription:
                async for event in subscription:
                    line = json.dumps(event.to_json(), default=str) + "\n"
                    await write(line.encode())

        return Stream(pump, NDJSON, drain)

    async def list_networks(request: Request) -> Response:
        return json_response(control.networks())

    async def network(request: Request) -> Response:
        return json_response(
            control.network(valid_name(request.path_params["name"], "network name"))
        )

    def volume_name(request: Request) -> str:
        return valid_name(request.path_params["name"], "volume name")

    async def list_volumes(request: Request) -> Response:
        return json_response(await control.volumes())

    async def volume(request: Request) -> Response:
        return json_response(await control.volume(volume_name(request)))

    async def remove_volume(request: Request) -> Response:
        return json_response(await control.remove_volume(volume_name(request)))

    async def prune_volumes(request: Request) -> Response:
        return json_response(await control.prune_volumes())

    def secret_name(request: Request) -> str:
        return valid_name(request.path_params["name"], "secret name")

    async def list_secrets(request: Request) -> Response:
        return json_response(await control.secrets())

    async def create_secret(request: Request) -> Response:
        return json_response(await control.create_secret(secret_name(request), request.stream()))

    async def remove_secret(request: Request) -> Response:
        return json_response(await control.remove_secret(secret_name(request)))

    async def export_volume(request: Request) -> Response:
        name = volume_name(request)
        await control.volume(name)  # before the 200: a missing one is a 404

        async def pump(write: Write) -> None:
            read_end, write_end = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(read_end, False)

            async def produce() -> None:
                try:
                    await control.export_volume(name, write_end)
                except SquishError as exc:
                    # Mid-stream: the tar ends without its end marker, which
                    # tar reports; the reason goes to the daemon's log.
                    logger.warning("export of volume %s: %s", name, exc)

            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                try:
                    while True:
                        await anyio.wait_readable(read_end)
                        try:
                            chunk = os.read(read_end, 1 << 16)
                        except BlockingIOError:
                            continue
                        if not chunk:
                            break
                        await write(chunk)
                finally:
                    # The client gone: the writer's next write fails, and it ends.
                    os.close(read_end)

        return Stream(pump, TAR, drain)

    async def import_volume(request: Request) -> Response:
        name = volume_name(request)
        return json_response(await control.import_volume(name, request.stream()))

    by_ref = (400, 404, 409)
    return [
        Operation("GET", "/v1/status", "the daemon's status", status, schema.DaemonStatus),
        Operation(
            "GET", "/v1/containers", "every container", list_containers, list[schema.Container]
        ),
        Operation(
            "POST",
            "/v1/containers",
            "store a squishfile; with wait, until its container runs or fails",
            create,
            schema.Container,
            body=schema.CreateRequest,
            errors=(400, 409),
        ),
        Operation(
            "GET",
            "/v1/containers/{ref}",
            "everything about one container",
            inspect,
            schema.ContainerDetail,
            errors=by_ref,
        ),
        Operation(
            "DELETE",
            "/v1/containers/{ref}",
            "remove a container's squishfile; its container stops",
            delete,
            schema.Container,
            errors=by_ref,
        ),
        Operation(
            "POST",
            "/v1/containers/{ref}/stop",
            "stop a container; it stays stopped until start or an edit",
            stop,
            schema.Container,
            errors=by_ref,
        ),
        Operation(
            "POST",
            "/v1/containers/{ref}/start",
            "start a stopped container again",
            start,
            schema.Container,
            body=schema.StartRequest,
            body_required=False,
            errors=by_ref,
        ),
        Operation(
            "POST",
            "/v1/containers/{ref}/exec",
            "run a command inside a running container; answers its exit status and output",
            exec_in,
            schema.ExecResult,
            body=schema.ExecRequest,
            errors=by_ref,
        ),
        Operation(
            "GET",
            "/v1/containers/{ref}/logs",
            "the container's log",
            logs,
            media=TEXT,
            params=(
                Param("follow", "boolean", "keep sending what it writes"),
                Param("tail", "integer", "start with the last N lines"),
                Param("since", "number", "only lines that arrived at or after this Unix time"),
                Param("until", "number", "only lines that arrived at or before this Unix time"),
                Param("timestamps", "boolean", "start each line with the time it arrived"),
            ),
            errors=by_ref,
        ),
        Operation(
            "GET", "/v1/events", "every event from now on", events, schema.Event, media=NDJSON
        ),
        Operation(
            "GET", "/v1/networks", "every named network", list_networks, list[schema.Network]
        ),
        Operation(
            "GET",
            "/v1/networks/{name}",
            "one named network: who names it, who is on it",
            network,
            schema.Network,
            errors=(400, 404),
        ),
        Operation(
            "GET",
            "/v1/volumes",
            "every named volume of the node",
            list_volumes,
            list[schema.Volume],
        ),
        Operation(
            "GET",
            "/v1/volumes/{name}",
            "one volume: where it is, who names it, its size",
            volume,
            schema.Volume,
            errors=(400, 404),
        ),
        Operation(
            "DELETE",
            "/v1/volumes/{name}",
            "delete a volume and its data (refused while a squishfile names it)",
            remove_volume,
            schema.Volume,
            errors=(400, 404, 409),
        ),
        Operation(
            "POST",
            "/v1/volumes/prune",
            "delete every volume no squishfile names",
            prune_volumes,
            schema.VolumePrune,
        ),
        Operation(
            "GET",
            "/v1/secrets",
            "every secret of the node (never a value)",
            list_secrets,
            list[schema.Secret],
        ),
        Operation(
            "PUT",
            "/v1/secrets/{name}",
            "store a secret (the body is its value, at most 512 KiB), replacing the containers "
            "that use it",
            create_secret,
            schema.Secret,
            errors=(400,),
        ),
        Operation(
            "DELETE",
            "/v1/secrets/{name}",
            "delete a secret (refused while a squishfile names it)",
            remove_secret,
            schema.Secret,
            errors=(400, 404, 409),
        ),
        Operation(
            "GET",
            "/v1/volumes/{name}/export",
            "the volume as a tar stream",
            export_volume,
            media=TAR,
            errors=(400, 404),
        ),
        Operation(
            "PUT",
            "/v1/volumes/{name}/import",
            "make the volume hold what the tar in the body holds (made if need be)",
            import_volume,
            schema.Volume,
            errors=(400, 409),
        ),
    ]


def _layer_operations(layers: LayerAdmin, drain: Drain) -> list[Operation]:
    def layer_name(request: Request) -> tuple[str, str]:
        name, version = request.path_params["name"], request.path_params["version"]
        return valid_name(name, "layer name"), valid_name(version, "version")

    async def list_layers(request: Request) -> Response:
        return json_response([info.to_json() for info in await layers.entries()])

    async def pull(request: Request) -> Response:
        body = await read_body(request, schema.PullRequest)
        name = valid_name(body["name"], "layer name")
        version = valid_name(body["version"], "version")
        sha256 = valid_sha256(body.get("sha256"))

        async def pump(write: Write) -> None:
            send, receive = anyio.create_memory_object_stream[schema.PullLine](math.inf)

            def progress(done: int, total: int | None) -> None:
                # Called in the download's worker thread.
                item: schema.PullLine = {"progress": {"done": done, "total": total}}
                anyio.from_thread.run_sync(send.send_nowait, item)

            async def run() -> None:
                with send:
                    try:
                        info = await layers.pull(name, version, sha256=sha256, progress=progress)
                        send.send_nowait({"layer": info.to_json()})
                    except SquishError as exc:
                        send.send_nowait({"error": one_line(str(exc))})

            async with receive, anyio.create_task_group() as tg:
                tg.start_soon(run)
                async for item in receive:
                    await write((json.dumps(item) + "\n").encode())

        return Stream(pump, NDJSON, drain)

    async def import_layer(request: Request) -> Response:
        name, version = layer_name(request)
        sha256 = valid_sha256(request.query_params.get("sha256") or None)
        source = request.query_params.get("source") or "upload"
        with layers.store.cache.download_file(prefix=".import-") as file:
            await receive_archive(request.stream(), file, what=source)
            info = await layers.import_file(name, version, file, source=source, sha256=sha256)
        return json_response(info.to_json())

    async def remove(request: Request) -> Response:
        name, version = layer_name(request)
        return json_response((await layers.remove(name, version)).to_json())

    async def gc(request: Request) -> Response:
        result: schema.GcResult = {"removed": [info.to_json() for info in await layers.gc()]}
        return json_response(result)

    return [
        Operation(
            "GET", "/v1/layers", "every layer in the cache", list_layers, list[schema.LayerInfo]
        ),
        Operation(
            "POST",
            "/v1/layers/pull",
            "download a layer: progress lines, then the layer or the error",
            pull,
            schema.PullLine,
            body=schema.PullRequest,
            media=NDJSON,
        ),
        Operation(
            "POST", "/v1/layers/gc", "remove unused layers", gc, schema.GcResult, errors=(409,)
        ),
        Operation(
            "PUT",
            "/v1/layers/{name}/{version}",
            "import an archive (the body) as a layer",
            import_layer,
            schema.LayerInfo,
            body=bytes,
            body_media=OCTETS,
            params=(
                Param("sha256", "string", "the archive's expected sha256"),
                Param("source", "string", "where the archive came from, for messages"),
            ),
        ),
        Operation(
            "DELETE",
            "/v1/layers/{name}/{version}",
            "remove a layer (refused while used)",
            remove,
            schema.LayerInfo,
            errors=(400, 404, 409),
        ),
    ]


def _source_operations(sources: SourceAdmin) -> list[Operation]:
    async def list_sources(request: Request) -> Response:
        return json_response([asdict(status) for status in sources.statuses()])

    async def sync(request: Request) -> Response:
        body = await read_body(request, schema.SyncRequest, optional=True)
        name = body.get("name")
        if name is not None:
            name = valid_name(name, "source name")
        return json_response([asdict(status) for status in await sources.sync(name)])

    return [
        Operation(
            "GET",
            "/v1/sources",
            "every source's status",
            list_sources,
            list[schema.SourceStatus],
            errors=(),
        ),
        Operation(
            "POST",
            "/v1/sources/sync",
            "fetch the git sources (or one) now",
            sync,
            list[schema.SourceStatus],
            body=schema.SyncRequest,
            body_required=False,
            errors=(400, 404, 409),
        ),
    ]
