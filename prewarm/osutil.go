package prewarm

import (
	"bytes"
	"os"
)

func osTempDir() string { return os.TempDir() }

func mkdirAll(dir string) error { return os.MkdirAll(dir, 0o700) }

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }
