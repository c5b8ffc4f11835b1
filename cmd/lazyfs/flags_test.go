package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/spf13/pflag"

	"github.com/lazyfs/lazyfs/fs"
)

// TestFSFlagsEverywhere: mount, run, record, serve and convert --record
// have the same file-system tuning flags: the same types, the real
// defaults in their help, and "off" and the --neighbor-window alias.
func TestFSFlagsEverywhere(t *testing.T) {
	want := map[string]struct{ typ, def string }{
		"read-ahead":       {"count|off", "128"},
		"neighbour-window": {"size|off", "1MiB"},
		"whole-library":    {"size|off", "2MiB"},
		"passthrough":      {"bool", "false"},
	}
	root := newRootCmd()
	for _, name := range []string{"mount", "run", "record", "serve", "convert"} {
		c, _, err := root.Find([]string{name})
		if err != nil || c.Name() != name {
			t.Fatalf("%s: %v", name, err)
		}
		f := c.Flags()
		for flag, w := range want {
			fl := f.Lookup(flag)
			if fl == nil {
				t.Errorf("lazyfs %s has no --%s", name, flag)
				continue
			}
			if fl.Value.Type() != w.typ || fl.DefValue != w.def {
				t.Errorf("lazyfs %s --%s: %s, default %s; want %s, default %s", name, flag, fl.Value.Type(), fl.DefValue, w.typ, w.def)
			}
		}
		if err := f.Parse([]string{"--neighbor-window", "off"}); err != nil {
			t.Errorf("lazyfs %s --neighbor-window off: %v", name, err)
		} else if v := f.Lookup("neighbour-window").Value.String(); v != "off" {
			t.Errorf("lazyfs %s --neighbor-window off: --neighbour-window is %s", name, v)
		}
	}
}

// TestFSFlagsOptions: the flags become fs.Options with fs's own defaults,
// and off as fs's "none" (negative), never 0 (fs's "default").
func TestFSFlagsOptions(t *testing.T) {
	ignore := cmpopts.IgnoreFields(fs.Options{}, "Logger", "Cache", "OnRead", "PrefetchContext")
	for _, tc := range []struct {
		args []string
		want fs.Options
	}{
		{nil, fs.Options{ReadAhead: fs.DefaultReadAhead, NeighbourWindow: fs.DefaultNeighbourWindow, WholeLibrary: fs.DefaultWholeLibrary}},
		{[]string{"--read-ahead", "off", "--neighbour-window", "0", "--whole-library", "off"}, fs.Options{ReadAhead: -1, NeighbourWindow: -1, WholeLibrary: -1}},
		{[]string{"--read-ahead", "0", "--neighbor-window", "off", "--whole-library", "0"}, fs.Options{ReadAhead: -1, NeighbourWindow: -1, WholeLibrary: -1}},
		{[]string{"--read-ahead", "16", "--neighbour-window", "256KiB", "--whole-library", "4MiB", "--passthrough"}, fs.Options{ReadAhead: 16, NeighbourWindow: 256 << 10, WholeLibrary: 4 << 20, Passthrough: true}},
	} {
		ff := newFSFlags()
		f := pflag.NewFlagSet("x", pflag.ContinueOnError)
		ff.bind(f)
		if err := f.Parse(tc.args); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if err := ff.validate(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if d := cmp.Diff(tc.want, ff.options(), ignore); d != "" {
			t.Errorf("%v (-want +got):\n%s", tc.args, d)
		}
		// run and record: the same options; record reads lean.
		var rf runFlags
		f = pflag.NewFlagSet("run", pflag.ContinueOnError)
		rf.register(f)
		if err := f.Parse(tc.args); err != nil {
			t.Fatalf("run %v: %v", tc.args, err)
		}
		rec := tc.want
		rec.Lean = true
		if d := cmp.Diff(tc.want, rf.fsOptions(false), ignore); d != "" {
			t.Errorf("run %v (-want +got):\n%s", tc.args, d)
		}
		if d := cmp.Diff(rec, rf.fsOptions(true), ignore); d != "" {
			t.Errorf("record %v (-want +got):\n%s", tc.args, d)
		}
	}
}
