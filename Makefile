# lazyfs — build, test and demo targets. Run as root for the FUSE, mount and
# containerd tests (they skip with a reason otherwise).

GO        ?= go
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS   := -s -w -X github.com/lazyfs/lazyfs/internal/version.Version=$(VERSION) -X github.com/lazyfs/lazyfs/internal/version.Commit=$(COMMIT)
BINARIES  := lazyfs lazyfs-snapshotter lazyfs-prewarm
# lazyfs links no cgo (its GPU client is the pure-Go package prewarm/api), so
# it is built static; go-nvml's cgo code in lazyfs-prewarm calls NVML
# functions its headers mark deprecated: keep Go's default -O2 -g and silence
# only those warnings.
PREWARM_CGO_CFLAGS := -O2 -g -Wno-deprecated-declarations
export PATH := /usr/local/go/bin:$(PATH)
STARGZD   := $(CURDIR)/.cache/bin/containerd-stargz-grpc

.PHONY: all build test test-containerd2 test-short race fuzz bench deps demo vet lint fmt clean install

all: build

## build: compile the binaries into ./bin
build:
	@mkdir -p bin
	@for b in $(BINARIES); do \
		cgo="$${CGO_ENABLED:-}"; cflags="$${CGO_CFLAGS:-}"; case $$b in \
		lazyfs) cgo=0;; \
		lazyfs-prewarm) cflags="$(PREWARM_CGO_CFLAGS) $$cflags";; \
		esac; \
		if [ -d cmd/$$b ]; then CGO_ENABLED="$$cgo" CGO_CFLAGS="$$cflags" $(GO) build -trimpath -ldflags "$(LDFLAGS)" -o bin/$$b ./cmd/$$b || exit 1; fi; \
	done
	@ls bin

## deps: install what the build and tests need on Debian 12 (root; quick when present)
deps:
	./.ci/deps.sh

## test: deps, vet and the whole test suite (what CI runs; the README's test command)
test: deps vet $(STARGZD)
	PATH=$(dir $(STARGZD)):$$PATH $(GO) test -count=1 -timeout 25m ./...
	$(GO) test -count=1 -race -short -timeout 15m ./fs/...

## stargz-snapshotter's containerd-stargz-grpc, for lazyfs bench's stargz mode
## and its test: built from stargz-snapshotter's library module into .cache
## (bench/testdata/stargzd: the upstream command's module is not fetchable here)
$(STARGZD): bench/testdata/stargzd/main.go bench/testdata/stargzd/go.mod bench/testdata/stargzd/go.sum
	@mkdir -p $(dir $@)
	cd bench/testdata/stargzd && $(GO) build -o $@ .

## test-containerd2: the containerd end-to-end tests again, against containerd 2.x
## (containerd, ctr and its runc shim built from containerd's module into .cache)
CONTAINERD2 ?= v2.4.2
CONTAINERD2_BIN = $(CURDIR)/.cache/containerd2/$(CONTAINERD2)
test-containerd2: deps
	@test -x $(CONTAINERD2_BIN)/containerd-shim-runc-v2 || GOBIN=$(CONTAINERD2_BIN) $(GO) install \
		github.com/containerd/containerd/v2/cmd/containerd@$(CONTAINERD2) \
		github.com/containerd/containerd/v2/cmd/ctr@$(CONTAINERD2) \
		github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$(CONTAINERD2)
	PATH=$(CONTAINERD2_BIN):$$PATH $(GO) test -count=1 -timeout 10m ./snapshotter/e2e/ ./snapshotter/pull/

## test-short: the suite without the slow cases
test-short:
	$(GO) test -count=1 -short ./...

## race: the suite under the race detector (slow)
race:
	$(GO) test -count=1 -race -short ./...

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

## lint: staticcheck (installed from the Go module proxy into .cache/bin)
STATICCHECK := $(CURDIR)/.cache/bin/staticcheck
lint:
	@test -x $(STATICCHECK) || GOBIN=$(CURDIR)/.cache/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@v0.8.2
	$(STATICCHECK) ./...

## fuzz: run every fuzz target for FUZZTIME each
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list 'Fuzz.*' $$pkg 2>/dev/null | grep ^Fuzz); do \
			echo "== $$pkg $$f"; $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

## bench: the package benchmarks
bench:
	$(GO) test -run XXX -bench . -benchmem ./...

## demo: set up everything and run the cold-start demo (root, Debian 12)
demo: build
	./hack/demo.sh

## install: binaries, systemd units and sample configs (DESTDIR, PREFIX, SYSCONFDIR, SYSTEMDDIR);
## existing configs in SYSCONFDIR/lazyfs are never overwritten
PREFIX     ?= /usr/local
SYSCONFDIR ?= /etc
SYSTEMDDIR ?= $(PREFIX)/lib/systemd/system
install: build
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(SYSTEMDDIR) $(DESTDIR)$(PREFIX)/share/lazyfs
	install -m 0755 $(addprefix bin/,$(BINARIES)) $(DESTDIR)$(PREFIX)/bin/
	for u in lazyfs-snapshotter lazyfs-holder lazyfs-prewarm; do \
		sed -e 's|/usr/local/bin/|$(PREFIX)/bin/|g' -e 's|/etc/lazyfs/|$(SYSCONFDIR)/lazyfs/|g' docs/examples/$$u.service > $(DESTDIR)$(SYSTEMDDIR)/$$u.service || exit 1; \
		chmod 0644 $(DESTDIR)$(SYSTEMDDIR)/$$u.service; \
	done
	install -m 0644 docs/examples/config.toml docs/examples/prewarm.toml docs/examples/containerd-config.toml $(DESTDIR)$(PREFIX)/share/lazyfs/
	install -d -m 0755 $(DESTDIR)$(SYSCONFDIR)/lazyfs
	for c in config.toml prewarm.toml; do \
		test -e $(DESTDIR)$(SYSCONFDIR)/lazyfs/$$c || install -m 0644 docs/examples/$$c $(DESTDIR)$(SYSCONFDIR)/lazyfs/$$c || exit 1; \
	done
	@echo "installed; add $(PREFIX)/share/lazyfs/containerd-config.toml to /etc/containerd/config.toml (docs/containerd.md)"

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf bin
