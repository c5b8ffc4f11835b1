package fs

import "syscall"

func syscallSync() { syscall.Sync() }
