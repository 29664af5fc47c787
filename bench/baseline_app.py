"""The least an API over this store can do: one insert per POST /jobs, one read per GET /jobs/{id}.

bench/load.py runs it under the service's own gunicorn settings on stores of its own, with the
same load, so that the service's figures stand beside the limit the store sets, measured in the
same run. It has no validation, queue, limiter or encryption: it is a yardstick, not a service.
"""

from __future__ import annotations

import os
import uuid

import falcon
import orjson
import pymongo


class JobCollection:
    def __init__(self, collection) -> None:
        self.collection = collection

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        request_id = str(uuid.uuid4())
        self.collection.insert_one({"_id": request_id, "status": "queued", "payload": orjson.loads(req.bounded_stream.read())})
        resp.status = falcon.HTTP_202
        resp.media = {"request_id": request_id}


class Health:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"status": "ok"}


class JobItem:
    def __init__(self, collection) -> None:
        self.collection = collection

    def on_get(self, req: falcon.Request, resp: falcon.Response, request_id: str) -> None:
        job = self.collection.find_one({"_id": request_id}, {"payload": False})
        if job is None:
            raise falcon.HTTPNotFound()
        resp.media = {"request_id": job["_id"], "status": job["status"]}


def create_app() -> falcon.App:
    """Build the yardstick app on MONGODB_URI."""
    collection = pymongo.MongoClient(os.environ["MONGODB_URI"]).get_default_database("vendorfetch")["jobs"]
    app = falcon.App()
    json_handler = falcon.media.JSONHandler(dumps=orjson.dumps, loads=orjson.loads)
    app.resp_options.media_handlers = falcon.media.Handlers({falcon.MEDIA_JSON: json_handler})
    app.add_route("/jobs", JobCollection(collection))
    app.add_route("/jobs/{request_id}", JobItem(collection))
    app.add_route("/healthz", Health())
    return app
