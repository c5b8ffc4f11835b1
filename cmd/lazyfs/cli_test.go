package main

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/fs/convert"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
	"github.com/lazyfs/lazyfs/internal/registrytest"
)

// run executes the lazyfs command line in-process.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errb bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errb)
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

// testRegistry starts an in-process registry and returns its host.
func testRegistry(t *testing.T) string { return registrytest.New(t).Host }

// pushSample pushes a one-layer image with every entry type to ref.
func pushSample(t *testing.T, ref string) {
	t.Helper()
	registrytest.PushTars(t, ref, toctest.Tar(t, toctest.AllTypes(700<<10)))
}

func TestVersion(t *testing.T) {
	out, err := run(t, "version")
	if err != nil || !strings.HasPrefix(out, "lazyfs ") || !strings.Contains(out, "commit ") || !strings.Contains(out, "go1.") {
		t.Fatalf("%q %v", out, err)
	}
	if out, err = run(t, "--version"); err != nil || !strings.Contains(out, "commit ") {
		t.Fatalf("--version: %q %v", out, err)
	}
	out, err = run(t, "version", "--json")
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
}

func TestConvertAndInspect(t *testing.T) {
	host := testRegistry(t)
	src, dst := host+"/sample:1", host+"/sample:1-lazy"
	pushSample(t, src)

	out, err := run(t, "inspect", "--json", src)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
	var before inspectReport
	if err := json.Unmarshal([]byte(out), &before); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if before.Chunked || len(before.Layers) != 1 || before.Layers[0].Chunked {
		t.Fatalf("plain image reported as chunked: %+v", before)
	}

	out, err = run(t, "convert", "--json", "--chunk-size", "64KiB", src, dst)
	if err != nil {
		t.Fatal(err)
	}
	checkJSONContract(t, out)
	var rep convert.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	l := rep.Images[0].Layers[0]
	if l.Chunks == 0 || l.Entries != len(toctest.AllTypes(1)) || l.SourceSize == 0 || l.Size == 0 {
		t.Fatalf("layer report %+v", l)
	}

	out, err = run(t, "inspect", "--json", dst)
	if err != nil {
		t.Fatal(err)
	}
	var after inspectReport
	if err := json.Unmarshal([]byte(out), &after); err != nil {
		t.Fatal(err)
	}
	il := after.Layers[0]
	if !after.Chunked || !il.Chunked || il.Entries != l.Entries || il.Chunks != l.Chunks || il.ChunkSize != 64<<10 || il.TOCSize != l.TOCSize {
		t.Fatalf("inspect after conversion: %+v vs %+v", after, l)
	}

	// Human output.
	out, err = run(t, "inspect", dst)
	if err != nil || !strings.Contains(out, "lazyfs:    yes") {
		t.Fatalf("%v\n%s", err, out)
	}
	out, err = run(t, "convert", dst, dst)
	if err != nil || !strings.Contains(out, "already a lazyfs image") {
		t.Fatalf("%v\n%s", err, out)
	}
}

func TestCLIErrors(t *testing.T) {
	host := testRegistry(t)
	for _, args := range [][]string{
		{"convert", "only-one-arg"},
		{"convert", "--chunk-size", "lots", "a", "b"},
		{"convert", "--chunk-size", "1KiB", host + "/missing:1", host + "/x:1"},
		{"convert", host + "/missing:1", host + "/x:1"},
		{"inspect", "UPPER/case:bad"},
		{"convert", "--platform", "not/a/valid/platform/x", "a", "b"},
	} {
		if _, err := run(t, args...); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
}
