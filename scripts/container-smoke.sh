#!/usr/bin/env bash
# Build the bento, containerize it on a real Docker engine, run the image and check that it
# serves: ready, an image from the embedded model, the playground page, IMAGEGEN_API_KEYS
# (given at run time only) enforced, non-root, the model packed, no key in the image. Stops the container; exits
# non-zero on any failure. Slow (torch goes into the image), so not part of scripts/test.sh.
#
#   scripts/container-smoke.sh                       # BentoML's default base image
#   BASE_IMAGE=local/python:3.11-bookworm scripts/container-smoke.sh
#   BENTOFILE=bentofile.cpu.yaml IMAGE=imagegen:smoke-cpu scripts/container-smoke.sh
#
# Without a container registry, make a base image first:
#   BASE_IMAGE=$(../shared/tools/docker-base.sh | tail -n 1) scripts/container-smoke.sh
# Builds and the container use the host's network (`--network host`), as engines without a
# bridge network need; PORT (default 3999) is the loopback port the container serves on.
set -euo pipefail
cd "$(dirname "$0")/.."
export BENTOML_DO_NOT_TRACK=true
port=${PORT:-3999}
image=${IMAGE:-imagegen:smoke}
container=imagegen-smoke-$$
key=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
workdir=$(mktemp -d)
cleanup() { docker rm -f "$container" >/dev/null 2>&1 || true; rm -rf "$workdir"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; docker logs "$container" 2>&1 | tail -n 40 >&2 || true; exit 1; }

# The bentofile (BENTOFILE: the GPU image by default, bentofile.cpu.yaml for the CPU one) is
# the source of truth; a base image override is layered on a copy of it.
buildfile=${BENTOFILE:-bentofile.yaml}
if [ -n "${BASE_IMAGE:-}" ]; then
  python3 - "$buildfile" "$BASE_IMAGE" "$workdir/bentofile.yaml" <<'PY'
import sys, yaml
config = yaml.safe_load(open(sys.argv[1]))
config.setdefault("docker", {})["base_image"] = sys.argv[2]
yaml.safe_dump(config, open(sys.argv[3], "w"))
PY
  buildfile=$workdir/bentofile.yaml
fi

echo "== bentoml build ($buildfile)"
tag=$(bentoml build -f "$buildfile" --output tag | sed -n 's/^__tag__://p' | tail -n 1)
[ -n "$tag" ] || fail "bentoml build printed no tag"
echo "== bentoml containerize $tag -> $image"
DOCKER_BUILDKIT=0 bentoml containerize "$tag" --opt network=host -t "$image"

echo "== image checks"
user=$(docker image inspect -f '{{.Config.User}}' "$image")
[ -n "$user" ] && [ "$user" != root ] && [ "$user" != 0 ] || fail "image runs as '${user:-root}'"
if docker image inspect "$image" | grep -q "IMAGEGEN_API_KEYS"; then fail "image config names API keys"; fi
# The server reads models from the bento's own store, not $BENTOML_HOME.
docker run --rm --network host --entrypoint sh "$image" -c 'ls "$BENTO_PATH/models/sd-shapes"' \
  | grep -q . || fail "the bento's model store holds no sd-shapes"

echo "== run on 127.0.0.1:$port"
docker run -d --name "$container" --network host \
  -e BENTOML_HOST=127.0.0.1 -e BENTOML_PORT="$port" -e IMAGEGEN_API_KEYS="$key" "$image" >/dev/null
url=http://127.0.0.1:$port
for _ in $(seq 300); do
  curl -sf "$url/readyz" >/dev/null && break
  [ "$(docker inspect -f '{{.State.Running}}' "$container")" = true ] || fail "container exited"
  sleep 1
done
curl -sf "$url/readyz" >/dev/null || fail "not ready after 300 s"

body='{"prompt": "a lighthouse", "seed": 7}'
status=$(curl -s -o /dev/null -w '%{http_code}' -H 'Content-Type: application/json' \
  -d "$body" "$url/generate/image")
[ "$status" = 401 ] || fail "without a key: $status, want 401"
curl -sf -o "$workdir/out.png" -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
  -d "$body" "$url/generate/image" || fail "generation with the key failed"
[ "$(head -c 8 "$workdir/out.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] \
  || fail "the answer is not a PNG"
if docker logs "$container" 2>&1 | grep -qF "$key"; then fail "the key reached the logs"; fi
for page in / /web/app.js /web/style.css; do
  curl -sf -o /dev/null "$url$page" || fail "the playground's $page is not in the image"
done

echo "PASS: $image ($tag) served a PNG and the playground, enforced the key, runs as $user"
