package prewarm

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// formatUUID renders CUDA's 16 uuid bytes the way NVML does: GPU-8-4-4-4-12.
func formatUUID(b [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// parseUUID is formatUUID's inverse: "GPU-" followed by 32 hex digits in
// 8-4-4-4-12 groups (case-insensitive). MIG UUIDs are refused.
func parseUUID(s string) ([16]byte, error) {
	var b [16]byte
	rest, ok := strings.CutPrefix(s, "GPU-")
	if !ok {
		return b, fmt.Errorf("gpu uuid %q: want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	parts := strings.Split(rest, "-")
	if len(parts) != 5 || len(parts[0]) != 8 || len(parts[1]) != 4 || len(parts[2]) != 4 || len(parts[3]) != 4 || len(parts[4]) != 12 {
		return b, fmt.Errorf("gpu uuid %q: want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", s)
	}
	n, err := hex.Decode(b[:], []byte(strings.Join(parts, "")))
	if err != nil || n != 16 {
		return b, fmt.Errorf("gpu uuid %q: %v", s, err)
	}
	return b, nil
}
