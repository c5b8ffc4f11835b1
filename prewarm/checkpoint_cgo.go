//go:build linux && cgo

package prewarm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

typedef int CUresult;
typedef struct { unsigned char bytes[16]; } lzck_uuid;

// Argument structs of the checkpoint API as cuda.h (12.8+) lays them out.
// Every reserved byte must be zero; the restore struct is 64 bytes in
// every version, with the GPU pairs (added after 12.8) at its start, so a
// zeroed one means "restore where it was" for all drivers.
typedef struct { unsigned int timeoutMs; unsigned int reserved0; uint64_t reserved1[7]; } lzck_lock_args;
typedef struct { uint64_t reserved[8]; } lzck_plain_args;
typedef struct { lzck_uuid oldUuid; lzck_uuid newUuid; } lzck_gpu_pair;
typedef struct { lzck_gpu_pair *gpuPairs; unsigned int gpuPairsCount; char reserved[64 - sizeof(void *) - sizeof(unsigned int)]; } lzck_restore_args;

static CUresult (*ck_init)(unsigned int);
static CUresult (*ck_driver_version)(int *);
static CUresult (*ck_lock)(int, lzck_lock_args *);
static CUresult (*ck_checkpoint)(int, lzck_plain_args *);
static CUresult (*ck_restore)(int, lzck_restore_args *);
static CUresult (*ck_unlock)(int, lzck_plain_args *);
static CUresult (*ck_get_state)(int, int *);
static CUresult (*ck_errname)(CUresult, const char **);

// lzck_load returns NULL, or the name of what is missing.
static const char *lzck_load(void) {
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return "dlopen libcuda.so.1";
#define SYM(var, name) if (!(*(void **)(&var) = dlsym(h, name))) return name;
	SYM(ck_init, "cuInit");
	SYM(ck_driver_version, "cuDriverGetVersion");
	SYM(ck_errname, "cuGetErrorName");
	SYM(ck_lock, "cuCheckpointProcessLock");
	SYM(ck_checkpoint, "cuCheckpointProcessCheckpoint");
	SYM(ck_restore, "cuCheckpointProcessRestore");
	SYM(ck_unlock, "cuCheckpointProcessUnlock");
	SYM(ck_get_state, "cuCheckpointProcessGetState");
#undef SYM
	return NULL;
}

static CUresult lzck_init(int *version) {
	CUresult r = ck_init(0);
	if (r != 0) return r;
	return ck_driver_version(version);
}
static CUresult lzck_lock(int pid, unsigned int timeoutMs) {
	lzck_lock_args a; memset(&a, 0, sizeof a); a.timeoutMs = timeoutMs;
	return ck_lock(pid, &a);
}
static CUresult lzck_checkpoint(int pid) { lzck_plain_args a; memset(&a, 0, sizeof a); return ck_checkpoint(pid, &a); }
static CUresult lzck_unlock(int pid) { lzck_plain_args a; memset(&a, 0, sizeof a); return ck_unlock(pid, &a); }
static CUresult lzck_restore(int pid, const unsigned char *oldu, const unsigned char *newu) {
	lzck_restore_args a; memset(&a, 0, sizeof a);
	lzck_gpu_pair p;
	if (oldu && newu) {
		memcpy(p.oldUuid.bytes, oldu, 16); memcpy(p.newUuid.bytes, newu, 16);
		a.gpuPairs = &p; a.gpuPairsCount = 1;
	}
	return ck_restore(pid, &a);
}
static CUresult lzck_state(int pid, int *st) { return ck_get_state(pid, st); }
static const char *lzck_errname(CUresult r) {
	const char *s = NULL;
	if (ck_errname == NULL || ck_errname(r, &s) != 0 || s == NULL) return "CUDA_ERROR_UNKNOWN";
	return s;
}
*/
import "C"

import (
	"context"
	"fmt"
	"sync"
	"time"
	"unsafe"
)

// remapMinDriver is the first driver API version (cuDriverGetVersion)
// whose CUcheckpointRestoreArgs carries GPU pairs (CUDA 12.9 headers). Not
// verified on hardware: see docs/prewarm.md.
const remapMinDriver = 12090

type cudaCheckpointer struct {
	once    sync.Once
	caps    CheckpointCaps
	err     error
	callsMu sync.Mutex // the driver's checkpoint calls are serialised
}

// NewCUDACheckpointer returns the Checkpointer backed by libcuda.so.1's
// cuCheckpointProcess* functions, loaded (and cuInit run, which restore
// requires without persistence mode) on the first Caps call.
func NewCUDACheckpointer() Checkpointer { return &cudaCheckpointer{} }

func ckErr(what string, pid int, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("%s pid %d: %s (%d)", what, pid, C.GoString(C.lzck_errname(r)), int(r))
}

func (c *cudaCheckpointer) Caps() (CheckpointCaps, error) {
	c.once.Do(func() {
		if s := C.lzck_load(); s != nil {
			c.err = fmt.Errorf("cuda: %s missing (the checkpoint API needs driver r550+ / CUDA 12.8): %w", C.GoString(s), ErrNoCheckpoint)
			return
		}
		var v C.int
		if r := C.lzck_init(&v); r != 0 {
			c.err = fmt.Errorf("cuInit: %s (%d): %w", C.GoString(C.lzck_errname(r)), int(r), ErrNoCheckpoint)
			return
		}
		c.caps = CheckpointCaps{Remap: int(v) >= remapMinDriver, Driver: fmt.Sprintf("libcuda, driver API %d.%d", int(v)/1000, int(v)%1000/10)}
	})
	return c.caps, c.err
}

func (c *cudaCheckpointer) Suspend(ctx context.Context, pid int) (uint64, error) {
	if _, err := c.Caps(); err != nil {
		return 0, err
	}
	timeoutMs := C.uint(0)
	if dl, ok := ctx.Deadline(); ok {
		timeoutMs = C.uint(max(time.Until(dl).Milliseconds(), 1))
	}
	return runBounded(ctx, fmt.Sprintf("checkpoint pid %d", pid), func() (uint64, error) {
		c.callsMu.Lock()
		defer c.callsMu.Unlock()
		before, _ := rssBytes(pid)
		if err := ckErr("cuCheckpointProcessLock", pid, C.lzck_lock(C.int(pid), timeoutMs)); err != nil {
			return 0, err
		}
		if err := ckErr("cuCheckpointProcessCheckpoint", pid, C.lzck_checkpoint(C.int(pid))); err != nil {
			C.lzck_unlock(C.int(pid))
			return 0, err
		}
		after, err := rssBytes(pid)
		if err != nil || after < before {
			return 0, nil
		}
		return after - before, nil
	})
}

func (c *cudaCheckpointer) Resume(ctx context.Context, pid int, from, to string) error {
	caps, err := c.Caps()
	if err != nil {
		return err
	}
	var oldu, newu *C.uchar
	if from != to {
		if !caps.Remap {
			return fmt.Errorf("restore pid %d onto %s (checkpointed on %s): this driver cannot remap GPUs: %w", pid, to, from, ErrNoCheckpoint)
		}
		o, err := parseUUID(from)
		if err != nil {
			return err
		}
		n, err := parseUUID(to)
		if err != nil {
			return err
		}
		oldu, newu = (*C.uchar)(C.CBytes(o[:])), (*C.uchar)(C.CBytes(n[:]))
		defer C.free(unsafe.Pointer(oldu))
		defer C.free(unsafe.Pointer(newu))
	}
	_, err = runBounded(ctx, fmt.Sprintf("restore pid %d", pid), func() (struct{}, error) {
		c.callsMu.Lock()
		defer c.callsMu.Unlock()
		if err := ckErr("cuCheckpointProcessRestore", pid, C.lzck_restore(C.int(pid), oldu, newu)); err != nil {
			return struct{}{}, err
		}
		return struct{}{}, ckErr("cuCheckpointProcessUnlock", pid, C.lzck_unlock(C.int(pid)))
	})
	return err
}

func (c *cudaCheckpointer) State(pid int) (ProcState, error) {
	if _, err := c.Caps(); err != nil {
		return ProcUnknown, err
	}
	var st C.int
	if err := ckErr("cuCheckpointProcessGetState", pid, C.lzck_state(C.int(pid), &st)); err != nil {
		return ProcUnknown, err
	}
	switch int(st) {
	case 0:
		return ProcRunning, nil
	case 1:
		return ProcLocked, nil
	case 2:
		return ProcCheckpointed, nil
	case 3:
		return ProcFailed, nil
	case 4:
		return ProcCheckpointing, nil
	case 5:
		return ProcRestoring, nil
	}
	return ProcUnknown, nil
}
