#!/usr/bin/env bash
# lazyfs demo: on a fresh Debian 12 machine, as root.
#
# Installs what it needs, builds lazyfs, starts a registry on 127.0.0.1, builds a
# sample image from real files (busybox, the Python 3 standard library, and a
# layer of build tools as python:3 images carry: gcc, binutils, C headers), converts
# it, and compares three cold starts of `python3 -c 'import json, ...'`:
#   full:  download and unpack the whole image (crane export | tar -x), then run;
#   lazy:  lazyfs mount (chunks fetched on demand), then run from the mount;
#   lazy+profile: the same after `lazyfs record` attached the program's start-up
#          profile to the image in the registry: the mount prefetches it.
# The registry sits in its own network namespace behind a veth link shaped to
# SHAPE (default 200mbit, as a node's share of a datacenter link; SHAPE=off
# puts it on loopback). Everything it starts is stopped and removed on exit,
# also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
export PATH=/usr/local/go/bin:$REPO/.cache/bin:$PATH
[ "$(id -u)" = 0 ] || { echo "demo: run as root (FUSE mounts and chroot)" >&2; exit 1; }

# Bold only on a terminal: piped or logged output gets no escape codes.
if [ -t 1 ]; then B=$'\033[1m' R=$'\033[0m'; else B='' R=''; fi
say() { printf '%s==> %s%s\n' "$B" "$*" "$R"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2f", b-a}'; }

# --- 1. what it needs ------------------------------------------------------
command -v go >/dev/null || { echo "demo: Go >= 1.26 is needed in /usr/local/go (the go.dev tarball): see README.md" >&2; exit 1; }
say "installing packages (zstd fuse3 busybox-static python3 make gcc)"
need=()
for p in zstd fuse3 busybox-static python3 make gcc libc6-dev iproute2 curl ca-certificates; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
mkdir -p .cache/bin
if [ ! -x .cache/registry/usr/bin/docker-registry ]; then
	say "fetching the distribution registry (Debian package docker-registry, unpacked locally)"
	(cd .cache && apt-get download -qq docker-registry >/dev/null 2>&1 || { apt-get update -qq && apt-get download -qq docker-registry; })
	dpkg-deb -x .cache/docker-registry_*.deb .cache/registry
fi
if ! command -v crane >/dev/null; then
	say "installing crane (go-containerregistry) from the Go module proxy"
	GOBIN=$REPO/.cache/bin go install github.com/google/go-containerregistry/cmd/crane@v0.22.1
fi
say "building lazyfs"
make -s build >/dev/null
LAZYFS=$REPO/bin/lazyfs

# --- 2. a registry and a sample image --------------------------------------
WORK=$(mktemp -d /tmp/lazyfs-demo.XXXXXX)
REGPID=
NS=
SHAPE=${SHAPE:-200mbit}
cleanup() {
	trap '' INT TERM # finish cleaning up even if Ctrl-C is pressed again
	set +e
	for m in "$WORK/mnt" "$WORK/mnt2"; do mountpoint -q "$m" 2>/dev/null && "$LAZYFS" umount --state-dir "$WORK/state" "$m" >/dev/null; done
	[ -n "$REGPID" ] && kill "$REGPID" 2>/dev/null && wait "$REGPID" 2>/dev/null
	[ -n "$NS" ] && ip netns del "$NS" 2>/dev/null
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shape_link puts a network namespace with a veth pair (169.254.77.1/30 here,
# .2/30 there) between the registry and us, and limits the registry's egress.
shape_link() {
	NS=lazyfs-demo-$$
	local vh=lzd$$h vn=lzd$$n
	ip netns add "$NS" &&
		ip link add "$vh" type veth peer name "$vn" &&
		ip link set "$vn" netns "$NS" &&
		ip addr add 169.254.77.1/30 dev "$vh" && ip link set "$vh" up &&
		ip netns exec "$NS" ip addr add 169.254.77.2/30 dev "$vn" &&
		ip netns exec "$NS" ip link set "$vn" up &&
		ip netns exec "$NS" ip link set lo up &&
		ip netns exec "$NS" tc qdisc add dev "$vn" root tbf rate "$SHAPE" burst 256kb latency 100ms
}
RUN_NS=()
INSECURE=()
LINK="loopback registry, no shaping"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
if [ "$SHAPE" != off ]; then
	if shape_link 2>"$WORK/shape.err"; then
		REG=169.254.77.2:5000
		RUN_NS=(ip netns exec "$NS")
		INSECURE=(--insecure)
		LINK="registry behind a $SHAPE link"
	else
		echo "demo: could not shape a link ($(tail -1 "$WORK/shape.err")); using loopback" >&2
		ip netns del "$NS" 2>/dev/null; NS=
	fi
fi
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: $REG}
YML
say "starting a registry on $REG ($LINK)"
${RUN_NS[@]+"${RUN_NS[@]}"} .cache/registry/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done

say "building a sample image: busybox, python3 with its standard library, and a build-tools layer (gcc, binutils, headers: python:3 images carry them)"
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,usr/bin,usr/lib,lib64,tmp,etc}
cp /bin/busybox "$ROOT/bin/busybox"
for a in sh ls cat echo env; do ln -s busybox "$ROOT/bin/$a"; done
PY=$(readlink -f /usr/bin/python3)
cp "$PY" "$ROOT/usr/bin/"; ln -s "$(basename "$PY")" "$ROOT/usr/bin/python3"
for lib in $(ldd "$PY" | awk '/=>/ {print $3} /ld-linux/ {print $1}'); do
	mkdir -p "$ROOT$(dirname "$lib")"; cp -L "$lib" "$ROOT$lib"
done
PYLIB=/usr/lib/$(basename "$PY")
mkdir -p "$ROOT/usr/lib"; cp -a "$PYLIB" "$ROOT/usr/lib/"
rm -rf "$ROOT$PYLIB/test" "$ROOT$PYLIB"/**/__pycache__ 2>/dev/null || true
echo "nameserver 127.0.0.1" > "$ROOT/etc/resolv.conf"
tar -C "$ROOT" -czf "$WORK/base.tar.gz" bin lib64 etc tmp lib usr/bin 2>/dev/null || tar -C "$ROOT" -czf "$WORK/base.tar.gz" bin lib64 etc tmp usr/bin
tar -C "$ROOT" -czf "$WORK/python.tar.gz" usr/lib
# Build tools, as Debian-based python:3 images have them (from buildpack-deps):
# most of an image's bytes, and none of them read when python starts.
TOOLS=()
for p in usr/lib/gcc usr/libexec/gcc usr/include usr/bin/x86_64-linux-gnu-*; do [ -e "/$p" ] && TOOLS+=("$p"); done
tar -C / -czf "$WORK/tools.tar.gz" "${TOOLS[@]}"
crane append --insecure -f "$WORK/base.tar.gz" -f "$WORK/python.tar.gz" -f "$WORK/tools.tar.gz" -t "$REG/demo/python:plain" >/dev/null
IMG_BYTES=$(du -cb "$WORK"/base.tar.gz "$WORK"/python.tar.gz "$WORK"/tools.tar.gz | tail -1 | cut -f1)

say "converting it: lazyfs convert $REG/demo/python:plain $REG/demo/python:lazy"
"$LAZYFS" convert ${INSECURE[@]+"${INSECURE[@]}"} "$REG/demo/python:plain" "$REG/demo/python:lazy"
"$LAZYFS" inspect ${INSECURE[@]+"${INSECURE[@]}"} "$REG/demo/python:lazy"

WORKLOAD='import json, csv, email.parser, http.client, decimal, argparse; print("hello from python", json.dumps({"ok": True}))'

# --- 3. cold start A: full pull --------------------------------------------
say "cold start A: download and unpack the whole image, then run python"
sync; echo 3 > /proc/sys/vm/drop_caches
t0=$(now)
mkdir -p "$WORK/full"
crane export --insecure "$REG/demo/python:plain" - | tar -x -C "$WORK/full"
t1=$(now)
chroot "$WORK/full" /usr/bin/python3 -c "$WORKLOAD"
t2=$(now)
FULL_READY=$(secs "$t0" "$t1"); FULL_TOTAL=$(secs "$t0" "$t2")

# lazy_start DIR CACHE: a cold start from a lazy mount of the converted image
# at DIR with the empty block cache CACHE: page cache dropped, mount, run
# python. Sets READY, TOTAL, FETCHED (bytes from the registry) and LAZY_IMG
# (the converted image's size), then unmounts.
lazy_start() {
	sync; echo 3 > /proc/sys/vm/drop_caches
	mkdir -p "$1"
	local t0 t1 t2 stats
	t0=$(now)
	# --profile-dir "": the mount learns no profile into the node's
	# /var/lib/lazyfs/profiles (which the next demo would prefetch); a
	# profile attached to the image in its registry is still prefetched.
	"$LAZYFS" mount ${INSECURE[@]+"${INSECURE[@]}"} --state-dir "$WORK/state" --cache-dir "$2" --profile-dir "" "$REG/demo/python:lazy" "$1"
	t1=$(now)
	chroot "$1" /usr/bin/python3 -c "$WORKLOAD"
	t2=$(now)
	READY=$(secs "$t0" "$t1"); TOTAL=$(secs "$t0" "$t2")
	stats=$("$LAZYFS" stats --json --state-dir "$WORK/state" "$1")
	FETCHED=$(printf '%s' "$stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["remote"]["bytesFetched"])')
	LAZY_IMG=$(printf '%s' "$stats" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["imageSize"])')
	"$LAZYFS" umount --state-dir "$WORK/state" "$1" >/dev/null
}

# --- 4. cold start B: lazy mount -------------------------------------------
say "cold start B: lazyfs mount, then run python from the mount"
lazy_start "$WORK/mnt" "$WORK/cache"
LAZY_READY=$READY LAZY_TOTAL=$TOTAL LAZY_FETCHED=$FETCHED

# --- 5. cold start C: with a start-up profile -------------------------------
say "recording a start-up profile: lazyfs record $REG/demo/python:lazy -- python3 -c '...'"
"$LAZYFS" record ${INSECURE[@]+"${INSECURE[@]}"} --cache-dir "" --profile-dir "" "$REG/demo/python:lazy" -- /usr/bin/python3 -c "$WORKLOAD" >/dev/null
say "cold start C: lazyfs mount (empty cache), which prefetches the recorded profile, then run python"
lazy_start "$WORK/mnt2" "$WORK/cache2"
PROF_READY=$READY PROF_TOTAL=$TOTAL PROF_FETCHED=$FETCHED

# --- 6. what happened -------------------------------------------------------
say "result"
python3 - "$FULL_READY" "$FULL_TOTAL" "$LAZY_READY" "$LAZY_TOTAL" "$PROF_READY" "$PROF_TOTAL" "$IMG_BYTES" "$LAZY_FETCHED" "$PROF_FETCHED" "$LAZY_IMG" "$LINK" <<'PY'
import sys
fr, ft, lr, lt, pr, pt = map(float, sys.argv[1:7]); img, fetched, pfetched, limg = map(int, sys.argv[7:11]); link = sys.argv[11]
mb = lambda b: f"{b/1e6:.1f} MB"
print(f"{'':28}{'full pull':>14}{'lazyfs':>14}{'lazyfs+profile':>16}")
print(f"{'time to ready (s)':28}{fr:>14.2f}{lr:>14.2f}{pr:>16.2f}")
print(f"{'time to first output (s)':28}{ft:>14.2f}{lt:>14.2f}{pt:>16.2f}")
print(f"{'bytes downloaded':28}{mb(img):>14}{mb(fetched):>14}{mb(pfetched):>16}")
print(f"\nlazyfs fetched {100*fetched/limg:.1f}% of the {mb(limg)} converted image; time to first output "
      f"{ft/lt:.1f}x faster than the full pull, {ft/pt:.1f}x with the start-up profile ({link}).")
PY
cat <<TXT

What to try next (the registry is gone when this script exits; run your own with the same steps):
  lazyfs convert SRC DST              convert any image you can pull (Docker Hub, GHCR, ...) into a lazyfs image
  lazyfs inspect DST                  see its chunked layers, entries, chunks and TOC sizes
  lazyfs record DST -- CMD            record CMD's start-up profile; mounts of DST prefetch it
  lazyfs bench                        the cold-start benchmark (numpy, torch, ... over a shaped link: docs/bench.md)
  lazyfs mount DST /mnt/x             mount it lazily; lazyfs stats /mnt/x shows what was fetched
  lazyfs umount /mnt/x
  make test                           run the test suite; docs/ explains the format and each component
TXT
