package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/lazyfs/lazyfs/fs/convert"
)

// TestConvertSummaryKeptLayers: the summary says what convert left as it
// was and why: attestation manifests, foreign layers.
func TestConvertSummaryKeptLayers(t *testing.T) {
	rep := &convert.Report{Source: "src", Destination: "dst", Digest: "sha256:x", Images: []convert.ImageReport{
		{Platform: "windows/amd64", Layers: []convert.LayerReport{{Kept: "not distributable"}, {}}},
		{Platform: "linux/amd64", Layers: []convert.LayerReport{{}, {}}},
		{Platform: "unknown/unknown", Layers: []convert.LayerReport{{Kept: "not a tar layer"}}},
		{Platform: "unknown/unknown", Layers: []convert.LayerReport{{Kept: "not a tar layer"}, {Kept: "not a tar layer"}}},
	}}
	var out bytes.Buffer
	if err := printConvertSummary(&out, rep); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"kept 2 manifest(s) without tar layers unchanged (build attestations",
		"kept 1 non-distributable (foreign) layer(s) as they are", "converted src -> dst@sha256:x: 4 image(s)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, out.String())
		}
	}
	out.Reset()
	if err := printConvertSummary(&out, &convert.Report{Images: []convert.ImageReport{{Layers: []convert.LayerReport{{}}}}}); err != nil || strings.Contains(out.String(), "kept") {
		t.Errorf("nothing kept: %q, %v", out.String(), err)
	}
}
