"""A fake of Replicate's predictions API: a real aiohttp server, as its public HTTP API
reference describes it, with adjustable processing time and injectable faults.

::

    async with FakeReplicate(api_key="r8_test", processing_s=0.2) as replicate:
        replicate.fail_next("create", throttled(2))        # one 429 with Retry-After: 2
        ...                                                 # base_url = replicate.origin
        assert replicate.submissions == 1 and replicate.max_in_flight == 1

Routes (``Authorization: Bearer <key>`` or ``Token <key>`` when ``api_key`` is set, else 401):

``POST /v1/models/{owner}/{name}/predictions`` ``{"input": {...}}`` and
``POST /v1/predictions`` ``{"version": "<id>" | "owner/name:<id>", "input": {...}}``
    create a prediction: 201 with the prediction object (``id``, ``status``
    ``starting``, ``input`` echoed, ``urls.get``, ``urls.cancel``); 404 for an unknown
    model, 422 for an unknown version or an input the model's schema refuses
    (``invalid_fields``). ``Prefer: wait`` (or ``wait=N``, 1 to 60 s) holds the answer
    until the prediction ends or the wait is over.
``GET /v1/predictions/{id}``
    the prediction: ``starting`` for ``starting_s``, ``processing`` for ``processing_s``,
    then ``succeeded`` (``output`` a URL, or a list of URLs for a model with
    ``output_list``; ``metrics.predict_time``) or ``failed`` (``error``: a scripted one,
    moderation's E005 when the prompt has a ``blocked_words`` word, or "Input
    validation error" when an input URL cannot be fetched).
``POST /v1/predictions/{id}/cancel``
    cancels a prediction that has not ended (status ``canceled``); 200 with it either way.
``GET /delivery/{file}``
    an output image; 404 once ``output_ttl_s`` passed since the prediction ended, when
    the prediction also shows ``output: null`` and ``data_removed: true``.

The edit is the OpenAI fake's (``upstream_edits.render_edit``): colours inverted, only
where the mask marks the area to edit. Each route takes scripted faults
(``fail_next(route, ...)``, ``fail_always[route]``): answer, hang or disconnect, before
anything else is done. Observations: ``create_requests`` (every create, refused ones
too), ``predictions``, ``submissions`` (predictions created), ``in_flight`` and
``max_in_flight`` (predictions created and not ended), ``polls``, ``cancels``,
``downloads``. Run ``python -m tests.support.fakes.replicate --port 9200`` to serve
one by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from aiohttp import hdrs, web
from multidict import CIMultiDict

from tests.support.fakes.replicate_predictions import (
    MODERATED_ERROR,
    NO_CREDIT,
    UNAUTHENTICATED,
    FakeModel,
    FakePrediction,
    prefer_wait,
    problem,
    problem_response,
    read_file,
    render,
    throttled,
)
from tests.support.fakes.server import FakeServer, serve_until_interrupted
from tests.support.fakes.upstream_faults import Fault, FaultKind
from tests.support.fakes.upstream_requests import BadRequest

__all__ = [
    "MODERATED_ERROR",
    "NO_CREDIT",
    "FakeModel",
    "FakeReplicate",
    "Fault",
    "problem",
    "throttled",
]

Route = Literal["create", "get", "cancel", "file"]
ModelOf = Callable[[object], FakeModel]
"""Which model a create request's body runs (raises BadRequest when none)."""

KONTEXT = FakeModel(
    name="black-forest-labs/flux-kontext-pro",
    version="0f1178f5a27e9aa2d2d39c8a43c110f7fa7cbf64062ff04a04cd40899e546065",
    image_field="input_image",
)
"""The model the fake serves unless told otherwise (FLUX Kontext's input names)."""

MAX_BODY_BYTES = 100 * 1024 * 1024


@dataclass
class CreateRequest:
    """One create request as the fake saw it; ``status`` is what it answered."""

    path: str
    headers: CIMultiDict[str]
    document: Any = None
    status: int | None = None
    prediction_id: str | None = None
    at: float = field(default_factory=time.monotonic)


class FakeReplicate(FakeServer):
    """A fake Replicate on a real socket; see the module docstring.

    Settings, changeable at any time (a prediction keeps those it was created with):
    ``api_key``, ``starting_s``, ``processing_s``, ``output_ttl_s``, ``blocked_words``,
    ``models`` (by name; ``add_model``). Its ``origin`` is the ``base_url`` of an
    upstream pointed at it.
    """

    label = "the fake Replicate"
    max_body_bytes = MAX_BODY_BYTES
    fetches_urls = True  # an input may be a URL the model fetches

    def __init__(
        self,
        *,
        api_key: str | None = None,
        starting_s: float = 0.0,
        processing_s: float = 0.0,
        output_ttl_s: float = 3600.0,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.starting_s = starting_s
        self.processing_s = processing_s
        self.output_ttl_s = output_ttl_s
        self.blocked_words: set[str] = set()
        self.models: dict[str, FakeModel] = {}
        self.add_model(KONTEXT)
        self.fail_always: dict[Route, Fault] = {}
        self.create_requests: list[CreateRequest] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.max_in_flight = 0
        self.polls = 0
        self.cancels: list[str] = []
        self.downloads = 0
        self._faults: dict[Route, deque[Fault]] = {}
        self._errors: deque[str | None] = deque()
        self._files: dict[str, tuple[bytes, str, FakePrediction]] = {}
        self._ended: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def add_model(self, model: FakeModel) -> FakeModel:
        """Serve ``model`` (replacing one of the same name); returns it."""
        self.models[model.name] = model
        return model

    def fail_next(self, route: Route, *faults: Fault) -> None:
        """Script faults for the next requests to ``route``, one each, in order."""
        self._faults.setdefault(route, deque()).extend(faults)

    def fail_next_predictions(self, *errors: str | None) -> None:
        """Script how the next predictions end: an ``error`` text fails one, None
        lets it succeed (``MODERATED_ERROR`` is moderation's)."""
        self._errors.extend(errors)

    @property
    def submissions(self) -> int:
        """Predictions created (each one a paid run at Replicate)."""
        return len(self.predictions)

    @property
    def in_flight(self) -> int:
        """Predictions created and not ended."""
        return sum(not p.done for p in self.predictions.values())

    def _add_routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create_for_model)
        app.router.add_post("/v1/predictions", self._create_for_version)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_get("/delivery/{file}/{filename}", self._file)

    async def _on_stop(self) -> None:
        """End every prediction's work."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_ended(self, prediction_id: str, timeout_s: float = 5.0) -> FakePrediction:
        """The prediction, once it ended; TimeoutError after ``timeout_s``."""
        async with asyncio.timeout(timeout_s):
            await self._ended[prediction_id].wait()
        return self.predictions[prediction_id]

    # --- routes ---------------------------------------------------------------------

    async def _create_for_model(self, request: web.Request) -> web.StreamResponse:
        name = f"{request.match_info['owner']}/{request.match_info['name']}"
        return await self._create(request, lambda document: self._model_named(name))

    async def _create_for_version(self, request: web.Request) -> web.StreamResponse:
        return await self._create(request, self._model_of_version)

    async def _create(self, request: web.Request, model_of: ModelOf) -> web.StreamResponse:
        record = CreateRequest(path=request.path, headers=CIMultiDict(request.headers))
        self.create_requests.append(record)
        response = await self._guarded(request, "create")
        if response is None:
            response = await self._created(request, record, model_of)
        record.status = response.status
        return response

    async def _created(
        self, request: web.Request, record: CreateRequest, model_of: ModelOf
    ) -> web.StreamResponse:
        try:
            record.document = await request.json()
        except (ValueError, UnicodeDecodeError):
            return problem_response(400, "The request body is not valid JSON")
        try:
            wait_s = prefer_wait(request.headers.get("Prefer"))
            model = model_of(record.document)
        except BadRequest as exc:
            return problem_response(exc.status, exc.message)
        inputs = record.document.get("input") if isinstance(record.document, dict) else None
        invalid = model.check_input(inputs)
        if invalid:
            detail = "".join(f"- {item['field']}: {item['description']}\n" for item in invalid)
            return problem_response(422, detail, invalid_fields=invalid)
        assert isinstance(inputs, dict)
        prediction = self._start_prediction(model, inputs)
        record.prediction_id = prediction.id
        if wait_s:
            await self._wait(self._ended[prediction.id], wait_s)
        answer = prediction.to_json(self.origin)
        headers = {hdrs.LOCATION: answer["urls"]["get"]}
        return web.json_response(answer, status=201, headers=headers)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        self.polls += 1
        response = await self._guarded(request, "get")
        if response is not None:
            return response
        prediction = self._expired(self.predictions.get(request.match_info["id"]))
        if prediction is None:
            return problem_response(404, "Not found.")
        return web.json_response(prediction.to_json(self.origin))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        response = await self._guarded(request, "cancel")
        if response is not None:
            return response
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return problem_response(404, "Not found.")
        self.cancels.append(prediction.id)
        if not prediction.done:
            self._end(prediction, "canceled")
        self._expired(prediction)
        return web.json_response(prediction.to_json(self.origin))

    async def _file(self, request: web.Request) -> web.StreamResponse:
        self.downloads += 1
        response = await self._guarded(request, "file", auth=False)
        if response is not None:
            return response
        stored = self._files.get(request.match_info["file"])
        if stored is None:
            return web.Response(status=404, text="Not Found")
        image, content_type, prediction = stored
        self._expired(prediction)
        if prediction.data_removed:
            return web.Response(status=404, text="Not Found")
        return web.Response(body=image, content_type=content_type)

    async def _guarded(
        self, request: web.Request, route: Route, *, auth: bool = True
    ) -> web.StreamResponse | None:
        """The answer refusing the request (bad key, a scripted fault), or None."""
        if auth and self.api_key is not None:
            given = request.headers.get(hdrs.AUTHORIZATION, "")
            if given not in (f"Bearer {self.api_key}", f"Token {self.api_key}"):
                return problem_response(401, UNAUTHENTICATED)
        script = self._faults.get(route)
        fault = script.popleft() if script else self.fail_always.get(route)
        if fault is None:
            return None
        if fault.kind is FaultKind.ANSWER:
            headers = {hdrs.CONTENT_TYPE: fault.content_type, **dict(fault.headers)}
            return web.Response(status=fault.http_status, body=fault.body, headers=headers)
        if fault.kind is FaultKind.DISCONNECT and request.transport is not None:
            request.transport.close()
        await self._wait(self._stopping, fault.seconds)
        return None

    # --- predictions ------------------------------------------------------------------

    def _model_named(self, name: str) -> FakeModel:
        model = self.models.get(name)
        if model is None:
            raise BadRequest("The requested resource could not be found.", status=404)
        return model

    def _model_of_version(self, document: object) -> FakeModel:
        version = document.get("version") if isinstance(document, dict) else None
        if not isinstance(version, str) or not version:
            raise BadRequest("version is required", status=422)
        name, _, ident = version.rpartition(":")
        for model in self.models.values():
            if model.version == ident and name in ("", model.name):
                return model
        raise BadRequest("Invalid version or not permitted.", status=422)

    def _start_prediction(self, model: FakeModel, inputs: dict[str, Any]) -> FakePrediction:
        prediction = FakePrediction(id=os.urandom(13).hex()[:26], model=model, inputs=inputs)
        self.predictions[prediction.id] = prediction
        self._ended[prediction.id] = asyncio.Event()
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        error = self._errors.popleft() if self._errors else None
        task = asyncio.create_task(self._run(prediction, error, self.starting_s, self.processing_s))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return prediction

    async def _run(
        self, prediction: FakePrediction, error: str | None, starting_s: float, processing_s: float
    ) -> None:
        await asyncio.sleep(starting_s)
        if prediction.done:  # canceled while starting
            return
        prediction.status, prediction.started_at = "processing", time.time()
        await asyncio.sleep(processing_s)
        if prediction.done:
            return
        prompt = str(prediction.inputs[prediction.model.prompt_field])
        if error is None and any(word in prompt.lower() for word in self.blocked_words):
            error = MODERATED_ERROR
        if error is not None:
            self._end(prediction, "failed", error=error)
            return
        try:
            image, content_type = await self._edit(prediction)
        except BadRequest as exc:
            if not prediction.done:
                self._end(prediction, "failed", error=f"Input validation error: {exc.message}")
            return
        if prediction.done:
            return
        file_id = os.urandom(8).hex()
        extension = content_type.removeprefix("image/").replace("jpeg", "jpg")
        self._files[file_id] = (image, content_type, prediction)
        prediction.output_urls = [f"{self.origin}/delivery/{file_id}/output.{extension}"]
        self._end(prediction, "succeeded")

    async def _edit(self, prediction: FakePrediction) -> tuple[bytes, str]:
        model, inputs = prediction.model, prediction.inputs
        files = inputs[model.image_field]
        values = files if model.image_list else [files]
        images = [await read_file(self._http, value) for value in values]
        mask_value = inputs.get(model.mask_field) if model.mask_field else None
        mask = await read_file(self._http, mask_value) if isinstance(mask_value, str) else None
        prompt = str(inputs[model.prompt_field])
        fmt = str(inputs.get("output_format", "png"))
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, render, images, mask, prompt, fmt, model)

    def _end(self, prediction: FakePrediction, status: str, *, error: str | None = None) -> None:
        prediction.status, prediction.error = status, error
        prediction.completed_at = time.time()
        if prediction.started_at is not None:
            prediction.predict_time_s = round(prediction.completed_at - prediction.started_at, 6)
        self._ended[prediction.id].set()

    def _expired(self, prediction: FakePrediction | None) -> FakePrediction | None:
        """``prediction``, its data removed once ``output_ttl_s`` passed since it ended."""
        if prediction is not None and prediction.completed_at is not None:
            if time.time() >= prediction.completed_at + self.output_ttl_s:
                prediction.data_removed = True
        return prediction


def main(argv: list[str] | None = None) -> None:
    """Serve a fake Replicate until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.fakes.replicate")
    parser.add_argument("--port", type=int, default=9200)
    parser.add_argument("--processing", type=float, default=2.0, help="seconds per prediction")
    parser.add_argument("--api-key", default=None, help="require this token")
    args = parser.parse_args(argv)
    fake = FakeReplicate(api_key=args.api_key, processing_s=args.processing)
    serve_until_interrupted(fake, "fake Replicate: base_url = {fake.origin}", port=args.port)


if __name__ == "__main__":
    main()
