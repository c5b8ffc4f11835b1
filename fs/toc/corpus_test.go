package toc_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/lazyfs/lazyfs/fs/toc"
	"github.com/lazyfs/lazyfs/fs/toc/toctest"
)

var regen = flag.Bool("regen", false, "rewrite the committed fuzz seed corpora in testdata/fuzz")

// TestFuzzCorpus keeps the committed seed corpora (testdata/fuzz/FuzzX) in
// the format `go test -fuzz` reads; run with -regen to rewrite them.
func TestFuzzCorpus(t *testing.T) {
	res, blob := seedTOC(t)
	raw, tails, tars := hostileSeeds(t)
	seeds := map[string][][]byte{
		"FuzzUnmarshal":   append(append([][]byte{res.TOC.Marshal()}, raw...), sparseTOCSeeds(t)...),
		"FuzzParseFooter": {blob[len(blob)-toc.FooterSize:]},
		"FuzzReadTOC":     append([][]byte{blob[res.Location.Offset-8:]}, tails...),
		"FuzzConvert":     append(append([][]byte{toctest.Tar(t, toctest.AllTypes(5000))}, tars...), sparseTarSeeds(t)...),
		"FuzzVerify":      verifySeeds(t),
	}
	for name, list := range seeds {
		dir := filepath.Join("testdata", "fuzz", name)
		for i, b := range list {
			path := filepath.Join(dir, fmt.Sprintf("seed-%d", i))
			want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
			if *regen {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			if _, err := os.Stat(path); err != nil {
				t.Errorf("seed corpus %s missing (go test -run TestFuzzCorpus -regen): %v", path, err)
			}
		}
	}
}
