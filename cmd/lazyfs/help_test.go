package main

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode"

	"github.com/spf13/cobra"
)

// TestEveryCommandHasAnExample: every runnable subcommand's --help shows
// an Example (docs/cli.md promises it).
func TestEveryCommandHasAnExample(t *testing.T) {
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		if c.Runnable() && c.HasParent() && !c.Hidden && c.Example == "" {
			t.Errorf("%s has no Example", c.CommandPath())
		}
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRootCmd())
}

// checkJSONContract checks docs/cli.md's promises for a --json document:
// an object with "schemaVersion": 1, camelCase keys at every level, and
// durations named with their unit.
func checkJSONContract(t *testing.T, out string) {
	t.Helper()
	var doc map[string]any
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("not a JSON object (%v): %s", err, out)
	}
	if v, ok := doc["schemaVersion"].(float64); !ok || v != 1 {
		t.Errorf("schemaVersion %v, want 1", doc["schemaVersion"])
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				if k == "" || unicode.IsUpper(rune(k[0])) || strings.ContainsAny(k, "_- ") {
					t.Errorf("key %s.%s is not camelCase", path, k)
				}
				if strings.EqualFold(k, "duration") || strings.HasSuffix(k, "Duration") {
					t.Errorf("key %s.%s: a duration without its unit", path, k)
				}
				walk(path+"."+k, e)
			}
		case []any:
			for i, e := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), e)
			}
		}
	}
	walk("", doc)
}
