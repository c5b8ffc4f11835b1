package prewarm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestSecureDirRefusesHostile builds the directories an attacker could
// pre-create for the daemon's worker sockets (issue 9 item 9) and checks
// each is refused, not reused or repaired.
func TestSecureDirRefusesHostile(t *testing.T) {
	base := shortTempDir(t)
	good := filepath.Join(base, "new", "workers")
	if err := SecureDir(good); err != nil {
		t.Fatalf("fresh dir: %v", err)
	}
	if fi, err := os.Lstat(good); err != nil || fi.Mode().Perm() != 0o700 || !fi.IsDir() {
		t.Fatalf("created %v %v, want a 0700 dir", fi, err)
	}
	if err := SecureDir(good); err != nil {
		t.Fatalf("second call on its own dir: %v", err)
	}

	target := filepath.Join(base, "target")
	os.Mkdir(target, 0o700)
	link := filepath.Join(base, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o700)
	os.Chmod(open, 0o777)
	file := filepath.Join(base, "file")
	os.WriteFile(file, nil, 0o600)
	wparent := filepath.Join(base, "wparent")
	os.Mkdir(wparent, 0o700)
	os.Chmod(wparent, 0o777)
	cases := map[string]string{
		"symlink to a dir":      link,
		"mode 0777":             open,
		"a regular file":        file,
		"world-writable parent": filepath.Join(wparent, "workers"),
		"relative path":         "workers",
	}
	if os.Geteuid() == 0 {
		foreign := filepath.Join(base, "foreign")
		os.Mkdir(foreign, 0o700)
		if err := os.Chown(foreign, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		cases["owned by another uid"] = foreign
	}
	for name, dir := range cases {
		if err := SecureDir(dir); !errors.Is(err, ErrInsecureDir) {
			t.Errorf("%s (%s): %v, want ErrInsecureDir", name, dir, err)
		}
	}
	// Nothing was repaired behind the refusal.
	if fi, _ := os.Stat(open); fi.Mode().Perm() != 0o777 {
		t.Errorf("hostile dir changed to %v", fi.Mode().Perm())
	}
}

// TestHostileWorkerDirNeverServes: a warm worker whose socket dir is a
// pre-created world-writable directory is never started or handed out.
func TestHostileWorkerDirNeverServes(t *testing.T) {
	dir := shortTempDir(t)
	os.Chmod(dir, 0o777)
	m := newTestManager(t, NewFakeGPUs(1), Config{WorkerArgv: []string{os.Args[0], "-test.run=^$"}, WorkerDir: dir,
		RetryBackoff: time.Hour}, "")
	s := pollUntil(t, m, "start refused", func(s Status) bool {
		return strings.Contains(gpuIn(s, g0).Reason, "insecure directory")
	})
	if g := gpuIn(s, g0); g.State == StateHeld || g.HolderPID != 0 {
		t.Fatalf("worker running in a hostile dir: %+v", g)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("daemon wrote into the hostile dir: %v", ents)
	}
}

// TestClaimRefusesSwappedSocket: if the worker's socket was replaced by a
// symlink (the attack of issue 9), the claim fails and hands out nothing.
func TestClaimRefusesSwappedSocket(t *testing.T) {
	m := newTestManager(t, NewFakeGPUs(1), Config{WorkerArgv: []string{os.Args[0], "-test.run=^$"}}, "")
	s := pollUntil(t, m, "worker ready", stateIs(g0, StateHeld))
	pid := gpuIn(s, g0).HolderPID
	sock := filepath.Join(m.workerDir(), sanitize(g0)+"-1.sock")
	if _, err := os.Lstat(sock); err != nil {
		t.Fatalf("worker socket: %v", err)
	}
	os.Remove(sock)
	if err := os.Symlink("/run/attacker.sock", sock); err != nil {
		t.Fatal(err)
	}
	res, err := m.Claim(context.Background(), ClaimRequest{})
	if !errors.Is(err, ErrHolder) || res.Worker != nil {
		t.Fatalf("claim over a swapped socket: %+v %v", res, err)
	}
	waitDead(t, pid)
}

// TestChildEnvAllowlist: a secret in the daemon's environment does not
// reach holders or workers; allowed names and ChildEnv do.
func TestChildEnvAllowlist(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t-do-not-leak")
	t.Setenv("LC_TESTVAR", "kept")
	out := filepath.Join(shortTempDir(t), "env")
	m := newTestManager(t, NewFakeGPUs(1), Config{
		HolderArgv: func(string, uint64) []string {
			return []string{"/bin/sh", "-c", "env > " + out + "; echo READY; exec sleep 600"}
		},
		ChildEnv: []string{"EXTRA=1"},
	}, "")
	pollUntil(t, m, "holder ready", stateIs(g0, StateHeld))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	env := string(b)
	if strings.Contains(env, "s3cr3t") || strings.Contains(env, "AWS_SECRET_ACCESS_KEY") {
		t.Fatalf("secret reached the child:\n%s", env)
	}
	for _, want := range []string{"PATH=", "LC_TESTVAR=kept", "EXTRA=1", "CUDA_VISIBLE_DEVICES=" + g0} {
		if !strings.Contains(env, want) {
			t.Errorf("child env lacks %q:\n%s", want, env)
		}
	}
	if got := filterEnv([]string{"A=1", "AB=2", "B=3", "CUDA_X=4"}, []string{"A", "CUDA_*"}); strings.Join(got, " ") != "A=1 CUDA_X=4" {
		t.Errorf("filterEnv = %v", got)
	}
}

// TestWorkerRunsAsConfiguredUser: workers run with the configured uid/gid
// and still serve the socket the daemon bound for them.
func TestWorkerRunsAsConfiguredUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to change uid")
	}
	dir := shortTempDir(t)
	os.Chmod(dir, 0o777)
	out := filepath.Join(dir, "id")
	m := newTestManager(t, NewFakeGPUs(1), Config{
		WorkerArgv:       []string{"/bin/sh", "-c", "{ id -u; id -g; id -G; } > " + out + "; echo READY; exec sleep 600"},
		WorkerCredential: &syscall.Credential{Uid: 65534, Gid: 65534},
	}, "")
	pollUntil(t, m, "worker ready", stateIs(g0, StateHeld))
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(b)); len(got) != 3 || got[0] != "65534" || got[1] != "65534" || got[2] != "65534" {
		t.Fatalf("worker ids %q, want uid, gid and groups 65534", got)
	}
}
