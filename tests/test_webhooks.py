"""Webhooks: the allow-list and URL rules, signed delivery with retries, no redirects; and
end to end, a real server notifying a receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import standardwebhooks

from harness.servers import Server, bentoml_serve
from imagegen.errors import InvalidField
from imagegen.serving.jobs.webhooks import Webhooks
from tests.conftest import AUTH

SECRET = "webhook-secret-for-tests"


class Receiver:
    """An HTTP server on 127.0.0.1 that records POSTs and answers from a script of statuses
    (the last one repeats)."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[str, dict[str, str], bytes]] = []
        self.got = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path, dict(self.headers), body))
                status = receiver.statuses[min(len(receiver.received), len(statuses)) - 1]
                self.send_response(status)
                if status in (301, 302, 307, 308):
                    self.send_header("Location", "/elsewhere")
                self.end_headers()
                receiver.got.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/hook"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.http.shutdown()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    running = Receiver(getattr(request, "param", [200]))
    yield running
    running.close()


HOOKS = Webhooks("127.0.0.1, hooks.example.com:8443", SECRET, backoff_s=0.01)
# How a receiver checks a delivery: the Standard Webhooks library, given the secret as it asks.
RECEIVER = standardwebhooks.Webhook("whsec_" + base64.b64encode(SECRET.encode()).decode())


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("ftp://127.0.0.1/x", "must be an http or https URL"),
        ("http://user:pw@127.0.0.1/x", "must not carry credentials"),
        ("http://169.254.169.254/latest", "must name a host this server allows"),
        ("https://hooks.example.com/x", "must name a host this server allows"),  # wrong port
        # A bare host allows its scheme's default port only, not the host's other services.
        ("http://127.0.0.1:6379/x", "must name a host this server allows"),
        ("https://127.0.0.1:80/x", "must name a host this server allows"),
        ("http://127.0.0.1:99999/x", "must be a valid URL"),
        ("not a url", "must be an http or https URL"),
    ],
)
def test_a_webhook_outside_the_rules_is_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(InvalidField) as refused:
        HOOKS.check(url)
    assert refused.value.field == "webhook" and rule in refused.value.message


def test_allowed_hosts_pass() -> None:
    for url in [
        "http://127.0.0.1/hook",
        "http://127.0.0.1:80/hook",
        "https://127.0.0.1/hook",
        "https://hooks.example.com:8443/hook",
    ]:
        HOOKS.check(url)


def test_without_allowed_hosts_webhooks_are_off() -> None:
    with pytest.raises(InvalidField, match="IMAGEGEN_WEBHOOK_HOSTS is empty"):
        Webhooks("", "").check("http://127.0.0.1/hook")


@pytest.mark.parametrize("receiver", [[503, 500, 200]], indirect=True)
def test_a_failed_delivery_is_retried_and_signed(receiver: Receiver) -> None:
    payload = {"id": "j1", "status": "succeeded"}
    assert asyncio.run(HOOKS.deliver(receiver.url, payload))
    assert len(receiver.received) == 3
    _, headers, body = receiver.received[-1]
    assert RECEIVER.verify(body, headers) == payload
    # One delivery id across its retries, so a receiver drops the replay of one it has seen.
    assert len({headers["webhook-id"] for _, headers, _ in receiver.received}) == 1


def test_a_replayed_or_altered_delivery_fails_the_receiver_s_check(receiver: Receiver) -> None:
    asyncio.run(HOOKS.deliver(receiver.url, {"id": "j1", "status": "succeeded"}))
    [(_, headers, body)] = receiver.received
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        RECEIVER.verify(body.replace(b"succeeded", b"cancelled"), headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError, match="too old"):
        old = str(int(headers["webhook-timestamp"]) - 600)  # replayed ten minutes later
        resigned = {**headers, "webhook-timestamp": old}
        RECEIVER.verify(body, resigned)


@pytest.mark.parametrize("receiver", [[500]], indirect=True)
def test_retries_are_bounded(receiver: Receiver) -> None:
    assert not asyncio.run(HOOKS.deliver(receiver.url, {"id": "j", "status": "failed"}))
    assert len(receiver.received) == HOOKS.attempts


@pytest.mark.parametrize("receiver", [[302]], indirect=True)
def test_a_redirect_is_not_followed(receiver: Receiver) -> None:
    assert not asyncio.run(HOOKS.deliver(receiver.url, {"id": "j", "status": "failed"}))
    assert [path for path, _, _ in receiver.received] == ["/hook"]  # never /elsewhere


def test_a_server_without_allowed_hosts_refuses_a_webhook(client: Any) -> None:
    response = client.post("/jobs", json={"prompt": "a", "webhook": "http://127.0.0.1/x"})
    assert response.status_code == 400
    assert "IMAGEGEN_WEBHOOK_HOSTS is empty" in response.json()["error"]


@pytest.fixture(scope="module")
def hooked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Receiver]]:
    """A server allowed to call one receiver, by host and port."""
    receiver = Receiver([200])
    log = tmp_path_factory.mktemp("hooked") / "bentoml-serve.log"
    host = urlsplit(receiver.url).netloc
    settings = {"webhook_hosts": host, "webhook_secret": SECRET, "warmup": "false"}
    with bentoml_serve(log, **settings) as running:
        yield running, receiver
    receiver.close()


@pytest.mark.e2e
def test_a_finished_job_notifies_its_webhook_once(hooked: tuple[Server, Receiver]) -> None:
    hooked_server, receiver = hooked
    body = {"prompt": "a cat", "num_inference_steps": 2, "webhook": receiver.url}
    job_id = httpx.post(f"{hooked_server.url}/jobs", json=body, headers=AUTH).json()["id"]
    assert receiver.got.wait(60)
    [(path, headers, sent)] = receiver.received
    payload = json.loads(sent)
    assert path == "/hook" and payload["id"] == job_id and payload["status"] == "succeeded"
    assert payload["links"]["result"] == f"/jobs/{job_id}/result"
    assert headers["X-Imagegen-Event"] == "job.succeeded"
    assert RECEIVER.verify(sent, headers) == payload


@pytest.mark.e2e
def test_the_allowed_host_on_another_port_is_refused(hooked: tuple[Server, Receiver]) -> None:
    hooked_server, receiver = hooked
    elsewhere = receiver.url.replace(f":{urlsplit(receiver.url).port}/", ":6379/")
    body = {"prompt": "a cat", "webhook": elsewhere}
    response = httpx.post(f"{hooked_server.url}/jobs", json=body, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["webhook"]
