"""A command-line client for the jobs API:

    python -m imagegen.client generate "a cat" -o cat.png --steps 30 [--n 4]
    python -m imagegen.client generate "a cat" --image photo.jpg [--mask mask.png] [--strength 0.6]
    python -m imagegen.client generate "a cat" --model sd15 --lora pixel-art=0.8 [--lora ...]

It submits a job (with ``--image``, an image-to-image one; with ``--mask`` too, inpainting),
draws a progress bar from the job's event stream, saves the images (with ``--n`` above 1, as
``cat-0.png``, ``cat-1.png``, ...), and on Ctrl-C cancels the job on the server before it
exits. The key comes from ``--key`` or ``IMAGEGEN_API_KEY``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import connect_sse
from tqdm import tqdm

INTERRUPTED = 130  # the shell's exit status for Ctrl-C


class JobFailed(Exception):
    pass


def _error(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def follow(client: httpx.Client, job_id: str) -> None:
    """Draw the job's progress until it ends; raise JobFailed unless it succeeded."""
    with (
        tqdm(total=1, unit="step", dynamic_ncols=True, file=sys.stderr) as bar,
        connect_sse(client, "GET", f"/jobs/{job_id}/events") as events,
    ):
        for event in events.iter_sse():
            data: dict[str, Any] = json.loads(event.data)
            if event.event == "queued":
                bar.set_description(f"queued ({data['queue_position']} ahead)")
            elif event.event == "progress":
                bar.set_description("generating")
                bar.total = data["steps"]
                bar.n = data["step"]
                bar.set_postfix(eta=f"{data['eta_s']:.1f}s" if data["eta_s"] else "?")
                bar.refresh()
            elif event.event == "succeeded":
                return
            else:
                raise JobFailed(f"job {job_id} {event.event}: {data.get('error', '')}")
    raise JobFailed(f"the event stream of job {job_id} ended early")


def save(response: httpx.Response, output: Path) -> list[Path]:
    if response.headers["content-type"].startswith("image/"):
        output.write_bytes(response.content)
        return [output]
    paths = []
    for k, image in enumerate(response.json()["images"]):
        path = output.with_name(f"{output.stem}-{k}{output.suffix}")
        path.write_bytes(base64.b64decode(image["data"]))
        paths.append(path)
    return paths


def generate(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"prompt": args.prompt, "num_images": args.n}
    for field, value in [
        ("num_inference_steps", args.steps),
        ("width", args.width),
        ("height", args.height),
        ("seed", args.seed),
        ("negative_prompt", args.negative),
        ("strength", args.strength),
        ("model", args.model),
    ]:
        if value is not None:
            body[field] = value
    if args.lora:
        body["loras"] = [lora(given) for given in args.lora]
    for field, path in [("image", args.image), ("mask", args.mask)]:
        if path is not None:
            body[field] = base64.b64encode(path.read_bytes()).decode()
    suffix = args.output.suffix.lstrip(".").lower()
    body["output_format"] = {"jpg": "jpeg"}.get(suffix, suffix or "png")
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    with httpx.Client(base_url=args.url, headers=headers, timeout=60) as client:
        submitted = client.post("/jobs", json=body)
        if submitted.status_code != 202:
            sys.stderr.write(f"refused: {_error(submitted)}\n")
            return 1
        job_id = submitted.json()["id"]
        try:
            follow(client, job_id)
        except KeyboardInterrupt:
            cancelled = client.delete(f"/jobs/{job_id}")
            state = "cancelled" if cancelled.status_code == 200 else _error(cancelled)
            sys.stderr.write(f"\njob {job_id}: {state}\n")
            return INTERRUPTED
        except JobFailed as error:
            sys.stderr.write(f"{error}\n")
            return 1
        for path in save(client.get(f"/jobs/{job_id}/result"), args.output):
            sys.stdout.write(f"{path}\n")
    return 0


def lora(given: str) -> dict[str, Any]:
    """``NAME[=SCALE]`` as the API's ``{"name", "scale"}``."""
    name, _, scale = given.partition("=")
    return {"name": name, "scale": float(scale)} if scale else {"name": name}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m imagegen.client")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("generate", help="generate images through a job")
    command.add_argument("prompt")
    command.add_argument("-o", "--output", type=Path, default=Path("image.png"))
    command.add_argument("--steps", type=int)
    command.add_argument("--n", type=int, default=1, help="number of images")
    command.add_argument("--width", type=int)
    command.add_argument("--height", type=int)
    command.add_argument("--seed", type=int)
    command.add_argument("--negative", help="negative prompt")
    command.add_argument("--image", type=Path, help="starting image (PNG, JPEG or WebP)")
    command.add_argument("--mask", type=Path, help="inpainting mask: white is repainted")
    command.add_argument("--strength", type=float, help="how far to move from --image")
    command.add_argument("--model", help="a loaded model (default: the server's first)")
    command.add_argument(
        "--lora",
        action="append",
        metavar="NAME[=SCALE]",
        help="apply a LoRA adapter of the model, at SCALE (default 1); repeatable",
    )
    command.add_argument("--url", default=os.environ.get("IMAGEGEN_URL", "http://127.0.0.1:3000"))
    command.add_argument("--key", default=os.environ.get("IMAGEGEN_API_KEY"))
    return generate(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
