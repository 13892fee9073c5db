"""What one client must not be able to do to the others, over real HTTP against one server with
tight per-key limits: each test is a request a security review or a red team sent to an
earlier version, which answered it by stalling, starving or failing everyone."""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from PIL import Image

from harness.servers import Server, bentoml_serve
from models.adapters import ensure_adapter
from models.recipes import SD_TINY_STYLE
from tests.conftest import API_KEY, AUTH, METRICS_AUTH, OTHER_AUTH, OTHER_KEY
from tests.test_inputs import png
from tests.test_jobs_e2e import LONG

pytestmark = pytest.mark.e2e

PER_KEY = 2  # requests in flight per key
JOBS_PER_KEY = 3
BODY_TIMEOUT_S = 2
FILLER_KEY = "test-key-filler-9e8d"  # a key that fills its own quotas
FUZZER_KEY = "test-key-fuzzer-7c6b"  # schemathesis' key: its settings and jobs stay its own
FILLER = {"Authorization": f"Bearer {FILLER_KEY}"}
BOMB = base64.b64encode(png(14000, 14000, 8, 6, None)).decode()  # RGBA, 196 megapixels claimed


def b64_png(size: tuple[int, int] = (64, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ensure_adapter(SD_TINY_STYLE)  # a stored LoRA, whose source path must stay in the logs
    log = tmp_path_factory.mktemp("guarded") / "bentoml-serve.log"
    settings = {
        "api_keys": ",".join([API_KEY, OTHER_KEY, FILLER_KEY, FUZZER_KEY]),
        "max_concurrency": "8",
        "max_concurrency_per_key": str(PER_KEY),
        "body_timeout_s": str(BODY_TIMEOUT_S),
        "max_jobs": "12",
        "max_jobs_per_key": str(JOBS_PER_KEY),
        "max_queue_wait_s": "100000",  # eight large images at once are admitted
        "warmup": "false",
    }
    with bentoml_serve(log, **settings) as running:
        yield running


def test_an_adversarial_lora_prompt_is_refused_at_once_and_the_loop_stays_free(
    guarded: Server,
) -> None:
    """Was: `<lora:x:` x 32,000 took 113 s to refuse, /livez silent meanwhile."""
    probes: list[float] = []
    done, connected = threading.Event(), threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=guarded.url, timeout=30) as client:
            client.get("/livez")  # the connection made: what is timed is the loop alone
            connected.set()
            while not done.is_set():
                started = time.perf_counter()
                assert client.get("/livez").status_code == 200
                probes.append(time.perf_counter() - started)
                time.sleep(0.01)

    prober = threading.Thread(target=probe)
    prober.start()
    assert connected.wait(30)
    try:
        started = time.perf_counter()
        response = httpx.post(
            f"{guarded.url}/sdapi/v1/txt2img",
            json={"prompt": "<lora:x:" * 131_072},  # 1 MiB
            headers=AUTH,
            timeout=300,
        )
        elapsed = time.perf_counter() - started
    finally:
        done.set()
        prober.join()
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["prompt"]
    assert elapsed < 1.0
    assert probes and max(probes) < 0.1, probes


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a cat <lora:x:1.2.3>", "must give a number as its scale, but gives '1.2.3'"),
        ("<lora:x:" * 370, "must be at most 2000 characters"),  # in bounds, no tag closes
    ],
)
def test_a_malformed_lora_tag_is_a_422_naming_the_prompt(
    guarded: Server, prompt: str, expected: str
) -> None:
    response = httpx.post(
        f"{guarded.url}/sdapi/v1/txt2img", json={"prompt": prompt}, headers=AUTH, timeout=30
    )
    assert response.status_code == 422, response.text
    assert expected in response.json()["error"]


def test_one_key_cannot_fill_the_job_store_for_the_others(guarded: Server) -> None:
    """Was: one key's jobs up to IMAGEGEN_MAX_JOBS made every other key's `POST /jobs` 503."""
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        held = [client.post("/jobs", json=LONG, headers=FILLER) for _ in range(JOBS_PER_KEY)]
        assert [response.status_code for response in held] == [202] * JOBS_PER_KEY
        refused = client.post("/jobs", json=LONG, headers=FILLER)
        assert refused.status_code == 429, refused.text
        assert "IMAGEGEN_MAX_JOBS_PER_KEY" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) >= 1
        other = client.post(
            "/jobs", json={"prompt": "a cat", "num_inference_steps": 2}, headers=AUTH
        )
        assert other.status_code == 202, other.text
        for response in held:
            client.delete(f"/jobs/{response.json()['id']}", headers=FILLER)


def test_one_key_holding_its_slots_leaves_the_others_served(guarded: Server) -> None:
    """Was: 16 event streams on one job held every slot; every other key got 429."""
    with httpx.Client(base_url=guarded.url, timeout=30) as client, ExitStack() as streams:
        job = client.post("/jobs", json=LONG, headers=OTHER_AUTH).json()["id"]
        for _ in range(PER_KEY):
            stream = streams.enter_context(
                client.stream("GET", f"/jobs/{job}/events", headers=OTHER_AUTH)
            )
            assert stream.status_code == 200
        refused = client.get("/models", headers=OTHER_AUTH)
        assert refused.status_code == 429, refused.text
        assert "This API key has its limit of 2 requests in flight" in refused.json()["error"]
        assert client.get("/models", headers=AUTH).status_code == 200
        client.delete(f"/jobs/{job}", headers=OTHER_AUTH)


def test_a_body_trickled_a_byte_at_a_time_is_cut_off_at_its_deadline(guarded: Server) -> None:
    """Was: a body sent a byte at a time held its slot until the 600 s timeout."""
    host, port = guarded.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=BODY_TIMEOUT_S + 10) as raw:
        raw.sendall(
            b"POST /generate/image HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {API_KEY}\r\n".encode()
            + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
        )
        started = time.monotonic()
        answer = b""
        raw.settimeout(0.2)
        while b"\r\n\r\n" not in answer:
            assert time.monotonic() - started < BODY_TIMEOUT_S + 5, "never cut off"
            try:
                raw.sendall(b" ")  # a byte now and then, as a slow-loris client sends
                answer += raw.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # the server closed the connection: read what it answered
                raw.settimeout(2)
                answer += raw.recv(4096)
                break
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]


@pytest.fixture(scope="module")
def finished_job(guarded: Server) -> str:
    body = {"prompt": "a", "num_inference_steps": 1}
    job_id: str = httpx.post(f"{guarded.url}/jobs", json=body, headers=AUTH).json()["id"]
    return job_id


@pytest.mark.parametrize(
    "last_event_id",
    ["²".encode("latin-1"), b"9" * 5000, b"1-0"],
    ids=["superscript-two", "5000-digits", "another-store-s"],
)
def test_a_bad_last_event_id_is_a_400_before_the_stream(
    guarded: Server, finished_job: str, last_event_id: bytes
) -> None:
    """Was: a 200, then the stream aborted with an ERROR traceback in the log."""
    response = httpx.get(
        f"{guarded.url}/jobs/{finished_job}/events",
        headers={**AUTH, "Last-Event-ID": last_event_id},  # type: ignore[dict-item]
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["detail"][0]["loc"] == ["Last-Event-ID"]


# Every image field of every API, with a header claiming 196 megapixels. Was: A1111's
# `inpainting_mask_invert` decoded the mask before any check (a 500 past Pillow's bound).
IMAGE_FIELDS = [
    ("/generate/image", {"image": BOMB}, 400, "image"),
    ("/generate/image", {"image": b64_png(), "mask": BOMB}, 400, "mask"),
    ("/generate/images", {"image": BOMB}, 400, "image"),
    ("/jobs", {"image": b64_png(), "mask": BOMB}, 400, "mask"),
    ("/sdapi/v1/img2img", {"init_images": [BOMB]}, 422, "init_images"),
    ("/sdapi/v1/img2img", {"init_images": [b64_png()], "mask": BOMB}, 422, "mask"),
    (
        "/sdapi/v1/img2img",
        {"init_images": [b64_png()], "mask": BOMB, "inpainting_mask_invert": 1},
        422,
        "mask",
    ),
]


@pytest.mark.parametrize(("path", "fields", "status", "field"), IMAGE_FIELDS)
def test_an_image_bomb_in_any_field_is_refused_naming_it(
    guarded: Server, path: str, fields: dict[str, object], status: int, field: str
) -> None:
    body = {"prompt": "a cat", **fields}
    response = httpx.post(f"{guarded.url}{path}", json=body, headers=AUTH, timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["detail"][0]["loc"] == [field]
    assert "must have at most" in response.json()["error"]


@pytest.mark.parametrize("field", ["image", "mask"])
def test_an_image_bomb_in_an_openai_edit_is_refused_naming_it(guarded: Server, field: str) -> None:
    files = {"image": ("a.png", base64.b64decode(b64_png()), "image/png")}
    files[field] = ("bomb.png", base64.b64decode(BOMB), "image/png")
    response = httpx.post(
        f"{guarded.url}/v1/images/edits", data={"prompt": "a cat"}, files=files, headers=AUTH
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == field


@pytest.mark.parametrize("body", [None, b"[]", b"null"], ids=["no-body", "array", "null"])
def test_an_openai_request_that_is_no_object_is_a_400(guarded: Server, body: bytes | None) -> None:
    """Was: a 500 (an IndexError in the OpenAI error shaper)."""
    response = httpx.post(
        f"{guarded.url}/v1/images/generations",
        content=body,
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith("The request body must be a JSON object")


def test_every_answer_tells_browsers_not_to_sniff_frame_or_run_it(guarded: Server) -> None:
    """Was: no `nosniff` anywhere, no CSP on /docs, /web/index.html without the page's CSP."""
    with httpx.Client(base_url=guarded.url, timeout=60) as client:
        answers = {
            "json": client.get("/models", headers=AUTH),
            "error": client.get("/models"),
            "image": client.post("/generate/image", json={"prompt": "a"}, headers=AUTH),
            "page": client.get("/"),
            "page by its file": client.get("/web/index.html"),
            "docs": client.get("/docs"),
        }
    for name, answer in answers.items():
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"], name
    assert answers["json"].headers["content-security-policy"].startswith("default-src 'none'")
    page_policy = answers["page"].headers["content-security-policy"]
    assert answers["page by its file"].headers["content-security-policy"] == page_policy
    assert "script-src 'self'" in answers["docs"].headers["content-security-policy"]
    assert (
        "unsafe-inline"
        not in answers["docs"]
        .headers["content-security-policy"]
        .split("script-src")[1]
        .split(";")[0]
    )


def test_a_lora_s_source_path_is_in_the_operator_s_log_only(guarded: Server) -> None:
    """Was: its path on the operator's disk in `GET /models` and `/sdapi/v1/loras`."""
    with httpx.Client(base_url=guarded.url, headers=AUTH) as client:
        models = client.get("/models").json()
        loras = client.get("/sdapi/v1/loras").json()
    assert SD_TINY_STYLE.name in [lora["name"] for lora in models[0]["loras"]]
    assert "recipe sd-tiny-style" not in str(models) + str(loras)
    assert "from recipe sd-tiny-style" in guarded.log.read_text()


def test_schemathesis_finds_no_server_error_or_undocumented_status(
    guarded: Server, tmp_path: Path
) -> None:
    """Every operation of /docs.json fuzzed, a few examples each, within a time cap. Was: the
    document was refused (OpenAPI 3.0.2 with 3.1's bounds) and the OpenAI route answered 500s."""
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "run",
            f"{guarded.url}/docs.json",
            "--header",
            f"Authorization: Bearer {FUZZER_KEY}",
            "--checks",
            "not_a_server_error,status_code_conformance",
            "--max-examples",
            "3",
            "--seed",
            "1",
            "--request-timeout",
            "60",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,  # where it keeps its cache
    )
    assert result.returncode == 0, result.stdout[-6000:]


def test_metrics_stay_bounded_name_no_job_and_take_the_metrics_key(
    guarded: Server, finished_job: str
) -> None:
    """Was: open to anyone, 300 unknown paths grew it from 86 series to 6,087, and every job's
    paths were labels naming its id."""
    with httpx.Client(base_url=guarded.url, timeout=30) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers=AUTH).status_code == 401  # a client's key
        before = client.get("/metrics", headers=METRICS_AUTH).text
        for k in range(300):
            client.get(f"/unknown/{k}", headers=AUTH)
        for path in ("", "/events", "/result"):
            client.get(f"/jobs/{finished_job}{path}", headers=AUTH)
        after = client.get("/metrics", headers=METRICS_AUTH).text
    assert finished_job not in after and "/unknown/" not in after
    assert 'route="unmatched"' in after and 'route="/jobs/{job_id}/events"' in after
    unmatched = 'imagegen_http_requests_total{method="GET",route="unmatched",status="404"} '

    def unmatched_count(metrics: str) -> float:
        found = [line for line in metrics.splitlines() if line.startswith(unmatched)]
        return float(found[0].removeprefix(unmatched)) if found else 0.0

    assert unmatched_count(after) - unmatched_count(before) == 300  # one series for them all
    assert len(after) < len(before) + 20_000  # the 300 paths added one series, not 300


def livez_seconds(url: str, count: int, pause: float = 0.01) -> list[float]:
    """``count`` timed probes of /livez, one connection kept alive."""
    timings = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for _ in range(count):
            started = time.perf_counter()
            assert client.get("/livez").status_code == 200
            timings.append(time.perf_counter() - started)
            time.sleep(pause)
    return timings


def p99(timings: list[float]) -> float:
    return sorted(timings)[max(0, round(0.99 * len(timings)) - 1)]


def test_the_event_loop_stays_free_while_eight_large_images_encode(guarded: Server) -> None:
    """Was: 8 large PNG encodes and their base64 held /livez up to 2.3 s."""
    idle = p99(livez_seconds(guarded.url, 50))
    large = {"prompt": "noise", "width": 1024, "height": 1024, "num_inference_steps": 1}
    keys = [API_KEY, OTHER_KEY, FILLER_KEY, FUZZER_KEY]  # two each: the per-key limit
    busy: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            busy.extend(livez_seconds(guarded.url, 5))

    def generate(key: str) -> int:
        headers = {"Authorization": f"Bearer {key}"}
        url = f"{guarded.url}/generate/images"
        response = httpx.post(url, json=large, headers=headers, timeout=300)
        return response.status_code if response.status_code == 200 else response.text

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(generate, keys * 2))
    finally:
        done.set()
        prober.join()
    assert statuses == [200] * 8
    assert len(busy) >= 20
    assert p99(busy) - idle < 0.05, (idle, sorted(busy)[-5:])
