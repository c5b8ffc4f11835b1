package fs

import "testing"

// TestSharedObjectNoBulk: shared libraries are mapped and faulted in long
// runs by the dynamic loader but used in part, so they never get a bulk
// fill; model weights and other big files do.
func TestSharedObjectNoBulk(t *testing.T) {
	for name, want := range map[string]bool{
		"usr/lib/python3/dist-packages/torch/lib/libtorch_cpu.so": true,
		"usr/lib/x86_64-linux-gnu/libLLVM-15.so.1":                true,
		"usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30":            true,
		"models/llama/model-00001-of-00002.safetensors":           false,
		"models/qwen.gguf":          false,
		"data/so.bin":               false,
		"srv/weights.so-called.bin": false,
		"opt/app/pytorch_model.bin": false,
	} {
		if got := sharedObject(name); got != want {
			t.Errorf("sharedObject(%q) = %v, want %v", name, got, want)
		}
	}
}
