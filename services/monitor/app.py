"""A read-only web page over the store: tasks, per-round metrics as charts, and
the heatmaps of every round, client and class with what the explainer measured
of them (blank or weak maps, deletion scores of every method, the sanity check).

Everything is read through the ``ObjectStore`` interface (a local folder or
S3/MinIO); images are streamed by this server, so a browser needs no access to
the store. Only GET and HEAD are routed: nothing can be written through it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from fedxai.errors import InvalidArgument, ObjectNotFound
from fedxai.storage import ObjectStore, read_document
from fedxai.storage.layout import GLOBAL_DIR, METRICS_NAME, Folder, metrics_key, validate_id

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


class Monitor:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def tasks(self) -> list[dict[str, Any]]:
        found = []
        for info in self.store.list():
            parts = info.key.split("/")
            if len(parts) == 2 and parts[1] == METRICS_NAME:
                document = read_document(self.store, info.key) or {}
                rounds = [r for r in document.get("rounds", []) if r.get("round", 0) > 0]
                last = rounds[-1]["global"]["accuracy"] if rounds else None
                found.append(
                    {
                        "task": parts[0],
                        "status": document.get("status", "unknown"),
                        "rounds": len(rounds),
                        "num_rounds": document.get("num_rounds"),
                        "accuracy": last,
                        "updated_at": document.get("updated_at", ""),
                    }
                )
        return found

    def task(self, task: str) -> dict[str, Any]:
        """The metrics document and the gallery index of one task.

        ``gallery[round][client]`` lists the manifest's images with their scores
        (deletion gaps of every method, the sanity check of the drawn method, why
        the automatic choice picked it); ``quality[round][client]`` holds what the
        manifest says of the whole call: how removed pixels were filled
        (``replacement``) and the model-randomisation check of every method
        (``sanity``). Fields an older manifest lacks are null, and a manifest
        without either call-wide field has no ``quality`` entry. ``probe[round]``
        holds the probe-set images of the global model (``global``) and of each
        client's update (``updates[client]``), in the gallery's form; the
        comparisons are in the metrics, under each round's ``comparison``.
        """
        _checked_id("task", task)
        metrics = read_document(self.store, metrics_key(task))
        if metrics is None:
            raise _not_found(f"no task {task!r}")
        gallery: dict[str, dict[str, list[dict[str, Any]]]] = {}
        quality: dict[str, dict[str, dict[str, Any]]] = {}
        probe: dict[str, dict[str, Any]] = {}
        for info in self.store.list(f"{task}/"):
            folder = Folder.of_manifest(info.key)
            manifest = read_document(self.store, info.key) if folder is not None else None
            if folder is None or manifest is None:
                continue
            images = [_gallery_entry(entry, folder) for entry in manifest.get("images", []) if isinstance(entry, dict)]
            round_key = str(folder.round)
            if folder.subject == "global":
                probe.setdefault(round_key, {"updates": {}})["global"] = images
            elif folder.subject == "update":
                probe.setdefault(round_key, {"updates": {}})["updates"][folder.client_id] = images
            else:
                gallery.setdefault(round_key, {})[folder.client_id] = images
            checks = {"replacement": manifest.get("replacement"), "sanity": _record(manifest.get("sanity"))}
            if folder.subject == "client" and any(value is not None for value in checks.values()):
                quality.setdefault(round_key, {})[folder.client_id] = checks
        return {"task": task, "metrics": metrics, "gallery": gallery, "quality": quality, "probe": probe}

    def image(self, folder: Folder, name: str) -> bytes:
        _checked_id("task", folder.task_id)
        if folder.client_id:
            _checked_id("client", folder.client_id)
        if not _IMAGE_NAME.fullmatch(name):
            raise _not_found(f"no image {name!r}")
        try:
            return self.store.get(f"{folder.prefix}/{name}")
        except ObjectNotFound:
            raise _not_found(f"no image {name!r} in {folder.prefix}") from None


def _gallery_entry(entry: dict[str, Any], folder: Folder) -> dict[str, Any]:
    """What the page shows of one manifest entry."""
    path = {"client": folder.client_id, "global": GLOBAL_DIR, "update": f"updates/{folder.client_id}"}[folder.subject]
    return {
        "label": entry.get("label"),
        "predicted_class": entry.get("predicted_class"),
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
        "src": f"/images/{folder.task_id}/{folder.round}/{path}/{Path(str(entry.get('key', ''))).name}",
    }


def create_app(store: ObjectStore) -> Starlette:
    monitor = Monitor(store)
    templates = Jinja2Templates(directory=str(HERE / "templates"))

    async def index(request: Request) -> Response:
        return templates.TemplateResponse(request, "index.html", {"tasks": monitor.tasks()})

    async def task_page(request: Request) -> Response:
        task = request.path_params["task"]
        monitor.task(task)  # 404 before rendering anything
        return templates.TemplateResponse(request, "task.html", {"task": task})

    async def task_api(request: Request) -> Response:
        return JSONResponse(monitor.task(request.path_params["task"]))

    async def image(request: Request) -> Response:
        p = request.path_params
        subject = "global" if p["client"] == GLOBAL_DIR else "client"
        data = monitor.image(
            Folder(p["task"], p["round"], subject, "" if subject == "global" else p["client"]), p["name"]
        )
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    async def update_image(request: Request) -> Response:
        p = request.path_params
        data = monitor.image(Folder(p["task"], p["round"], "update", p["client"]), p["name"])
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=60"})

    async def not_found(request: Request, error: Exception) -> Response:
        detail = getattr(error, "detail", "not found")
        status = getattr(error, "status_code", 404)
        return templates.TemplateResponse(
            request, "error.html", {"status": status, "detail": detail}, status_code=status
        )

    return Starlette(
        routes=[
            Route("/", index),
            Route("/tasks/{task}", task_page),
            Route("/api/tasks/{task}", task_api),
            Route("/images/{task}/{round:int}/{client}/{name}", image),
            Route("/images/{task}/{round:int}/updates/{client}/{name}", update_image),
            Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        ],
        exception_handlers={404: not_found, 405: not_found},
    )
