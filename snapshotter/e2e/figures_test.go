package e2e_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

// TestNodeFigures measures, in one run against one registry on 127.0.0.1
// (no link shaping): time from pull to a container's first output, lazily
// (lazyfs pull + ctr run --snapshotter lazyfs) and with a full pull
// (ctr image pull + ctr run with overlayfs), as medians over rounds with
// fresh images; the remote Prepare latency; the daemon's RSS with 10 images
// mounted; bytes fetched per image. It asserts nothing about time; run it with
// LAZYFS_FIGURES=1 go test -run TestNodeFigures -v ./snapshotter/e2e.
func TestNodeFigures(t *testing.T) {
	if os.Getenv("LAZYFS_FIGURES") == "" {
		t.Skip("figures for the docs; set LAZYFS_FIGURES=1")
	}
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	r := newRegistry(t)
	d := newDaemon(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": d.sock})

	const files, fileSize = 40, 2560 << 10 // 100 MiB of app files; the command reads 2 (5%)
	mkImage := func(round int) (lazyRef, fullRef string, size int64) {
		app := []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte(fmt.Sprintf("ready %d\n", round))), dir("app/")}
		for i := range files {
			app = append(app, reg(fmt.Sprintf("app/mod%02d.so", i), 0o755, toctest.Random(uint64(round*1000+i), fileSize)))
		}
		// Each round its own base too, so that neither side finds it cached.
		base := layer(t, []toctest.File{dir("bin/"), reg("bin/busybox", 0o755, busybox),
			reg("bin/.round", 0o644, []byte(strconv.Itoa(round))), symlink("bin/sh", "busybox")})
		src := r.ref(fmt.Sprintf("src/fig%d:1", round))
		push(t, src, base, layer(t, app))
		lazyRef = r.ref(fmt.Sprintf("lazy/fig%d:1", round))
		fullRef = r.ref(fmt.Sprintf("full/fig%d:1", round))
		for _, dst := range []string{lazyRef, fullRef} { // the same converted image under two names
			if _, err := convert.Image(ctx, src, dst, convert.WithChunkSize(256<<10)); err != nil {
				t.Fatal(err)
			}
		}
		return lazyRef, fullRef, imageBytes(t, lazyRef)
	}
	script := "cat /etc/motd; cat /app/mod00.so /app/mod17.so > /dev/null; echo done"
	id := 0
	firstOutput := func(start time.Time, args ...string) time.Duration {
		id++
		cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", c.Address, "--namespace", c.Namespace, "run", "--rm"},
			append(args[:len(args):len(args)], fmt.Sprintf("fig-%d-%d", os.Getpid(), id), "/bin/sh", "-c", script)...)...)
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(out)
		var first time.Duration
		for sc.Scan() {
			if first == 0 {
				first = time.Since(start)
			}
		}
		if err := cmd.Wait(); err != nil {
			t.Fatalf("ctr run %v: %v", args, err)
		}
		return first
	}

	const rounds = 3
	var lazyT, fullT []time.Duration
	for round := range rounds {
		lazyRef, fullRef, size := mkImage(round)
		// Alternate which goes first, so that neither always finds a warmer machine.
		runLazy := func() {
			before := r.fetched(fmt.Sprintf("lazy/fig%d", round))
			start := time.Now()
			if _, err := pull.Pull(ctx, lazyRef, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
				t.Fatal(err)
			}
			lazyT = append(lazyT, firstOutput(start, "--snapshotter", "lazyfs", lazyRef))
			t.Logf("round %d lazy: first output %v; fetched %d of %d bytes (%.1f%%)", round, lazyT[len(lazyT)-1],
				r.fetched(fmt.Sprintf("lazy/fig%d", round))-before, size, 100*float64(r.fetched(fmt.Sprintf("lazy/fig%d", round))-before)/float64(size))
		}
		runFull := func() {
			start := time.Now()
			if _, err := c.Ctr("images", "pull", "--plain-http", fullRef); err != nil {
				t.Fatal(err)
			}
			fullT = append(fullT, firstOutput(start, "--snapshotter", "overlayfs", fullRef))
			t.Logf("round %d full: first output %v; fetched %d bytes", round, fullT[len(fullT)-1], r.fetched(fmt.Sprintf("full/fig%d", round)))
		}
		if round%2 == 0 {
			runLazy()
			runFull()
		} else {
			runFull()
			runLazy()
		}
	}
	ml, mf := median(lazyT), median(fullT)
	t.Logf("FIGURE pull→first output, 100 MiB app image reading 5%%, loopback registry: lazyfs %v, full pull+overlayfs %v (median of %d; ratio full/lazy %.2fx)", ml, mf, rounds, float64(mf)/float64(ml))
	cnt := d.metric("lazyfs_snapshotter_remote_prepare_seconds_count")
	sum := d.metric("lazyfs_snapshotter_remote_prepare_seconds_sum")
	t.Logf("FIGURE remote Prepare (mount+commit) latency: mean %.1f ms over %v layers", 1000*sum/cnt, cnt)

	// RSS with 10 more images mounted (2 lazy layers each, one shared).
	rss0 := rssKiB(t, d.cmd.Process.Pid)
	for i := range 10 {
		ref := r.ref(fmt.Sprintf("lazy/many%d:1", i))
		src := r.ref(fmt.Sprintf("src/many%d:1", i))
		push(t, src, busyboxLayer(t, busybox),
			layer(t, []toctest.File{dir("etc/"), reg("etc/motd", 0o644, []byte(fmt.Sprintf("image %d\n", i))), reg("etc/blob", 0o644, toctest.Random(uint64(9000+i), 8<<20))}))
		if _, err := convert.Image(ctx, src, ref); err != nil {
			t.Fatal(err)
		}
		if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Ctr("run", "--rm", "--snapshotter", "lazyfs", ref, fmt.Sprintf("many-%d-%d", os.Getpid(), i), "busybox", "cat", "/etc/motd"); err != nil {
			t.Fatalf("%v %s", err, out)
		}
	}
	rss1 := rssKiB(t, d.cmd.Process.Pid)
	t.Logf("FIGURE daemon RSS: %d KiB with the %d figure images mounted, %d KiB after 10 more images (%.0f layer mounts in all)",
		rss0, rounds, rss1, d.metric("lazyfs_snapshotter_remote_layers_total"))
}

func symlink(name, target string) toctest.File {
	f := dir(name)
	f.Hdr.Typeflag, f.Hdr.Linkname, f.Hdr.Mode = '2', target, 0o777
	return f
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func rssKiB(t *testing.T, pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			f := strings.Fields(l)
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return -1
}
