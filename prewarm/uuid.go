package prewarm

import "fmt"

// formatUUID renders CUDA's 16 uuid bytes the way NVML does: GPU-8-4-4-4-12.
func formatUUID(b [16]byte) string {
	return fmt.Sprintf("GPU-%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
