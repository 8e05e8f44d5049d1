#!/usr/bin/env bash
# The robot install on ARM (aarch64) Linux, as on a Raspberry Pi or Jetson, under qemu-user
# emulation on an x86-64 Linux host:
#
#   sudo benchmarks/arm64_robot_install.sh [WORKDIR] [STEPS]
#
# 1. exports a bundle on the host (`rtu-edge train --steps 2000` + `rtu-edge export`; the host
#    needs the [train] extra) unless $BUNDLE names one;
# 2. builds an arm64 Debian root with debootstrap (suite $SUITE, default bookworm, from
#    $MIRROR, default http://deb.debian.org/debian), second stage run through qemu-aarch64;
# 3. copies this repository (its working tree, as git lists it) into the root, creates a venv
#    with the distro's python3 and installs the plain `rtu-edge` there (`pip install .`, no
#    extras: numpy, onnxruntime, pyserial and typer come from PyPI's aarch64 wheels);
# 4. starts `rtu-edge sim-robot` on the host (x86-64) with its pty linked at
#    WORKDIR/root/tmp/robot-tty, and runs `rtu-edge run BUNDLE --port /tmp/robot-tty --steps STEPS`
#    inside the arm64 root (chroot; /dev/pts is bind-mounted so the link resolves there).
#
# Needs root, network access to the Debian mirror and PyPI, and the host packages
# debootstrap qemu-user-static binfmt-support. Every phase's wall time, `uname -m` inside the
# root and the run's summary go to WORKDIR/arm64_result.json and the log. Behind a
# TLS-intercepting proxy, CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt (the host's bundle,
# holding the proxy's CA) is copied into the root for pip; BUNDLE=DIR skips the host export. Slow (tens of
# minutes: every aarch64 instruction is emulated), so not part of CI. WORKDIR defaults to
# /tmp/rtu-edge-arm64; a root already there (WORKDIR/root/.built) is reused unless FRESH=1.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
WORK=${1:-/tmp/rtu-edge-arm64}
STEPS=${2:-2000}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
HOST_PY=${HOST_PY:-python3}  # a python with rtu-edge[train] for the host side
ROOT=$WORK/root
LOG=$WORK/arm64.log
mkdir -p "$WORK"
: >"$LOG"
declare -A T

log() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
phase() {  # phase NAME CMD...: runs CMD, records its wall time in T[NAME]
    local name=$1 t0 t1
    shift
    log "phase $name: start"
    t0=$(date +%s.%N)
    "$@" >>"$LOG" 2>&1
    t1=$(date +%s.%N)
    T[$name]=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
    log "phase $name: ${T[$name]} s"
}

[ "$(id -u)" = 0 ] || { echo "run as root (debootstrap, chroot, mounts)" >&2; exit 2; }
for tool in debootstrap qemu-aarch64-static update-binfmts git; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool: apt-get install -y debootstrap qemu-user-static binfmt-support git" >&2
        exit 2
    }
done

# binfmt_misc: the kernel hands aarch64 ELF files to qemu-aarch64-static (flag F: the
# interpreter is opened now, so it need not exist inside the root)
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
    echo "binfmt_misc entry qemu-aarch64 is not enabled; cannot run aarch64 binaries" >&2
    exit 2
}

SIM_PID=
cleanup() {
    [ -n "$SIM_PID" ] && kill "$SIM_PID" 2>/dev/null || true
    for m in dev/pts dev proc; do
        mountpoint -q "$ROOT/$m" 2>/dev/null && umount -l "$ROOT/$m" || true
    done
}
trap cleanup EXIT

# 1. the bundle, exported on the host
if [ -z "${BUNDLE:-}" ]; then
    BUNDLE=$WORK/bundle
    export_bundle() {
        rm -rf "$WORK/run" "$BUNDLE"
        (cd "$REPO" && PYTHONPATH=$REPO "$HOST_PY" -m cli train --steps 2000 --out "$WORK/run" &&
            PYTHONPATH=$REPO "$HOST_PY" -m cli export "$WORK/run" --out "$BUNDLE")
    }
    phase host_train_export export_bundle
fi

# 2. the arm64 Debian root
build_root() {
    rm -rf "$ROOT"
    debootstrap --arch=arm64 --foreign --variant=minbase \
        --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR"
    cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"  # for kernels whose binfmt lacks flag F
    chroot "$ROOT" /debootstrap/debootstrap --second-stage
    touch "$ROOT/.built"
}
if [ "${FRESH:-0}" = 1 ] || [ ! -e "$ROOT/.built" ]; then
    phase debootstrap build_root
else
    log "reusing the root at $ROOT (FRESH=1 rebuilds it)"
    T[debootstrap]=reused
fi

# No /sys: onnxruntime's cpuinfo reads the CPU description there, finds the host's x86-64 one
# (qemu-user emulates the CPU, not the kernel's view of it) and, most likely, crashes the process
# (SIGSEGV in `import onnxruntime`); without /sys it warns and falls back to generic kernels.
mount -t proc proc "$ROOT/proc"
mount --bind /dev "$ROOT/dev"
mount --bind /dev/pts "$ROOT/dev/pts"  # the host's pty slaves, where the sim-robot link points
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
PIP_ENV=
if [ -n "${CA_BUNDLE:-}" ]; then
    cp "$CA_BUNDLE" "$ROOT/etc/ssl/host-ca-bundle.crt"
    PIP_ENV=PIP_CERT=/etc/ssl/host-ca-bundle.crt
fi

# 3. the repository and bundle inside, a venv with the distro python3, the plain install
copy_in() {
    rm -rf "$ROOT/opt/rtu-edge-src" "$ROOT/opt/bundle"
    mkdir -p "$ROOT/opt/rtu-edge-src"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
        tar --null -T - -cf - 2>/dev/null) | tar -xf - -C "$ROOT/opt/rtu-edge-src"
    cp -r "$BUNDLE" "$ROOT/opt/bundle"
}
phase copy_in copy_in
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root "$@"; }
phase venv in_root /usr/bin/python3 -m venv --clear /opt/venv
phase pip_install in_root $PIP_ENV /opt/venv/bin/pip install --no-cache-dir /opt/rtu-edge-src
UNAME=$(in_root uname -m)
PYV=$(in_root /opt/venv/bin/python -c 'import platform; print(platform.python_version())')
PKGS=$(in_root /opt/venv/bin/pip freeze | tr '\n' ';')
log "inside: uname -m = $UNAME, python $PYV, $PKGS"
in_root /opt/venv/bin/python -c 'import torch' 2>/dev/null && {
    echo "torch is importable in the robot install" >&2
    exit 1
}

# 4. sim-robot on the host, rtu-edge run inside the arm64 root
rm -f "$ROOT/tmp/robot-tty"
# a 5 s watchdog: under emulation a learn step takes ~30 ms and the first ones (onnxruntime
# warming up) far longer than sim-robot's default 0.5 s (native aarch64 hardware: not measured)
(cd "$REPO" && PYTHONPATH=$REPO exec "$HOST_PY" -m cli sim-robot --watchdog-s 5 \
    --link "$ROOT/tmp/robot-tty") \
    >>"$WORK/sim-robot.log" 2>&1 &
SIM_PID=$!
for _ in $(seq 100); do [ -e "$ROOT/tmp/robot-tty" ] && break; sleep 0.1; done
[ -e "$ROOT/tmp/robot-tty" ] || { echo "sim-robot did not create its link" >&2; exit 1; }
run_robot() {
    in_root /opt/venv/bin/rtu-edge run /opt/bundle --port /tmp/robot-tty --steps "$STEPS" \
        --fresh --checkpoint-dir /opt/checkpoints --summary-json /opt/summary.json 2>&1 |
        tee "$WORK/run.out"
}
phase run run_robot
kill "$SIM_PID" 2>/dev/null || true
SIM_PID=
log "run output (last lines):"
tail -n 12 "$WORK/run.out" | tee -a "$LOG"

"$HOST_PY" - "$WORK/arm64_result.json" "$ROOT/opt/summary.json" <<EOF
import json, sys
s = json.load(open(sys.argv[2]))
out = {
    "command": "sudo benchmarks/arm64_robot_install.sh $WORK $STEPS",
    "suite": "$SUITE",
    "uname_m_inside": "$UNAME",
    "python_inside": "$PYV",
    "pip_freeze_inside": [p for p in "$PKGS".split(";") if p],
    "phase_seconds": {k: (v if v == "reused" else float(v)) for k, v in
                      [$(for k in "${!T[@]}"; do printf '("%s", "%s"),' "$k" "${T[$k]}"; done)]},
    "run": {k: s[k] for k in ("exit", "ticks", "ticks_per_second", "episodes",
                              "first_episodes_return", "last_episodes_return",
                              "graph_latency_us", "tick_latency_us")},
    "counters": {k: s["counters"][k] for k in ("bad_updates", "timeouts", "link_errors",
                                               "checkpoints", "reboots")},
}
json.dump(out, open(sys.argv[1], "w"), indent=2)
print(json.dumps(out, indent=2))
EOF
log "result: $WORK/arm64_result.json"
