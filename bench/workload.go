package bench

import (
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
)

// Workload is what one cold start runs: an image, a command in it, and when
// it counts as ready.
type Workload struct {
	Name string `json:"name"`
	// Image is a BuiltImages name or a registry reference.
	Image string   `json:"image"`
	Cmd   []string `json:"cmd"`
	// ReadyLine, when set, makes the workload ready at the first stdout line
	// it matches (the process is then stopped); otherwise it is ready when
	// the command exits with status 0.
	ReadyLine *regexp.Regexp `json:"-"`
}

// Ready describes the ready condition.
func (w *Workload) Ready() string {
	if w.ReadyLine != nil {
		return "line /" + w.ReadyLine.String() + "/"
	}
	return "exit 0"
}

const readAllScript = `import os
n = 0
for root, dirs, files in os.walk("/usr"):
    for f in files:
        p = os.path.join(root, f)
        if os.path.islink(p) or not os.path.isfile(p):
            continue
        with open(p, "rb", buffering=0) as fh:
            while True:
                b = fh.read(1 << 20)
                if not b:
                    break
                n += len(b)
print("read", n, "bytes")
`

var builtin = map[string]Workload{
	"hello":   {Name: "hello", Image: "hello", Cmd: []string{"/bin/sh", "-c", "echo hello from lazyfs bench"}},
	"python":  {Name: "python", Image: "python", Cmd: []string{"python3", "-c", "import numpy; print('numpy', numpy.__version__)"}},
	"torch":   {Name: "torch", Image: "torch", Cmd: []string{"python3", "-c", "import torch; print('torch', torch.__version__)"}},
	"node":    {Name: "node", Image: "node", Cmd: []string{"/bin/sh", "-c", "echo 'var x = 1;' | eslint --no-eslintrc --stdin --rule 'semi: error' && tsc --version"}},
	"readall": {Name: "readall", Image: "python", Cmd: []string{"python3", "-c", readAllScript}},
	"weights": {Name: "weights", Image: "weights", Cmd: []string{"/bin/sh", "-c", "cat /weights/model.safetensors > /dev/null && echo read"}},
}

// WorkloadNames lists the built-in workloads.
func WorkloadNames() []string {
	names := make([]string, 0, len(builtin))
	for n := range builtin {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// BuiltinWorkload returns a copy of a built-in workload.
func BuiltinWorkload(name string) (*Workload, error) {
	w, ok := builtin[name]
	if !ok {
		return nil, fmt.Errorf("workload %q: unknown (known: %s)", name, strings.Join(WorkloadNames(), ", "))
	}
	w.Cmd = slices.Clone(w.Cmd)
	return &w, nil
}

// CustomWorkload is a user's image and command; readyLine "" means ready at
// exit 0.
func CustomWorkload(image string, cmd []string, readyLine string) (*Workload, error) {
	if image == "" || len(cmd) == 0 {
		return nil, fmt.Errorf("custom workload: needs an image and a command")
	}
	w := &Workload{Name: "custom", Image: image, Cmd: slices.Clone(cmd)}
	if readyLine != "" {
		re, err := regexp.Compile(readyLine)
		if err != nil {
			return nil, fmt.Errorf("custom workload: ready line %q: %w", readyLine, err)
		}
		w.ReadyLine = re
	}
	return w, nil
}
