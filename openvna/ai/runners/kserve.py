"""The ``kserve`` runtime: remote inference over the KServe v2 / Open Inference Protocol.

The model runs on an inference server (KServe, MLServer, Triton, TorchServe's v2
endpoint...) and is reached through the protocol's REST binding:

* ``GET  {url}/v2/models/{name}[/versions/{version}]/ready`` - 200 when the model can
  serve; checked before each job so a server that lost its model fails fast and clearly;
* ``POST {url}/v2/models/{name}[/versions/{version}]/infer`` with
  ``{"inputs": [{"name", "shape", "datatype", "data"}]}``; ``data`` is the tensor
  flattened in row-major order and ``datatype`` one of the protocol's tensor types
  (``FP32``, ``INT16``, ``UINT8``...). The answer's ``outputs`` come back as numpy
  arrays of their ``shape`` and ``datatype``.

The standard library's :mod:`http.client` is used: two requests per job need no extra
dependency, and it never routes a loopback or cluster-internal server through an
``http_proxy`` set for the archive's outbound traffic. Tensors travel as JSON (the
binary-data extension is not used), so adapters should send a reduced tensor (a
downsampled volume, a projection), not a whole 512x512x600 series.

Every way the server can fail - connection refused, no answer within the timeout, an
HTTP error (with the server's ``error`` message), a malformed answer - is a
:class:`~openvna.ai.errors.RemoteInferenceError` naming the URL.
"""

from __future__ import annotations

import http.client
import json
import uuid
from typing import Any, Final
from urllib.parse import quote, urlsplit

import numpy as np
import numpy.typing as npt

from openvna.ai.errors import RemoteInferenceError
from openvna.ai.inputs import ModelInput
from openvna.ai.outputs import ModelOutput
from openvna.ai.privacy import deidentify_input
from openvna.ai.runners.base import TensorAdapter, Tensors
from openvna.ai.runners.python import model_failures

DATATYPES: Final[dict[str, str]] = {
    "bool": "BOOL",
    "uint8": "UINT8",
    "uint16": "UINT16",
    "uint32": "UINT32",
    "uint64": "UINT64",
    "int8": "INT8",
    "int16": "INT16",
    "int32": "INT32",
    "int64": "INT64",
    "float16": "FP16",
    "float32": "FP32",
    "float64": "FP64",
}
"""numpy dtype name -> Open Inference Protocol tensor datatype."""

NUMPY_DTYPES: Final[dict[str, str]] = {value: key for key, value in DATATYPES.items()}


def encode_tensor(name: str, array: npt.NDArray[Any]) -> dict[str, Any]:
    """One request input: ``{"name", "shape", "datatype", "data"}`` (data row-major)."""
    array = np.asarray(array)
    datatype = DATATYPES.get(array.dtype.name)
    if datatype is None:
        raise ValueError(f"tensor {name!r} has dtype {array.dtype}, which KServe v2 lacks")
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel(order="C").tolist(),
    }


def decode_tensor(tensor: dict[str, Any]) -> tuple[str, npt.NDArray[Any]]:
    """One response output as ``(name, array)``; ``data`` may be flat or nested."""
    name = str(tensor["name"])
    dtype = NUMPY_DTYPES.get(str(tensor["datatype"]))
    if dtype is None:
        raise ValueError(f"output {name!r} has unsupported datatype {tensor['datatype']!r}")
    shape = tuple(int(size) for size in tensor["shape"])
    flat = np.asarray(tensor["data"], dtype=dtype).ravel()
    if flat.size != int(np.prod(shape, dtype=np.int64)):
        raise ValueError(f"output {name!r} has {flat.size} values for shape {list(shape)}")
    return name, flat.reshape(shape)


class KServeRunner:
    """Sends a job's tensors to one model on a KServe v2 server and reads its answer."""

    def __init__(
        self,
        url: str,
        model_name: str,
        adapter: TensorAdapter,
        *,
        model_version: str | None = None,
        timeout_seconds: float = 60.0,
        deidentify: bool = True,
        check_ready: bool = True,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"KServe url must be http(s)://host[:port][/path], got {url!r}")
        self.url = url.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        path = f"{parts.path.rstrip('/')}/v2/models/{quote(model_name, safe='')}"
        if model_version:
            path += f"/versions/{quote(model_version, safe='')}"
        self._model_path = path
        self.model_name = model_name
        self._adapter = adapter
        self._timeout = timeout_seconds
        self._deidentify = deidentify
        self._check_ready = check_ready

    def run(self, model_input: ModelInput) -> ModelOutput:
        """De-identify (when asked), check readiness, infer, and let the adapter read the
        answer. The adapter's ``from_tensors`` gets the *original* input, so results are
        written against the real study."""
        sent = deidentify_input(model_input) if self._deidentify else model_input
        with model_failures("adapter.to_tensors"):
            tensors = self._adapter.to_tensors(sent)
            request = {
                "id": str(uuid.uuid4()),
                "inputs": [encode_tensor(name, array) for name, array in tensors.items()],
            }
        if self._check_ready:
            self.ready()
        answer = self._request("POST", f"{self._model_path}/infer", request)
        outputs = self._outputs(answer)
        with model_failures("adapter.from_tensors"):
            return self._adapter.from_tensors(outputs, model_input)

    def ready(self) -> None:
        """Return when the model is ready, else raise RemoteInferenceError."""
        self._request("GET", f"{self._model_path}/ready")

    def _outputs(self, answer: Any) -> Tensors:
        try:
            return dict(decode_tensor(tensor) for tensor in answer["outputs"])
        except (KeyError, TypeError, ValueError) as error:
            raise RemoteInferenceError(
                f"{self._endpoint('/infer')}: malformed inference response: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _endpoint(self, suffix: str = "") -> str:
        port = f":{self._port}" if self._port else ""
        return f"{self._scheme}://{self._host}{port}{self._model_path}{suffix}"

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One HTTP exchange; the decoded JSON answer (None for an empty body)."""
        target = f"{self._scheme}://{self._host}{f':{self._port}' if self._port else ''}{path}"
        connection_class = (
            http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        )
        connection = connection_class(self._host, self._port, timeout=self._timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=payload, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except ConnectionRefusedError as error:
            raise RemoteInferenceError(
                f"{method} {target}: connection refused (is the inference server running?)"
            ) from error
        except TimeoutError as error:
            raise RemoteInferenceError(
                f"{method} {target}: no answer within {self._timeout:g} s"
            ) from error
        except (OSError, http.client.HTTPException) as error:
            raise RemoteInferenceError(
                f"{method} {target}: {type(error).__name__}: {error}"
            ) from error
        finally:
            connection.close()
        if status >= 400:
            raise RemoteInferenceError(f"{method} {target}: HTTP {status}: {_server_error(raw)}")
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as error:
            raise RemoteInferenceError(f"{method} {target}: answer is not JSON") from error


def _server_error(raw: bytes) -> str:
    """The protocol's ``{"error": "..."}`` message, else the start of the body."""
    text = raw.decode("utf-8", errors="replace")
    try:
        decoded = json.loads(text)
    except ValueError:
        return text[:500] or "(empty body)"
    if isinstance(decoded, dict) and decoded.get("error"):
        return str(decoded["error"])
    return text[:500]
