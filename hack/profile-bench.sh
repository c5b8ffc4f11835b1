#!/usr/bin/env bash
# profile-bench: cold `lazyfs run` of an import-like workload on the demo's
# busybox + python3-stdlib image, with and without a start-up profile,
# interleaved samples, medians. Root, Debian 12; needs bin/lazyfs, crane and
# distribution's registry (see hack/demo.sh for where they come from).
#   SHAPE=200mbit|off  N=5  hack/profile-bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SHAPE=${SHAPE:-off}
N=${N:-5}
LAZYFS=${LAZYFS:-bin/lazyfs}
CRANE=${CRANE:-.cache/bin/crane}
WORK=$(mktemp -d /tmp/lazyfs-profbench-XXXXXX)
NS=
cleanup() {
	[ -n "${REGPID:-}" ] && kill "$REGPID" 2>/dev/null || true
	[ -n "$NS" ] && ip netns del "$NS" 2>/dev/null || true
	rm -rf "$WORK"
}
trap cleanup EXIT
RUN_NS=()
INSECURE=(--insecure)
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
if [ "$SHAPE" != off ]; then
	NS=lazyfs-pb-$$
	vh=lzp$$h vn=lzp$$n
	ip netns add "$NS"
	ip link add "$vh" type veth peer name "$vn"
	ip link set "$vn" netns "$NS"
	ip addr add 169.254.78.1/30 dev "$vh"; ip link set "$vh" up
	ip netns exec "$NS" ip addr add 169.254.78.2/30 dev "$vn"
	ip netns exec "$NS" ip link set "$vn" up
	ip netns exec "$NS" ip link set lo up
	ip netns exec "$NS" tc qdisc add dev "$vn" root tbf rate "$SHAPE" burst 256kb latency 100ms
	REG=169.254.78.2:5000
	RUN_NS=(ip netns exec "$NS")
fi
cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: $REG}
YML
${RUN_NS[@]+"${RUN_NS[@]}"} .cache/registry/usr/bin/docker-registry serve "$WORK/registry.yml" >"$WORK/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done

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
cp -a "$PYLIB" "$ROOT/usr/lib/"
rm -rf "$ROOT$PYLIB/test"
find "$ROOT$PYLIB" -name __pycache__ -prune -exec rm -rf {} +
chmod 1777 "$ROOT/tmp"
tar -C "$ROOT" -czf "$WORK/base.tar.gz" bin lib64 etc tmp lib usr/bin 2>/dev/null || tar -C "$ROOT" -czf "$WORK/base.tar.gz" bin lib64 etc tmp usr/bin
tar -C "$ROOT" -czf "$WORK/python.tar.gz" usr/lib
"$CRANE" append --insecure -f "$WORK/base.tar.gz" -f "$WORK/python.tar.gz" -t "$REG/pb/python:plain" >/dev/null
"$LAZYFS" convert "${INSECURE[@]}" "$REG/pb/python:plain" "$REG/pb/python:lazy" >/dev/null
IMG=$REG/pb/python:lazy
WORKLOAD='import json, csv, email.parser, http.client, decimal, argparse, asyncio, logging, xml.dom.minidom, unittest, zipfile, tarfile, pydoc, inspect, dataclasses, typing; print("ok")'
COMMON=("${INSECURE[@]}" --cache-dir "" --profile-dir "")

"$LAZYFS" record "${COMMON[@]}" "$IMG" -- python3 -c "$WORKLOAD" >"$WORK/record.out"
cat "$WORK/record.out" >&2

modes=(${MODES:-noprofile noprofile-nonbr profile profile-fill warm})
"$LAZYFS" run "${INSECURE[@]}" --cache-dir "$WORK/warmcache" --profile-dir "" --no-profile "$IMG" -- python3 -c "$WORKLOAD" >/dev/null
for i in $(seq "$N"); do
	for m in "${modes[@]}"; do
		case $m in
		noprofile) extra=(--no-profile) ;;
		noprofile-nonbr) extra=(--no-profile --neighbour-window off) ;;
		profile) extra=() ;;
		profile-fill) extra=(--fill) ;;
		warm) extra=(--cache-dir "$WORK/warmcache" --no-profile) ;;
		esac
		"$LAZYFS" run "${COMMON[@]}" "${extra[@]}" --report "$WORK/$m.$i.json" "$IMG" -- python3 -c "$WORKLOAD" >/dev/null
	done
done
python3 - "$WORK" "$N" "$SHAPE" "${modes[@]}" <<'PY'
import json, statistics, sys
work, n, shape, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
print(f"link: {shape}; {n} cold samples per mode, interleaved; medians")
print(f"{'mode':18}{'total s':>9}{'mount s':>9}{'run s':>8}{'requests':>10}{'MB fetched':>12}{'profile local':>15}{'bg jobs':>9}")
base = None
for m in modes:
    rs = [json.load(open(f"{work}/{m}.{i}.json")) for i in range(1, n + 1)]
    med = lambda f: statistics.median(f(r) for r in rs)
    tot = med(lambda r: r["totalSeconds"])
    base = base or tot
    pl = "-"
    if rs[0].get("prefetch"):
        pl = f'{med(lambda r: r["prefetch"]["profileLocal"]):.0f}/{med(lambda r: r["prefetch"]["profileChunks"]):.0f}'
    print(f"{m:18}{tot:>9.3f}{med(lambda r: r['mountSeconds']):>9.3f}{med(lambda r: r['runSeconds']):>8.3f}"
          f"{med(lambda r: r['remote']['requests']):>10.0f}{med(lambda r: r['remote']['bytesFetched'])/1e6:>12.1f}{pl:>15}{med(lambda r: r['fs']['neighbourJobs']):>9.0f}   {tot/base:.2f}x")
PY
