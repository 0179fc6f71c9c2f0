"""A read-only web page over the store: each task's runs, newest first, and for a
run its settings, per-round metrics as charts (overall and per client), the
comparisons across the federation, and the heatmaps of every round, client and
class with what the explainer measured of them.

Everything is read through the ``ObjectStore`` interface (a local folder or
S3/MinIO); images, manifests, checkpoints and logs are streamed by this server,
so a browser needs no access to the store. Only GET and HEAD are routed:
nothing can be written through it.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from fedxai.errors import InvalidArgument, ObjectNotFound
from fedxai.records import duration_seconds, format_duration, run_state, seconds_per_round
from fedxai.storage import ObjectInfo, ObjectStore, read_document, run_records
from fedxai.storage.layout import (
    GLOBAL_DIR,
    LOGS_DIR,
    UPDATES_DIR,
    Folder,
    global_model_key,
    metrics_key,
    round_prefix,
    run_prefix,
    validate_id,
)

HERE = Path(__file__).resolve().parent
_IMAGE_NAME = re.compile(r"gradcam_class_\d{1,4}\.jpg")


def _not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=what)


def _checked_id(kind: str, value: str) -> str:
    try:
        return validate_id(kind, value)
    except InvalidArgument:
        raise _not_found(f"no {kind} {value!r}") from None


def _record(value: Any) -> dict[str, Any] | None:
    """A manifest's object as it is, or None where it is missing (older manifests)."""
    return value if isinstance(value, dict) else None


def _records(value: Any) -> list[dict[str, Any]] | None:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else None


def _summary(task: str, run: str, document: dict[str, Any], now: datetime) -> dict[str, Any]:
    """What the index and a run's page header say of a run."""
    rounds = [r for r in document.get("rounds", []) if isinstance(r, dict) and r.get("round", 0) > 0]
    last = rounds[-1].get("global", {}).get("accuracy") if rounds else None
    state = run_state(document, now)
    seconds = duration_seconds(document, state, now)
    return {
        "task": task,
        "run": run,
        "state": state,
        "reason": document.get("reason"),
        "rounds": len(rounds),
        "num_rounds": document.get("num_rounds"),
        "accuracy": last,
        "started_at": document.get("started_at", ""),
        "updated_at": document.get("updated_at", ""),
        "finished_at": document.get("finished_at"),
        "seconds_per_round": seconds_per_round(document),
        "duration_seconds": seconds,
        "duration": format_duration(seconds),  # as the page shows it
    }


class ManifestCache:
    """Manifests as last read, by key and version, least recently used first out:
    the page polls its run every few seconds, and a run of 10 clients x 50 rounds has
    1,550 manifests, of which a poll finds one or two new."""

    def __init__(self, store: ObjectStore, max_bytes: int = 16 * 1024 * 1024) -> None:
        self.store = store
        self.max_bytes = max_bytes  # of manifest JSON as stored
        self._held = 0
        self._documents: OrderedDict[str, tuple[ObjectInfo, dict[str, Any] | None]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, info: ObjectInfo) -> dict[str, Any] | None:
        with self._lock:
            cached = self._documents.get(info.key)
            if cached is not None and info.version and cached[0].version == info.version:
                self._documents.move_to_end(info.key)
                return cached[1]
        document = read_document(self.store, info.key)
        with self._lock:
            previous = self._documents.pop(info.key, None)
            if previous is not None:
                self._held -= previous[0].size
            self._documents[info.key] = (info, document)
            self._held += info.size
            while self._held > self.max_bytes and len(self._documents) > 1:
                _, (evicted, _) = self._documents.popitem(last=False)
                self._held -= evicted.size
        return document


class Monitor:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.manifests = ManifestCache(store)

    def tasks(self, only: str = "") -> dict[str, list[dict[str, Any]]]:
        """Every task's runs (or task ``only``'s), newest first (run ids sort by start time)."""
        now = datetime.now(UTC)
        found: dict[str, list[dict[str, Any]]] = {}
        for task, run, document in run_records(self.store, only):
            found.setdefault(task, []).append(_summary(task, run, document, now))
        return {task: sorted(runs, key=lambda r: r["run"], reverse=True) for task, runs in sorted(found.items())}

    def runs(self, task: str) -> list[dict[str, Any]]:
        _checked_id("task", task)
        runs = self.tasks(task).get(task)
        if not runs:
            raise _not_found(f"no task {task!r}")
        return runs

    def metrics(self, task: str, run: str) -> dict[str, Any]:
        _checked_id("task", task)
        _checked_id("run", run)
        document = read_document(self.store, metrics_key(task, run))
        if document is None:
            raise _not_found(f"no run {run!r} of task {task!r}")
        return document

    def _require_run(self, task: str, run: str) -> None:
        """404 unless the run exists; its record, large for long runs, is not read."""
        _checked_id("task", task)
        _checked_id("run", run)
        if not self.store.exists(metrics_key(task, run)):
            raise _not_found(f"no run {run!r} of task {task!r}")

    def run(self, task: str, run: str) -> dict[str, Any]:
        """A run's record, its logs, and which rounds have explanations of what.

        ``explained[round]`` names the clients with heatmaps (``clients``), whether the
        global model was explained on the probe set (``global``) and whose updates were
        (``updates``). The pictures themselves come a round at a time (``round_pictures``) or a
        client at a time (``client_pictures``): a run of 100 clients has thousands of manifests,
        and the page polls this every few seconds.
        """
        metrics = self.metrics(task, run)
        explained: dict[str, dict[str, Any]] = {}
        logs: list[str] = []
        logs_prefix = f"{run_prefix(task, run)}/{LOGS_DIR}/"
        for info in self.store.list(f"{run_prefix(task, run)}/"):
            if info.key.startswith(logs_prefix) and info.key.endswith(".log"):
                logs.append(info.key.removeprefix(logs_prefix).removesuffix(".log"))
                continue
            folder = Folder.of_manifest(info.key)
            if folder is None:
                continue
            here = explained.setdefault(str(folder.round), {"clients": [], "global": False, "updates": []})
            if folder.subject == "global":
                here["global"] = True
            else:
                here["updates" if folder.subject == "update" else "clients"].append(folder.client_id)
        for here in explained.values():
            here["clients"].sort()
            here["updates"].sort()
        return {
            "task": task,
            "run": run,
            "summary": _summary(task, run, metrics, datetime.now(UTC)),
            "metrics": metrics,
            "logs": sorted(logs),
            "explained": explained,
        }

    def round_pictures(self, task: str, run: str, round_number: int) -> dict[str, Any]:
        """The pictures of one round, with their scores.

        ``gallery[client]`` lists each client's manifest images with their scores
        (deletion gaps of every method, the sanity check of the drawn method, why the
        automatic choice picked it); ``quality[client]`` holds what the manifest says
        of the whole call: how removed pixels were filled (``replacement``) and the
        model-randomisation check of every method (``sanity``). Fields an older
        manifest lacks are null, and a manifest without either call-wide field has no
        ``quality`` entry. ``probe`` holds the probe-set images of the global model
        (``global``) and of each client's update (``updates[client]``), in the
        gallery's form; the comparisons are in the metrics, under the round's
        ``comparison``.
        """
        self._require_run(task, run)
        gallery: dict[str, list[dict[str, Any]]] = {}
        quality: dict[str, dict[str, Any]] = {}
        probe: dict[str, Any] = {"global": None, "updates": {}}
        for folder, manifest in self._manifests(f"{round_prefix(task, run, round_number)}/"):
            images = _gallery_images(manifest, folder)
            if folder.subject == "global":
                probe["global"] = images
            elif folder.subject == "update":
                probe["updates"][folder.client_id] = images
            else:
                gallery[folder.client_id] = images
                if (checks := _call_checks(manifest)) is not None:
                    quality[folder.client_id] = checks
        return {"round": round_number, "gallery": gallery, "quality": quality, "probe": probe}

    def client_pictures(self, task: str, run: str, client: str) -> dict[str, Any]:
        """One client's pictures in every round (``gallery[round]``, ``quality[round]``
        as in ``round_pictures``), for following a class across the rounds."""
        self._require_run(task, run)
        _checked_id("client", client)
        gallery: dict[str, list[dict[str, Any]]] = {}
        quality: dict[str, dict[str, Any]] = {}
        for folder, manifest in self._manifests(f"{run_prefix(task, run)}/", client):
            gallery[str(folder.round)] = _gallery_images(manifest, folder)
            if (checks := _call_checks(manifest)) is not None:
                quality[str(folder.round)] = checks
        return {"client": client, "gallery": gallery, "quality": quality}

    def _manifests(self, prefix: str, client: str = "") -> Iterator[tuple[Folder, dict[str, Any]]]:
        """The readable manifests under ``prefix`` (of ``client``'s heatmaps only, if given)."""
        for info in self.store.list(prefix):
            folder = Folder.of_manifest(info.key)
            if folder is None or (client and (folder.subject, folder.client_id) != ("client", client)):
                continue
            manifest = self.manifests.read(info)
            if manifest is not None:
                yield folder, manifest

    def read(self, key: str, what: str) -> bytes:
        try:
            return self.store.get(key)
        except ObjectNotFound:
            raise _not_found(f"no {what}") from None

    def image(self, folder: Folder, name: str) -> bytes:
        self._check_folder(folder)
        if not _IMAGE_NAME.fullmatch(name):
            raise _not_found(f"no image {name!r}")
        return self.read(f"{folder.prefix}/{name}", f"image {name!r} in {folder.prefix}")

    def manifest(self, folder: Folder) -> bytes:
        self._check_folder(folder)
        return self.read(folder.manifest_key, f"manifest in {folder.prefix}")

    def checkpoint(self, task: str, run: str, round_number: int) -> bytes:
        _checked_id("task", task)
        _checked_id("run", run)
        return self.read(global_model_key(task, run, round_number), f"checkpoint of round {round_number}")

    def log(self, task: str, run: str, service: str) -> bytes:
        _checked_id("task", task)
        _checked_id("run", run)
        _checked_id("service", service)
        return self.read(f"{run_prefix(task, run)}/{LOGS_DIR}/{service}.log", f"log of {service!r}")

    @staticmethod
    def _check_folder(folder: Folder) -> None:
        _checked_id("task", folder.task_id)
        _checked_id("run", folder.run_id)
        if folder.client_id:
            _checked_id("client", folder.client_id)


def _folder_path(folder: Folder) -> str:
    """A folder as the page's URLs name it: /<task>/<run>/<round>/<client, global or updates/client>."""
    where = {"client": folder.client_id, "global": GLOBAL_DIR, "update": f"{UPDATES_DIR}/{folder.client_id}"}
    return f"/{folder.task_id}/{folder.run_id}/{folder.round}/{where[folder.subject]}"


def _gallery_images(manifest: dict[str, Any], folder: Folder) -> list[dict[str, Any]]:
    return [_gallery_entry(entry, folder) for entry in manifest.get("images", []) if isinstance(entry, dict)]


def _call_checks(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What a manifest says of its whole call, or None where it says neither (older manifests)."""
    checks = {"replacement": manifest.get("replacement"), "sanity": _record(manifest.get("sanity"))}
    return checks if any(value is not None for value in checks.values()) else None


def _gallery_entry(entry: dict[str, Any], folder: Folder) -> dict[str, Any]:
    """What the page shows of one manifest entry, with links to what it came from."""
    path = _folder_path(folder)
    checkpoint = None
    if folder.subject != "update":  # an update's weights are not kept
        checkpoint = f"/checkpoints/{folder.task_id}/{folder.run_id}/{folder.round}"
    return {
        "label": entry.get("label"),
        "class_name": entry.get("class_name"),
        "predicted_class": entry.get("predicted_class"),
        "predicted_class_name": entry.get("predicted_class_name"),
        "probability": entry.get("probability"),
        "method": entry.get("method"),
        "target_layer": entry.get("target_layer"),
        "cam_max": entry.get("cam_max"),
        "degenerate": entry.get("degenerate"),
        "weak": entry.get("weak"),
        "faithfulness": _records(entry.get("faithfulness")),
        "sanity_spearman": entry.get("sanity_spearman"),
        "sanity_passed": entry.get("sanity_passed"),
        "selection": _record(entry.get("selection")),
        "sample_sha256": entry.get("sample_sha256"),
        "key": entry.get("key"),
        "src": f"/images{path}/{Path(str(entry.get('key', ''))).name}",
        "manifest": f"/manifests{path}",
        "checkpoint": checkpoint,
    }


def _folder(p: dict[str, Any], updates: bool = False) -> Folder:
    if updates:
        return Folder(p["task"], p["run"], p["round"], "update", p["client"])
    if p["client"] == GLOBAL_DIR:
        return Folder(p["task"], p["run"], p["round"], "global")
    return Folder(p["task"], p["run"], p["round"], "client", p["client"])


# Scripts, styles and images come from this server only; nothing may frame the page.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


class SecurityHeaders(BaseHTTPMiddleware):
    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response


class BasicAuth(BaseHTTPMiddleware):
    """Asks for the user and password (HTTP basic authentication, which every browser
    prompts for) before anything else is served."""

    def __init__(self, app: Any, user: str, password: str) -> None:
        super().__init__(app)
        self._expected = f"{user}:{password}".encode()

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
        try:
            given = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            given = b""
        if scheme.lower() == "basic" and hmac.compare_digest(given, self._expected):
            return await call_next(request)
        return Response(
            "the monitoring page needs its user and password\n",
            status_code=401,
            media_type="text/plain",
            headers={"WWW-Authenticate": 'Basic realm="FedXAI", charset="UTF-8"', **SECURITY_HEADERS},
        )


def create_app(store: ObjectStore, user: str = "", password: str = "") -> Starlette:
    """The page's routes. Handlers are plain functions, which Starlette runs in its
    thread pool: a slow store read never holds up the event loop."""
    monitor = Monitor(store)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    cached = {"Cache-Control": "max-age=60"}

    def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {"tasks": monitor.tasks()})

    def task_page(request: Request) -> Response:
        task = request.path_params["task"]
        newest = monitor.runs(task)[0]["run"]
        return RedirectResponse(f"/tasks/{task}/runs/{newest}", status_code=307)

    def run_page(request: Request) -> Response:
        p = request.path_params
        monitor.metrics(p["task"], p["run"])  # 404 before rendering anything
        return templates.TemplateResponse(request, "run.html", {"task": p["task"], "run": p["run"]})

    def runs_api(request: Request) -> Response:
        return JSONResponse(monitor.runs(request.path_params["task"]))

    def run_api(request: Request) -> Response:
        return JSONResponse(monitor.run(request.path_params["task"], request.path_params["run"]))

    def round_api(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(monitor.round_pictures(p["task"], p["run"], p["round"]))

    def client_api(request: Request) -> Response:
        p = request.path_params
        return JSONResponse(monitor.client_pictures(p["task"], p["run"], p["client"]))

    def metrics_api(request: Request) -> Response:
        return JSONResponse(monitor.metrics(request.path_params["task"], request.path_params["run"]))

    def image(request: Request) -> Response:
        data = monitor.image(_folder(request.path_params), request.path_params["name"])
        return Response(data, media_type="image/jpeg", headers=cached)

    def update_image(request: Request) -> Response:
        data = monitor.image(_folder(request.path_params, updates=True), request.path_params["name"])
        return Response(data, media_type="image/jpeg", headers=cached)

    def manifest(request: Request) -> Response:
        return Response(monitor.manifest(_folder(request.path_params)), media_type="application/json")

    def update_manifest(request: Request) -> Response:
        data = monitor.manifest(_folder(request.path_params, updates=True))
        return Response(data, media_type="application/json")

    def checkpoint(request: Request) -> Response:
        p = request.path_params
        name = f"{p['task']}-{p['run']}-round-{p['round']}.safetensors"
        return Response(
            monitor.checkpoint(p["task"], p["run"], p["round"]),
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    def log(request: Request) -> Response:
        p = request.path_params
        return Response(monitor.log(p["task"], p["run"], p["service"]), media_type="text/plain; charset=utf-8")

    async def not_found(request: Request, error: Exception) -> Response:
        detail = getattr(error, "detail", "not found")
        status = getattr(error, "status_code", 404)
        return templates.TemplateResponse(
            request, "error.html", {"status": status, "detail": detail}, status_code=status
        )

    folder = "{task}/{run}/{round:int}"
    return Starlette(
        routes=[
            Route("/", index),
            Route("/tasks/{task}", task_page),
            Route("/tasks/{task}/runs/{run}", run_page),
            Route("/api/tasks/{task}/runs", runs_api),
            Route("/api/tasks/{task}/runs/{run}", run_api),
            Route("/api/tasks/{task}/runs/{run}/metrics", metrics_api),
            Route("/api/tasks/{task}/runs/{run}/rounds/{round:int}", round_api),
            Route("/api/tasks/{task}/runs/{run}/clients/{client}", client_api),
            Route(f"/images/{folder}/{{client}}/{{name}}", image),
            Route(f"/images/{folder}/{UPDATES_DIR}/{{client}}/{{name}}", update_image),
            Route(f"/manifests/{folder}/{{client}}", manifest),
            Route(f"/manifests/{folder}/{UPDATES_DIR}/{{client}}", update_manifest),
            Route("/checkpoints/{task}/{run}/{round:int}", checkpoint),
            Route("/logs/{task}/{run}/{service}", log),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={404: not_found, 405: not_found},
        middleware=[
            Middleware(SecurityHeaders),
            # A round's pictures with their scores are JSON of a few hundred KB at 100 clients.
            Middleware(GZipMiddleware, minimum_size=4096),
            *([Middleware(BasicAuth, user=user, password=password)] if password else []),
        ],
    )
