#!/usr/bin/env bash
# Cold sequential read of a 1 GiB file through a lazy mount vs `crane blob`
# of the same converted blob, both from the distribution registry (Debian's
# docker-registry) on loopback, measured in the same run. Root; run
# hack/demo.sh once first (it fetches the registry and crane into .cache).
#   SIZE_MIB=1024 ROUNDS=3 bench/scripts/cold-read.sh
# MMAP=1 adds a loader-like read (mmap, tensors of 2-16 MiB in a random
# order: bench/scripts/mmapload.py) of the same file from a fresh mount;
# its last two columns leave out the Python interpreter's start (0.4 s on
# some VMs; cat has none): the mount's time plus the loader's own
# (mmapload.py times itself from the open to the last tensor). It also
# reads the source file on local disk (ext4 here), cold, with `cat` and
# with the loader: what the loader costs beyond a sequential read when
# the file system is not lazyfs, on the same machine in the same round.
# SHOW_STATS=1 prints each mount's stats, the mount server's CPU, page
# faults and peak RSS, and how busy the CPUs were.
# COMPARE="BIN1 BIN2 ..." times several lazyfs builds instead, one after the
# other in every round on the same registry (builds differ by less than
# this machine drifts between runs), with the registry's CPU seconds
# around each read (and with MMAP=1 the loader's time from a fresh mount);
# the conversion uses $LAZYFS.
# RATE=1gbit (any tc rate) puts the registry in a network namespace behind a
# veth pair whose registry side tbf shapes to RATE (burst: 10 ms of it, at
# least 256 KiB, as lazyfs bench shapes): a node whose link, not its CPU,
# is the limit.
# Every mount gets --profile-dir= (no learned start-up profile): a mount
# would otherwise prefetch the order the previous round's read recorded,
# and this measures the read path. MOUNT_FLAGS adds flags to every mount.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
export PATH=/usr/local/go/bin:$REPO/.cache/bin:$PATH
SIZE_MIB=${SIZE_MIB:-1024}
ROUNDS=${ROUNDS:-3}
LAZYFS=${LAZYFS:-$REPO/bin/lazyfs}
[ -x .cache/registry/usr/bin/docker-registry ] && command -v crane >/dev/null || { echo "run hack/demo.sh once first (registry + crane)" >&2; exit 1; }
[ -n "${NO_BUILD:-}" ] || make -s build >/dev/null
W=$(mktemp -d /tmp/lazyfs-coldread.XXXXXX)
REGPID=
NS=
cleanup() {
	set +e
	mountpoint -q "$W/mnt" && "$LAZYFS" umount --state-dir "$W/state" "$W/mnt" >/dev/null
	[ -n "$REGPID" ] && kill "$REGPID" && wait "$REGPID" 2>/dev/null
	[ -n "$NS" ] && ip netns del "$NS"
	rm -rf "$W"
}
trap cleanup EXIT
INSECURE=() # lazyfs reaches only localhost over plain HTTP without --insecure
IN=()       # runs the registry in the shaped link's namespace
if [ -n "${RATE:-}" ]; then
	NS=lzcr$$
	ip netns add "$NS"
	ip link add "${NS}h" type veth peer name "${NS}n"
	ip link set "${NS}n" netns "$NS"
	# a /30 of 169.254.203.0/24 that no interface here uses
	for i in $(seq 0 63); do
		NET=169.254.203.$(( ($$ + i) % 64 * 4 ))
		ip -4 -o addr | grep -q " ${NET%.*}.$(( ${NET##*.} + 1 ))/" || break
	done
	ip addr add "${NET%.*}.$(( ${NET##*.} + 1 ))/30" dev "${NS}h"
	ip link set "${NS}h" up
	ip netns exec "$NS" ip addr add "${NET%.*}.$(( ${NET##*.} + 2 ))/30" dev "${NS}n"
	ip netns exec "$NS" ip link set "${NS}n" up
	ip netns exec "$NS" ip link set lo up
	BURST=$(python3 -c 'import re,sys; m=re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", sys.argv[1].lower()) or sys.exit("RATE: want a tc rate such as 1gbit or 200mbit, not "+sys.argv[1]); print(max(256<<10, int(float(m[1])*{"":1,"k":1e3,"m":1e6,"g":1e9}[m[2]])//800))' "$RATE")
	ip netns exec "$NS" tc qdisc replace dev "${NS}n" root tbf rate "$RATE" burst "$BURST" latency 100ms
	REG=${NET%.*}.$(( ${NET##*.} + 2 )):5000
	INSECURE=(--insecure)
	IN=(ip netns exec "$NS")
else
	PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
	REG=127.0.0.1:$PORT
fi
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s/registry}}\nhttp: {addr: %s}\n' "$W" "$REG" > "$W/registry.yml"
"${IN[@]}" .cache/registry/usr/bin/docker-registry serve "$W/registry.yml" >"$W/registry.log" 2>&1 &
REGPID=$!
for _ in $(seq 100); do curl -fs "http://$REG/v2/" >/dev/null && break; sleep 0.1; done

# A binary-like file: a model's weights compress about as badly as this.
mkdir -p "$W/root"
python3 - "$W/root/model.bin" "$SIZE_MIB" <<'PY'
import os, sys, random
random.seed(1)
with open(sys.argv[1], "wb") as f:
    block = bytearray(os.urandom(1 << 20))
    for i in range(int(sys.argv[2])):
        block[i % 4096::4096] = bytes([i % 256]) * len(block[i % 4096::4096])
        f.write(block)
PY
tar -C "$W/root" -cf "$W/layer.tar" model.bin
crane append --insecure -f "$W/layer.tar" -t "$REG/bench/model:plain" >/dev/null 2>&1
"$LAZYFS" convert "${INSECURE[@]}" "$REG/bench/model:plain" "$REG/bench/model:lazy" >/dev/null
DIGEST=$("$LAZYFS" inspect "${INSECURE[@]}" --json "$REG/bench/model:lazy" | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["digest"])')
BLOB=$("$LAZYFS" inspect "${INSECURE[@]}" --json "$REG/bench/model:lazy" | python3 -c 'import json,sys; print(json.load(sys.stdin)["layers"][0]["size"])')
now() { date +%s.%N; }
# server: the mount server's CPU seconds, page faults and peak RSS so far
# (SHOW_STATS): on some VMs a first touch of memory costs ~11 µs a page.
server() { for p in $(pgrep -f -- "$W/mnt"); do awk -v hz="$(getconf CLK_TCK)" '{printf "mount server: %.2f s CPU, %d page faults, ", ($14+$15)/hz, $10}' "/proc/$p/stat"; awk '/VmHWM/{print "peak RSS " $2 " kB"}' "/proc/$p/status"; done; }
regcpu() { awk '{print $14+$15}' "/proc/$REGPID/stat"; } # registry's utime+stime, ticks
secs() { python3 -c 'import sys; print(f"{float(sys.argv[2])-float(sys.argv[1]):.2f}")' "$@"; }
if [ -n "${COMPARE:-}" ]; then
	echo "| round | crane blob (s, registry CPU s) |$(for b in $COMPARE; do printf ' %s (s, registry CPU s) |' "$b"; done)"
	echo "|---|---|$(for b in $COMPARE; do printf -- '---|'; done)"
	hz=$(getconf CLK_TCK)
	for r in $(seq "$ROUNDS"); do
		sync; echo 3 > /proc/sys/vm/drop_caches
		c0=$(regcpu); t0=$(now); crane blob --insecure "$REG/bench/model@$DIGEST" > /dev/null; t1=$(now); c1=$(regcpu)
		line="| $r | $(secs "$t0" "$t1"), $(secs 0 "$(((c1-c0)*100/hz))e-2") |"
		for b in $COMPARE; do
			rm -rf "$W/cache" "$W/mnt" "$W/state"; mkdir -p "$W/mnt"
			sync; echo 3 > /proc/sys/vm/drop_caches
			c0=$(regcpu); t0=$(now)
			"$b" mount "${INSECURE[@]}" --profile-dir= ${MOUNT_FLAGS:-} --state-dir "$W/state" --cache-dir "$W/cache" "$REG/bench/model:lazy" "$W/mnt" >/dev/null
			cat "$W/mnt/model.bin" > /dev/null
			t1=$(now); c1=$(regcpu)
			"$b" umount --state-dir "$W/state" "$W/mnt" >/dev/null
			line="$line $(secs "$t0" "$t1"), $(secs 0 "$(((c1-c0)*100/hz))e-2")"
			if [ -n "${MMAP:-}" ]; then
				rm -rf "$W/cache" "$W/state"
				sync; echo 3 > /proc/sys/vm/drop_caches
				t0=$(now)
				"$b" mount "${INSECURE[@]}" --profile-dir= ${MOUNT_FLAGS:-} --state-dir "$W/state" --cache-dir "$W/cache" "$REG/bench/model:lazy" "$W/mnt" >/dev/null
				python3 bench/scripts/mmapload.py "$W/mnt/model.bin" "$r" >/dev/null
				t1=$(now)
				"$b" umount --state-dir "$W/state" "$W/mnt" >/dev/null
				line="$line, mmap loader $(secs "$t0" "$t1")"
			fi
			line="$line |"
		done
		echo "$line"
	done
	exit 0
fi
echo "| round | crane blob (s) | lazyfs mount + cat (s) | crane MB/s | lazyfs MB/s | lazyfs / crane speed |${MMAP:+ mount + mmap loader (s) | mmap / cat time | mount + loader reads (s) | reads / cat time | local disk: cat, loader (s) | local loader / cat |}"
echo "|---|---|---|---|---|---|${MMAP:+---|---|---|---|---|---|}"
for r in $(seq "$ROUNDS"); do
	sync; echo 3 > /proc/sys/vm/drop_caches
	t0=$(now); crane blob --insecure "$REG/bench/model@$DIGEST" > /dev/null; t1=$(now)
	rm -rf "$W/cache" "$W/mnt"; mkdir -p "$W/mnt"
	sync; echo 3 > /proc/sys/vm/drop_caches
	read -r _ u0 n0 s0 i0 _ < /proc/stat
	t2=$(now)
	LAZYFS_CPUPROFILE=${LAZYFS_CPUPROFILE:-} "$LAZYFS" mount "${INSECURE[@]}" --profile-dir= ${MOUNT_FLAGS:-} --state-dir "$W/state" --cache-dir "$W/cache" "$REG/bench/model:lazy" "$W/mnt" >/dev/null
	cat "$W/mnt/model.bin" > /dev/null
	[ -z "${SHOW_STATS:-}" ] || { "$LAZYFS" stats --state-dir "$W/state" "$W/mnt"; server; } >&2
	t3=$(now)
	read -r _ u1 n1 s1 i1 _ < /proc/stat
	[ -z "${SHOW_STATS:-}" ] || echo "cpu busy during the lazy read: $(( (u1-u0)+(n1-n0)+(s1-s0) )) of $(( (u1-u0)+(n1-n0)+(s1-s0)+(i1-i0) )) jiffies" >&2
	"$LAZYFS" umount --state-dir "$W/state" "$W/mnt" >/dev/null
	t4=0 t5=0 t4m=0 own=0
	if [ -n "${MMAP:-}" ]; then
		rm -rf "$W/cache"
		sync; echo 3 > /proc/sys/vm/drop_caches
		t4=$(now)
		"$LAZYFS" mount "${INSECURE[@]}" --profile-dir= ${MOUNT_FLAGS:-} --state-dir "$W/state" --cache-dir "$W/cache" "$REG/bench/model:lazy" "$W/mnt" >/dev/null
		t4m=$(now)
		own=$(python3 bench/scripts/mmapload.py "$W/mnt/model.bin" "$r")
		t5=$(now)
		[ -z "${SHOW_STATS:-}" ] || { "$LAZYFS" stats --state-dir "$W/state" "$W/mnt"; server; } >&2
		"$LAZYFS" umount --state-dir "$W/state" "$W/mnt" >/dev/null
		sync; echo 3 > /proc/sys/vm/drop_caches
		e0=$(now); cat "$W/root/model.bin" > /dev/null; e1=$(now)
		sync; echo 3 > /proc/sys/vm/drop_caches
		e2=$(now); python3 bench/scripts/mmapload.py "$W/root/model.bin" "$r" >/dev/null; e3=$(now)
		local_cols=" $(secs "$e0" "$e1"), $(secs "$e2" "$e3") | $(python3 -c 'import sys; print(f"{(float(sys.argv[4])-float(sys.argv[3]))/(float(sys.argv[2])-float(sys.argv[1])):.2f}")' "$e0" "$e1" "$e2" "$e3") |"
	fi
	python3 -c "import sys; c=float(sys.argv[2])-float(sys.argv[1]); l=float(sys.argv[4])-float(sys.argv[3]); b=int(sys.argv[5]); m=float(sys.argv[8])-float(sys.argv[7]); o=float(sys.argv[9])-float(sys.argv[7])+float(sys.argv[10]); print(f'| {sys.argv[6]} | {c:.2f} | {l:.2f} | {b/1e6/c:.0f} | {b/1e6/l:.0f} | {c/l:.2f} |' + (f' {m:.2f} | {m/l:.2f} | {o:.2f} | {o/l:.2f} |' if m > 0 else '') + sys.argv[11])" "$t0" "$t1" "$t2" "$t3" "$BLOB" "$r" "$t4" "$t5" "$t4m" "$own" "${local_cols:-}"
done
echo "(blob: $BLOB bytes for a ${SIZE_MIB} MiB file; registry: distribution on $REG${RATE:+, behind a link shaped to $RATE})"
