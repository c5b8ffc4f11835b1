package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/pflag"
)

func TestRegistryError(t *testing.T) {
	manifest := &transport.Error{StatusCode: http.StatusNotFound, Errors: []transport.Diagnostic{{Code: transport.ManifestUnknownErrorCode, Message: "raw body"}}}
	denied := &transport.Error{StatusCode: http.StatusUnauthorized, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}
	for _, c := range []struct {
		err      error
		sentinel error
		want     string
	}{
		{fmt.Errorf("image x: %w", manifest), ErrImageNotFound, "r:1: no such image in the registry"},
		{&transport.Error{StatusCode: http.StatusNotFound}, ErrImageNotFound, "no such image"},
		{fmt.Errorf("wrapped: %w", denied), ErrAccessDenied, "r:1: the registry refused access: log in"},
		{&transport.Error{StatusCode: http.StatusForbidden}, ErrAccessDenied, "refused access"},
	} {
		got := RegistryError("r:1", c.err)
		if !errors.Is(got, c.sentinel) || !strings.Contains(got.Error(), c.want) || strings.Contains(got.Error(), "raw body") {
			t.Errorf("RegistryError(%v) = %q; want %v and %q", c.err, got, c.sentinel, c.want)
		}
		if !errors.Is(got, c.err) {
			t.Errorf("RegistryError(%v) lost the original error", c.err)
		}
	}
	blob := &transport.Error{StatusCode: http.StatusNotFound, Errors: []transport.Diagnostic{{Code: transport.BlobUnknownErrorCode}}}
	if got := RegistryError("r:1", blob); !strings.Contains(got.Error(), "a blob of the image is missing") {
		t.Errorf("missing blob: %v", got)
	}
	other := errors.New("connection refused")
	if got := RegistryError("r:1", other); got != other {
		t.Errorf("unrelated error changed: %v", got)
	}
	if got := PushError("d:1", &transport.Error{StatusCode: http.StatusMethodNotAllowed}); !strings.Contains(got.Error(), "does not accept pushes there (405)") {
		t.Errorf("405: %v", got)
	}
}

func TestExitCode(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	if c := ExitCode(ctx, errors.New("x")); c != ExitError {
		t.Errorf("plain error: %d", c)
	}
	if c := ExitCode(ctx, Usagef("bad")); c != ExitUsage {
		t.Errorf("usage error: %d", c)
	}
	cancel()
	if c, m := ExitCode(ctx, context.Canceled), Message(ctx, context.Canceled); c != ExitInterrupted || m != "interrupted" {
		t.Errorf("interrupted: %d %q", c, m)
	}
}

func TestCheckMountDir(t *testing.T) {
	d := t.TempDir()
	empty, full, file := filepath.Join(d, "e"), filepath.Join(d, "f"), filepath.Join(d, "file")
	os.Mkdir(empty, 0o755)
	os.Mkdir(full, 0o755)
	os.WriteFile(filepath.Join(full, "x"), nil, 0o644)
	os.WriteFile(file, nil, 0o644)
	for _, c := range []struct {
		dir   string
		force bool
		want  string
	}{
		{empty, false, ""}, {full, true, ""},
		{full, false, "is not empty"}, {file, false, "is a file"}, {filepath.Join(d, "none"), false, "does not exist"},
	} {
		err := CheckMountDir(c.dir, c.force)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("CheckMountDir(%s, %v) = %v; want %q", c.dir, c.force, err, c.want)
		}
	}
}

func TestAliases(t *testing.T) {
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	v := fs.String("neighbour-window", "", "")
	fs.SetNormalizeFunc(Aliases(map[string]string{"neighbor-window": "neighbour-window"}))
	for _, name := range []string{"neighbor-window", "neighbour-window"} {
		if err := fs.Parse([]string{"--" + name, name}); err != nil || *v != name {
			t.Errorf("--%s: %q %v", name, *v, err)
		}
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	WriteJSON(&b, struct {
		A int `json:"a"`
	}{1})
	var m map[string]any
	if err := json.Unmarshal(b.Bytes(), &m); err != nil || m["schemaVersion"] != float64(SchemaVersion) || m["a"] != float64(1) {
		t.Errorf("object: %s %v", b.String(), err)
	}
	b.Reset()
	WriteJSON(&b, struct{}{})
	if err := json.Unmarshal(b.Bytes(), &m); err != nil {
		t.Errorf("empty object: %s %v", b.String(), err)
	}
}

func TestProgressLine(t *testing.T) {
	// The rate is done over the whole elapsed time, as the summary's: a
	// first tick after a burst does not read as an absurd rate.
	if got := Line("converting", 30<<20, 120<<20, 3*time.Second); got != "converting  30MiB/120MiB   25%  10MiB/s" {
		t.Errorf("line %q", got)
	}
	if got := Line("converting", 30<<20, 0, 10*time.Millisecond); strings.Contains(got, "/s") {
		t.Errorf("a rate before a second has passed: %q", got)
	}
}

func TestCamelCaseKeys(t *testing.T) {
	in := `{"memory_free_bytes":1,"gpus":[{"claim_id":"a_b","ok":true,"x":null,"n":1.5e3,"e":{},"l":[]}],"last_resume_ms":2}`
	want := `{"memoryFreeBytes":1,"gpus":[{"claimId":"a_b","ok":true,"x":null,"n":1.5e3,"e":{},"l":[]}],"lastResumeMs":2}`
	got, err := CamelCaseKeys([]byte(in))
	if err != nil || string(got) != want {
		t.Fatalf("CamelCaseKeys:\n got %s, %v\nwant %s", got, err, want)
	}
}
