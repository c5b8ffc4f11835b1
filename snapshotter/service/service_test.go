package service_test

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/fs"
	"github.com/lazyfs/lazyfs/internal/fetchconf"
	"github.com/lazyfs/lazyfs/internal/fsconf"
	"github.com/lazyfs/lazyfs/snapshotter/service"
)

// TestSampleConfigIsDefaults pins docs/examples/config.toml to Defaults():
// the commented sample documents the real defaults.
func TestSampleConfigIsDefaults(t *testing.T) {
	got, err := service.Load("../../docs/examples/config.toml", true, service.Config{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(service.Defaults(), got); d != "" {
		t.Fatalf("sample config differs from the defaults (-defaults +sample):\n%s", d)
	}
	// Every key is in the sample, set or commented out: a key missing
	// there would take its default and pass the diff above unseen.
	b, err := os.ReadFile("../../docs/examples/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	typ := reflect.TypeOf(service.Config{})
	for i := range typ.NumField() {
		key := typ.Field(i).Tag.Get("toml")
		if !regexp.MustCompile(`(?m)^(# )?` + key + ` = `).Match(b) {
			t.Errorf("key %s is not in docs/examples/config.toml", key)
		}
	}
}

// TestFetchLimits: the fetcher keys are read from the file and flags, and
// a value out of range is refused naming the key and the range.
func TestFetchLimits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(path, []byte("fetch_deadline = \"2m\"\nmin_throughput = \"64KiB/s\"\nretry_attempts = 3\n"), 0o600)
	flags := service.Defaults()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.BindFlags(fs)
	if err := fs.Parse([]string{"--stall-timeout", "5s", "--retry-attempts", "4"}); err != nil {
		t.Fatal(err)
	}
	c, err := service.Load(path, true, flags, fs)
	if err != nil {
		t.Fatal(err)
	}
	want := fetchconf.Defaults()
	want.FetchDeadline, want.MinThroughput, want.StallTimeout, want.RetryAttempts = 2*time.Minute, 64<<10, 5*time.Second, 4
	if d := cmp.Diff(want, c.Fetch()); d != "" {
		t.Fatalf("fetch limits (-want +got):\n%s", d)
	}
	os.WriteFile(path, []byte("min_throughput = \"off\"\n"), 0o600)
	if c, err := service.Load(path, true, service.Config{}, nil); err != nil || c.Fetch().MinThroughput != 0 {
		t.Fatalf("min_throughput off: %v %v", c.MinThroughput, err)
	}
	for bad, msg := range map[string]string{
		"fetch_deadline = \"0s\"\n":       "config: fetch_deadline 0s: out of range: the deadline of one chunk fetch must be 1s-1h0m0s",
		"stall_timeout = \"11m\"\n":       "config: stall_timeout 11m0s: out of range",
		"throughput_window = \"100ms\"\n": "config: throughput_window 100ms: out of range",
		"retry_deadline = \"2h\"\n":       "config: retry_deadline 2h0m0s: out of range",
		"retry_attempts = 0\n":            "config: retry_attempts 0: out of range: the attempts per registry host must be 1-100",
		"min_throughput = \"2GiB\"\n":     "config: min_throughput 2GiB/s: out of range",
		"min_throughput = \"fast\"\n":     `invalid size "fast"`,
	} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := service.Load(path, true, service.Config{}, nil); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("config %q: %v, want %q", bad, err, msg)
		}
	}
}

// TestFSKeys: the file-system tuning keys are read from the file and
// flags (a flag wins), become fs.Options (off is fs's none), and a value out
// of range is refused naming the key and the range.
func TestFSKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "config.toml")
	os.WriteFile(path, []byte("read_ahead = 64\nneighbour_window = \"off\"\nwhole_library = \"4MiB\"\npassthrough = true\n"), 0o600)
	flags := service.Defaults()
	f := pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.BindFlags(f)
	if err := f.Parse([]string{"--whole-library", "off", "--passthrough=false"}); err != nil {
		t.Fatal(err)
	}
	c, err := service.Load(path, true, flags, f)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(fsconf.Config{ReadAhead: 64}, c.FS()); d != "" {
		t.Fatalf("fs settings (-want +got):\n%s", d)
	}
	if o := c.FS().Options(); o.ReadAhead != 64 || o.NeighbourWindow >= 0 || o.WholeLibrary >= 0 || o.Passthrough {
		t.Fatalf("options %+v: want read-ahead 64, no neighbours, no whole libraries, no passthrough", o)
	}
	if o := service.Defaults().FS().Options(); o.ReadAhead != fs.DefaultReadAhead || o.NeighbourWindow != fs.DefaultNeighbourWindow || o.WholeLibrary != fs.DefaultWholeLibrary || o.Passthrough {
		t.Fatalf("default options %+v differ from fs's", o)
	}
	for bad, msg := range map[string]string{
		"read_ahead = 1025\n":           "config: read_ahead 1025: out of range: the read-ahead in chunks (0 or off: none) must be 0-1024",
		"read_ahead = -1\n":             "config: read_ahead -1: out of range",
		"read_ahead = \"many\"\n":       `invalid count "many"`,
		"neighbour_window = \"1GiB\"\n": "config: neighbour_window 1GiB: out of range: the neighbour window (0 or off: none) must be 0-64MiB",
		"whole_library = \"65MiB\"\n":   "config: whole_library 65MiB: out of range",
		"whole_library = \"big\"\n":     `invalid size "big"`,
		"neighbor_window = \"1MiB\"\n":  "unknown key neighbor_window",
		"passthrough = \"yes\"\n":       "line 1: passthrough: ",
	} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := service.Load(path, true, service.Config{}, nil); err == nil || !strings.Contains(err.Error(), msg) {
			t.Errorf("config %q: %v, want %q", bad, err, msg)
		}
	}
	// The same bounds for a flag.
	flags = service.Defaults()
	f = pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.BindFlags(f)
	if err := f.Parse([]string{"--read-ahead", "5000"}); err != nil {
		t.Fatal(err)
	}
	if _, err := service.Load("", false, flags, f); err == nil || !strings.Contains(err.Error(), "read_ahead 5000: out of range") {
		t.Errorf("--read-ahead 5000: %v", err)
	}
}

func TestLoadFlagsWin(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "config.toml")
	os.WriteFile(path, []byte("root = \"/from/file\"\ncache_size = \"2GiB\"\nlog_level = \"debug\"\nmount_timeout = \"5s\"\n"), 0o600)
	flags := service.Defaults()
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	flags.BindFlags(fs)
	if err := fs.Parse([]string{"--root", "/from/flag", "--metrics-address", ""}); err != nil {
		t.Fatal(err)
	}
	c, err := service.Load(path, true, flags, fs)
	if err != nil {
		t.Fatal(err)
	}
	if c.Root != "/from/flag" || c.CacheSize != 2<<30 || c.LogLevel != "debug" || c.MetricsAddress != "" || time.Duration(c.MountTimeout) != 5*time.Second {
		t.Fatalf("merged config: %+v", c)
	}
	if c.CachePath() != "/from/flag/cache" {
		t.Fatalf("cache path %q", c.CachePath())
	}
	// A missing default file is fine, a missing explicit one is not.
	if _, err := service.Load(filepath.Join(dir, "none.toml"), false, flags, nil); err != nil {
		t.Fatalf("missing default config: %v", err)
	}
	if _, err := service.Load(filepath.Join(dir, "none.toml"), true, flags, nil); err == nil {
		t.Fatal("missing --config file accepted")
	}
	for _, bad := range []string{"unknown_key = 1\n", "cache_size = \"lots\"\n", "log_level = \"loud\"\n", "mount_timeout = \"0s\"\n", "address = \"\"\n"} {
		os.WriteFile(path, []byte(bad), 0o600)
		if _, err := service.Load(path, true, flags, nil); err == nil {
			t.Errorf("config %q accepted", bad)
		}
	}
}

func TestListenUnixPermissions(t *testing.T) {
	base := t.TempDir()
	sock := filepath.Join(base, "run", "s.sock")
	l, err := service.ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(sock)
	dst, _ := os.Stat(filepath.Dir(sock))
	if st.Mode().Perm() != 0o600 || dst.Mode().Perm() != 0o700 {
		t.Fatalf("socket %04o in dir %04o, want 0600 in 0700", st.Mode().Perm(), dst.Mode().Perm())
	}
	if _, err := service.ListenUnix(sock); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second listener on a live socket: %v", err)
	}
	l.Close()
	// A stale socket file (no listener) is replaced.
	os.WriteFile(sock, nil, 0o600)
	if _, err := service.ListenUnix(sock); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("regular file at the socket path: %v", err)
	}
	os.Remove(sock)
	open := filepath.Join(base, "open")
	os.Mkdir(open, 0o755)
	os.Chmod(open, 0o755)
	if _, err := service.ListenUnix(filepath.Join(open, "s.sock")); err == nil {
		t.Fatal("socket in a 0755 directory accepted")
	}
}
