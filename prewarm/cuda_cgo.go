//go:build linux && cgo

package prewarm

/*
#cgo LDFLAGS: -ldl
#include <dlfcn.h>
#include <stdlib.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef unsigned long long CUdeviceptr;
typedef struct { unsigned char bytes[16]; } CUuuid;

static void *lz_lib;
static CUresult (*p_cuInit)(unsigned int);
static CUresult (*p_cuDeviceGet)(CUdevice *, int);
static CUresult (*p_cuDeviceGetUuid)(CUuuid *, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRetain)(CUcontext *, CUdevice);
static CUresult (*p_cuDevicePrimaryCtxRelease)(CUdevice);
static CUresult (*p_cuCtxSetCurrent)(CUcontext);
static CUresult (*p_cuMemAlloc)(CUdeviceptr *, size_t);
static CUresult (*p_cuMemFree)(CUdeviceptr);
static CUresult (*p_cuMemsetD8)(CUdeviceptr, unsigned char, size_t);
static CUresult (*p_cuCtxSynchronize)(void);
static CUresult (*p_cuGetErrorName)(CUresult, const char **);

// lz_load dlopens libcuda.so.1 and resolves the functions; it returns NULL
// or the name of what failed.
static const char *lz_load(void) {
	if (lz_lib) return NULL;
	void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
	if (!h) return "dlopen libcuda.so.1";
#define SYM(var, name) if (!(*(void **)(&var) = dlsym(h, name))) return name;
	SYM(p_cuInit, "cuInit");
	SYM(p_cuDeviceGet, "cuDeviceGet");
	if (!(*(void **)(&p_cuDeviceGetUuid) = dlsym(h, "cuDeviceGetUuid_v2")))
		SYM(p_cuDeviceGetUuid, "cuDeviceGetUuid");
	SYM(p_cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
	SYM(p_cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
	SYM(p_cuCtxSetCurrent, "cuCtxSetCurrent");
	SYM(p_cuMemAlloc, "cuMemAlloc_v2");
	SYM(p_cuMemFree, "cuMemFree_v2");
	SYM(p_cuMemsetD8, "cuMemsetD8_v2");
	SYM(p_cuCtxSynchronize, "cuCtxSynchronize");
	SYM(p_cuGetErrorName, "cuGetErrorName");
#undef SYM
	lz_lib = h;
	return NULL;
}

static CUresult lz_init(void) { return p_cuInit(0); }
static CUresult lz_device(CUdevice *d) { return p_cuDeviceGet(d, 0); }
static CUresult lz_uuid(CUdevice d, unsigned char *out) {
	CUuuid u;
	CUresult r = p_cuDeviceGetUuid(&u, d);
	if (r == 0) for (int i = 0; i < 16; i++) out[i] = u.bytes[i];
	return r;
}
static CUresult lz_retain(CUdevice d, CUcontext *c) { return p_cuDevicePrimaryCtxRetain(c, d); }
static CUresult lz_release(CUdevice d) { return p_cuDevicePrimaryCtxRelease(d); }
static CUresult lz_current(CUcontext c) { return p_cuCtxSetCurrent(c); }
static CUresult lz_alloc(CUdeviceptr *p, size_t n) { return p_cuMemAlloc(p, n); }
static CUresult lz_free(CUdeviceptr p) { return p_cuMemFree(p); }
static CUresult lz_memset(CUdeviceptr p, size_t n) { return p_cuMemsetD8(p, 0x5a, n); }
static CUresult lz_sync(void) { return p_cuCtxSynchronize(); }
static const char *lz_errname(CUresult r) {
	const char *s = NULL;
	if (p_cuGetErrorName == NULL || p_cuGetErrorName(r, &s) != 0 || s == NULL) return "CUDA_ERROR_UNKNOWN";
	return s;
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"sync"
)

// cudaDriver is the libcuda implementation of Driver.
type cudaDriver struct{}

// NewCUDADriver returns the Driver backed by libcuda.so.1 (loaded at Init).
func NewCUDADriver() Driver { return cudaDriver{} }

var loadOnce struct {
	sync.Once
	err error
}

func cuErr(what string, r C.CUresult) error {
	if r == 0 {
		return nil
	}
	return fmt.Errorf("%s: %s (%d)", what, C.GoString(C.lz_errname(r)), int(r))
}

func (cudaDriver) Init() error {
	loadOnce.Do(func() {
		if s := C.lz_load(); s != nil {
			loadOnce.err = fmt.Errorf("cuda: %s: %w", C.GoString(s), ErrNoDriver)
		}
	})
	if loadOnce.err != nil {
		return loadOnce.err
	}
	return cuErr("cuInit", C.lz_init())
}

func (cudaDriver) Retain(allocBytes uint64) (Context, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var dev C.CUdevice
	if err := cuErr("cuDeviceGet", C.lz_device(&dev)); err != nil {
		return nil, err
	}
	var u [16]C.uchar
	if err := cuErr("cuDeviceGetUuid", C.lz_uuid(dev, &u[0])); err != nil {
		return nil, err
	}
	var b [16]byte
	for i := range u {
		b[i] = byte(u[i])
	}
	c := &cudaContext{dev: dev, uuid: formatUUID(b)}
	if err := cuErr("cuDevicePrimaryCtxRetain", C.lz_retain(dev, &c.ctx)); err != nil {
		return nil, err
	}
	if err := cuErr("cuCtxSetCurrent", C.lz_current(c.ctx)); err != nil {
		C.lz_release(dev)
		return nil, err
	}
	if allocBytes > 0 {
		if err := cuErr("cuMemAlloc", C.lz_alloc(&c.ptr, C.size_t(allocBytes))); err != nil {
			C.lz_release(dev)
			return nil, err
		}
	}
	return c, nil
}

type cudaContext struct {
	mu   sync.Mutex
	dev  C.CUdevice
	ctx  C.CUcontext
	ptr  C.CUdeviceptr
	uuid string
}

func (c *cudaContext) UUID() string { return c.uuid }

// Op allocates 1 MiB, sets it, synchronises and frees it. Contexts are per
// OS thread, so it makes the context current on the locked thread first.
func (c *cudaContext) Op() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cuErr("cuCtxSetCurrent", C.lz_current(c.ctx)); err != nil {
		return err
	}
	const n = 1 << 20
	var p C.CUdeviceptr
	if err := cuErr("cuMemAlloc", C.lz_alloc(&p, n)); err != nil {
		return err
	}
	defer C.lz_free(p)
	if err := cuErr("cuMemsetD8", C.lz_memset(p, n)); err != nil {
		return err
	}
	return cuErr("cuCtxSynchronize", C.lz_sync())
}

func (c *cudaContext) Release() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if c.ptr != 0 {
		C.lz_current(c.ctx)
		C.lz_free(c.ptr)
		c.ptr = 0
	}
	return cuErr("cuDevicePrimaryCtxRelease", C.lz_release(c.dev))
}
