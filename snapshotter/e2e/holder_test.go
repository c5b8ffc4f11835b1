package e2e_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/ctrtest"
	"github.com/lazyfs/lazyfs/snapshotter/pull"
)

// TestHolderKeepsRunningContainers: with the node in a holder process, a
// graceful restart and a kill -9 of the snapshotter leave a running
// container reading files it had not read before.
func TestHolderKeepsRunningContainers(t *testing.T) {
	bin, busybox := needE2E(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r := newRegistry(t)
	a, b, c2 := toctest.Random(21, 1<<20), toctest.Random(22, 1<<20), toctest.Random(23, 1<<20)
	push(t, r.ref("src/held:1"),
		busyboxLayer(t, busybox),
		layer(t, []toctest.File{dir("data/"), reg("data/a", 0o644, a), reg("data/b", 0o644, b), reg("data/c", 0o644, c2), dir("out/")}))
	ref := r.ref("lazy/held:1")
	if _, err := convert.Image(ctx, r.ref("src/held:1"), ref, convert.WithChunkSize(64<<10)); err != nil {
		t.Fatal(err)
	}
	holder, front := newHolderPair(t, bin)
	c := ctrtest.Start(t, map[string]string{"lazyfs": front.sock})
	if _, err := pull.Pull(ctx, ref, pull.WithAddress(c.Address), pull.WithNamespace(c.Namespace)); err != nil {
		t.Fatalf("pull: %v\n%s\n%s", err, front.logTail(), holder.logTail())
	}
	if got := front.metric("lazyfs_snapshotter_remote_layers_total"); got != 2 {
		t.Fatalf("remote layers through the holder: %v, want 2\n%s", got, front.logTail())
	}

	out := t.TempDir()
	id := fmt.Sprintf("held-%d", os.Getpid())
	script := "busybox md5sum /data/a > /out/a; " +
		"while [ ! -e /out/go1 ]; do busybox sleep 0.1; done; busybox md5sum /data/b > /out/b; " +
		"while [ ! -e /out/go2 ]; do busybox sleep 0.1; done; busybox md5sum /data/c > /out/c"
	if o, err := c.Ctr("run", "-d", "--snapshotter", "lazyfs", "--mount", "type=bind,src="+out+",dst=/out,options=rbind:rw",
		ref, id, "/bin/sh", "-c", script); err != nil {
		t.Fatalf("ctr run -d: %v\n%s", err, o)
	}
	t.Cleanup(func() {
		c.Ctr("task", "kill", "-s", "SIGKILL", id)
		for i := 0; i < 50; i++ {
			if _, err := c.Ctr("task", "rm", id); err == nil || strings.Contains(err.Error(), "not found") {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		c.Ctr("container", "rm", id)
	})
	wait := func(name string, want []byte) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			got, err := os.ReadFile(filepath.Join(out, name))
			if err == nil && len(got) > 0 {
				if !strings.Contains(string(got), md5hex(want)) {
					t.Fatalf("the running container read /data/%s wrong: %q, want md5 %s", name, got, md5hex(want))
				}
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("the running container did not read /data/%s within 30s (%v)\nfront:\n%s\nholder:\n%s", name, err, front.logTail(), holder.logTail())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	wait("a", a)

	// Graceful restart of the snapshotter: the mounts stay with the holder.
	front.stop()
	if len(mountsUnder(t, front.root)) == 0 {
		t.Fatal("the layer mounts went away with the snapshotter")
	}
	front.start()
	os.WriteFile(filepath.Join(out, "go1"), nil, 0o644)
	wait("b", b)

	// kill -9 of the snapshotter: the same.
	front.kill9()
	front.start()
	os.WriteFile(filepath.Join(out, "go2"), nil, 0o644)
	wait("c", c2)

	// New containers run after the restarts too.
	var (
		o   string
		err error
	)
	for deadline := time.Now().Add(20 * time.Second); ; {
		o, err = c.Ctr("run", "--rm", "--snapshotter", "lazyfs", ref, id+"-new", "busybox", "md5sum", "/data/a")
		if err == nil || !proxyRedialing(err) || time.Now().After(deadline) {
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	if err != nil || !strings.Contains(o, md5hex(a)) {
		t.Fatalf("new container after the restarts: %v %q", err, o)
	}
}
