"""A running vLLM server's HTTP API: health, the models it serves, and
runtime LoRA loading. The one place that talks to model servers."""

from __future__ import annotations

import requests


class ServerError(Exception):
    """The server refused or did not answer; the message says what it said."""


class VllmClient:
    def __init__(self, base_url: str, api_key: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {api_key}"

    def healthy(self) -> bool:
        """Whether /health answers 200 now."""
        try:
            return self.session.get(self.base_url + "/health", timeout=self.timeout).status_code == 200
        except requests.RequestException:
            return False

    def models(self) -> list[dict]:
        """The served models: the base and every loaded adapter (`parent` names the base)."""
        return self._call("get", "/v1/models").json()["data"]

    def metrics_text(self) -> str:
        """The server's Prometheus metrics, as text."""
        return self._call("get", "/metrics").text

    def load_adapter(self, name: str, path: str) -> None:
        self._call("post", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path})

    def unload_adapter(self, name: str) -> None:
        self._call("post", "/v1/unload_lora_adapter", json={"lora_name": name})

    def _call(self, method: str, path: str, **kwargs) -> requests.Response:
        try:
            response = self.session.request(method, self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise ServerError(
                f"The model server at {self.base_url} did not answer: {exc.__class__.__name__}."
            ) from None
        if response.status_code >= 400:
            raise ServerError(f"{path} answered {response.status_code}: {response.text[:300]}")
        return response
