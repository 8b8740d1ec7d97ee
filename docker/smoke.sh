#!/usr/bin/env bash
# Build the serving image and smoke-test a container of it, on this machine, then clean up.
#
#   docker/smoke.sh [--bundle DIR] [--keep-image]
#
# 1. A docker engine: the one DOCKER_HOST (or the default socket) reaches, or else a private dockerd
#    started here (Debian's docker.io, installed with apt when missing) with no bridge, no iptables
#    and no forwarding, its data and exec roots in a temporary directory.
# 2. A base image: with our own engine, Debian bookworm debootstrapped (minbase + python3-venv) from
#    the mirror apt is configured with, cached as a tarball, `docker import`ed (no registry pull);
#    BASE_IMAGE=... uses a given image instead.
# 3. Wheels for the image's Python (docker/wheels.sh), then `docker build --network none` with the
#    bundle baked in (--bundle DIR, else a small bundle trained for the smoke test).
# 4. The container runs with --network host on 127.0.0.1, a read-only root and a tmpfs /tmp: wait
#    for /readyz, one /v1/suggest with its body checked, GET / (the playground page) and its script,
#    a short locust run through the SLO gate at generous thresholds, HEALTHCHECK reported healthy,
#    then `docker stop` and exit status 0.
# 5. Everything started here is stopped by PID; EXEC_ROOT/netns/* is unmounted; temp dirs removed.
#
# Without a docker engine and without apt (or without root) it prints why and exits 0, except
# under CI=true, where the docker step must run and a skip is a failure.
# Environment: BASE_IMAGE, NEXTWORD_DOCKER_CACHE (base tarball cache, default ~/.cache/nextword/
# docker), NEXTWORD_DATA (WikiText-2: training text and what locust types), SMOKE_TRAIN_MINUTES
# (training time of the smoke bundle, default 1), SMOKE_P99_MS (the gate's budget, default 500).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

bundle=""
keep_image=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bundle) bundle="$2"; shift 2 ;;
        --keep-image) keep_image=1; shift ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        *) echo "smoke.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

py="${PYTHON:-$repo/.venv/bin/python}"
[[ -x "$py" ]] || py=python3
image="nextword:smoke-$$"
container="nextword-smoke-$$"
reports="$repo/loadtest/reports/docker-smoke"
cache="${NEXTWORD_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nextword/docker}"
work=""
own_engine=0
dockerd_pid=""
container_started=0
t_start=$(date +%s.%N)
declare -A timings=()

log() { printf 'docker-smoke: %s\n' "$*"; }
die() { log "FAILED: $*"; exit 1; }
elapsed() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
phase() {  # phase NAME COMMAND...: run a step and record its wall time
    local name=$1 t0
    shift
    t0=$(date +%s.%N)
    "$@"
    timings[$name]=$(elapsed "$t0")
    log "$name: ${timings[$name]} s"
}

skip() {
    if [[ "${CI:-}" == "true" ]]; then
        die "cannot run in CI: $*"
    fi
    log "SKIPPED: $*"
    exit 0
}

# -- cleanup: only what this script started -----------------------------------------------------

cleanup() {
    local status=$?
    set +e
    if [[ $container_started == 1 ]]; then
        docker logs "$container" > "$reports/container.log" 2>&1
        docker rm -f "$container" > /dev/null 2>&1
    fi
    if [[ $keep_image == 0 && $own_engine == 0 ]]; then
        docker rmi "$image" > /dev/null 2>&1  # our own engine's images go with its data root
    fi
    [[ -n "$dockerd_pid" ]] && stop_dockerd
    [[ -n "$work" ]] && remove_work_dir
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

stop_dockerd() {
    kill -TERM "$dockerd_pid" 2> /dev/null
    for _ in $(seq 60); do
        kill -0 "$dockerd_pid" 2> /dev/null || break
        sleep 0.5
    done
    if kill -0 "$dockerd_pid" 2> /dev/null; then
        log "dockerd $dockerd_pid did not stop in 30 s; killing it"
        kill -KILL "$dockerd_pid" 2> /dev/null
    fi
    wait "$dockerd_pid" 2> /dev/null
    # Its containerd and shims run with our private exec root on their command lines; nothing
    # else on the machine does, so those PIDs are ours.
    local pid
    for pid in $(pgrep -f -- "$work/exec" || true); do
        log "stopping leftover process $pid ($(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -c1-60))"
        kill -TERM "$pid" 2> /dev/null
    done
}

remove_work_dir() {
    local mnt
    # netns files are bind mounts and block removal; unmount them (and anything else under $work,
    # deepest first) before rm -rf, which must never descend into a live mount.
    for mnt in "$work"/exec/netns/*; do
        [[ -e "$mnt" ]] && umount "$mnt" 2> /dev/null
    done
    awk -v w="$work" 'index($2, w) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r mnt; do umount "$mnt" 2> /dev/null || umount -l "$mnt" 2> /dev/null; done
    if awk -v w="$work" 'index($2, w) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "WARNING: mounts remain under $work; not removing it"
    else
        rm -rf "$work"
    fi
}

# -- 1. engine ------------------------------------------------------------------------------------

apt_install() {  # apt_install PACKAGE...: Debian packages, only when missing
    log "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" > /dev/null
}

start_dockerd() {
    own_engine=1
    mkdir -p "$work/data" "$work/exec"
    # No bridge, no iptables, no forwarding: containers get either no network (builds) or the
    # host's loopback (--network host); nothing is routed anywhere.
    dockerd --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
        --data-root "$work/data" --exec-root "$work/exec" --pidfile "$work/dockerd.pid" \
        -H "unix://$work/docker.sock" > "$work/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST="unix://$work/docker.sock"
    for _ in $(seq 120); do
        docker info > /dev/null 2>&1 && return 0
        kill -0 "$dockerd_pid" 2> /dev/null || break
        sleep 0.5
    done
    tail -20 "$work/dockerd.log" >&2
    die "dockerd did not come up"
}

ensure_engine() {
    command -v docker > /dev/null && docker info > /dev/null 2>&1 && {
        log "using the running docker engine"
        base="${BASE_IMAGE:-python:3.11-slim}"  # that engine may pull; ours cannot
        return 0
    }
    if [[ $(id -u) != 0 ]]; then
        skip "no docker engine is reachable and starting one needs root"
    fi
    local missing=()
    command -v dockerd > /dev/null || missing+=(docker.io)
    [[ -n "${BASE_IMAGE:-}" ]] || command -v debootstrap > /dev/null || missing+=(debootstrap)
    if [[ ${#missing[@]} -gt 0 ]]; then
        command -v apt-get > /dev/null || skip "no docker engine, and no apt-get to install ${missing[*]}"
        apt_install "${missing[@]}"
    fi
    start_dockerd
    log "dockerd $dockerd_pid up, roots in $work"
}

# -- 2. base image --------------------------------------------------------------------------------

apt_mirror() {  # the Debian mirror apt uses here (not the security archive)
    {
        grep -hE '^URIs:' /etc/apt/sources.list.d/*.sources 2> /dev/null | awk '{ print $2 }'
        grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
            2> /dev/null | grep -oE 'https?://[^ ]+' || true
    } | awk '!/-security/ && !found { print; found = 1 }'  # reads all: no SIGPIPE upstream
}

make_base_tarball() {  # debootstrap once; the tarball is reused by later runs
    local tarball=$1 mirror rootfs
    mirror=$(apt_mirror)
    mirror=${mirror:-http://deb.debian.org/debian}
    rootfs="$work/rootfs"
    log "debootstrap bookworm (minbase, python3, python3-venv) from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" \
        > "$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; die "debootstrap"; }
    # Package caches and docs are dead weight in an image.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
        "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    mkdir -p "$(dirname "$tarball")"
    tar -C "$rootfs" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
}

ensure_base_image() {
    if [[ -n "${BASE_IMAGE:-}" || $own_engine == 0 ]]; then
        base="${BASE_IMAGE:-$base}"
        return 0
    fi
    local tarball="$cache/bookworm-minbase-python3.tar"
    [[ -s "$tarball" ]] || make_base_tarball "$tarball"
    base="nextword-base:bookworm"
    docker import - "$base" < "$tarball" > /dev/null
}

# -- 3. wheels, bundle, image ---------------------------------------------------------------------

make_wheels() {
    local version
    version=$(docker run --rm --network none --entrypoint python3 "$base" \
        -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    log "the image's Python is $version"
    rm -f "$repo"/.whl/*.whl
    docker/wheels.sh --python "$version" .whl | grep -v 'is ignored' || true
    compgen -G "$repo/.whl/numpy-*.whl" > /dev/null || die "no wheels were downloaded"
}

make_bundle() {
    local dest="$work/context/bundles/smoke"
    mkdir -p "$work/context/bundles"
    if [[ -n "$bundle" ]]; then
        cp -r "$bundle" "$dest"
    else
        # Quality does not matter here, only a real bundle from the real export path.
        log "training the tiny recipe for ${SMOKE_TRAIN_MINUTES:-1} min for a smoke bundle"
        "$py" -m model_export train --recipe tiny --max-minutes "${SMOKE_TRAIN_MINUTES:-1}" \
            --no-progress --out "$work/run" > "$reports/train.log" 2>&1 \
            || { tail -20 "$reports/train.log" >&2; die "training the smoke bundle"; }
        "$py" -m model_export export "$work/run/best.pt" --out "$dest" --name docker-smoke
    fi
    [[ -f "$dest/manifest.json" ]] || die "no bundle at $dest"
}

build_image() {
    # A context of just the image's inputs (the repository's bundles/ may hold large bundles);
    # .dockerignore applies to it as to a build from the repository root.
    cp -a Dockerfile .dockerignore service .whl "$work/context/"
    docker build --network none --build-arg BASE_IMAGE="$base" --build-arg BUNDLE=bundles/smoke \
        -t "$image" "$work/context" > "$reports/build.log" 2>&1 \
        || { tail -30 "$reports/build.log" >&2; die "docker build (log: $reports/build.log)"; }
    log "image $image: $(docker image inspect --format '{{.Size}}' "$image" \
        | awk '{ printf "%.0f MB", $1 / 1e6 }')"
}

# -- 4. the container -----------------------------------------------------------------------------

free_port() {
    "$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_container() {
    port=$(free_port)
    url="http://127.0.0.1:$port"
    docker run -d --name "$container" --network host --read-only --tmpfs /tmp \
        -e NEXTWORD_HOST=127.0.0.1 -e NEXTWORD_PORT="$port" "$image" > /dev/null
    container_started=1
    for _ in $(seq 240); do
        curl -fsS -o /dev/null "$url/readyz" 2> /dev/null && return 0
        [[ $(docker inspect --format '{{.State.Running}}' "$container") == true ]] || break
        sleep 0.5
    done
    docker logs "$container" 2>&1 | tail -30 >&2
    die "the container did not become ready on $url"
}

check_suggest() {
    curl -fsS -H 'content-type: application/json' -d '{"text": "the game was played at the ", "k": 3}' \
        "$url/v1/suggest" > "$reports/suggest.json" || die "POST /v1/suggest"
    "$py" - "$reports/suggest.json" << 'PY' || die "the /v1/suggest body is wrong"
import json
import sys

body = json.load(open(sys.argv[1]))
suggestions = body["suggestions"]
assert len(suggestions) == 3, body
for item in suggestions:
    assert item["text"].strip() and 0.0 < item["prob"] <= 1.0, item
probs = [item["prob"] for item in suggestions]
assert probs == sorted(probs, reverse=True), probs
print("docker-smoke: /v1/suggest ->", [item["text"] for item in suggestions])
PY
    # The playground page and its files are in the image (service/static/, copied with service/).
    curl -fsS -o "$reports/playground.html" "$url/" || die "GET / (the playground page)"
    grep -q 'src="playground.js"' "$reports/playground.html" || die "GET / is not the playground"
    curl -fsS -o /dev/null "$url/playground.js" || die "GET /playground.js"
}

run_locust() {
    "$py" loadtest/run.py --host "$url" --users 10 --rate 20 --duration 20 \
        --p99-ms "${SMOKE_P99_MS:-500}" --report-dir "$reports/locust" \
        || die "the locust SLO gate failed"
}

check_health_and_stop() {
    local health status logs
    for _ in $(seq 30); do
        health=$(docker inspect --format '{{.State.Health.Status}}' "$container")
        [[ $health == healthy ]] && break
        sleep 1
    done
    [[ $health == healthy ]] || die "HEALTHCHECK says $health"
    # SIGTERM, as Kubernetes and docker stop send it: the server drains and exits. uvicorn
    # re-raises the SIGTERM after its graceful shutdown, so 143 (128 + 15) is a clean exit too
    # when the lifespan shutdown completed first.
    docker stop --time 30 "$container" > /dev/null
    status=$(docker inspect --format '{{.State.ExitCode}}' "$container")
    # Read the logs whole, not through `| grep -q`: grep exits at the first match, and under
    # pipefail the SIGPIPE that docker logs then gets (when lines follow the match) fails the
    # check at random.
    logs=$(docker logs "$container" 2>&1)
    if [[ $status != 0 && $status != 143 ]] || [[ $logs != *"Application shutdown complete"* ]]; then
        die "no clean shutdown after SIGTERM (exit status $status)"
    fi
    log "HEALTHCHECK healthy; SIGTERM -> graceful shutdown, exit status $status"
}

write_timings() {
    local name json="{"
    for name in "${!timings[@]}"; do json+="\"$name\": ${timings[$name]}, "; done
    json+="\"total\": $(elapsed "$t_start")}"
    echo "$json" > "$reports/timings.json"
    log "timings (s): $json"
}

mkdir -p "$reports"
work=$(mktemp -d /tmp/nextword-docker.XXXXXX)
phase engine ensure_engine
phase base_image ensure_base_image
phase wheels make_wheels
phase bundle make_bundle
phase build build_image
phase start_to_ready start_container
phase suggest check_suggest
phase locust run_locust
phase stop check_health_and_stop
write_timings
log "OK"
