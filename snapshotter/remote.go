package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/storage"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/errdefs"
	"github.com/moby/sys/mountinfo"
	"golang.org/x/sync/errgroup"
)

// restoreConcurrency bounds how many remote snapshots New mounts at once.
const restoreConcurrency = 4

// prepareRemote tries to serve the active snapshot key (directory id) as a
// lazy mount and commit it as target. It reports whether it did; when it did
// not, it has logged and counted why, and the snapshot is left active and
// empty for containerd to unpack into.
func (s *Snapshotter) prepareRemote(ctx context.Context, key, target, id string, parents []string, labels map[string]string, opts []snapshots.Opt) bool {
	if s.fs == nil {
		s.fallback(key, labels, ReasonNoFileSystem, errors.New("no lazy filesystem configured"))
		return false
	}
	refs := []string{labels[LabelImageRef]}
	if labels[LabelImageRef] == "" || labels[LabelLayerDigest] == "" {
		missing := fmt.Errorf("labels %s and %s missing (pull with `lazyfs pull`, or CRI with disable_snapshot_annotations = false)", LabelImageRef, LabelLayerDigest)
		if s.locator == nil || target == "" {
			s.fallback(key, labels, ReasonNoLabels, missing)
			return false
		}
		lctx, cancel := context.WithTimeout(ctx, s.mountTimeout)
		if _, ok := namespaces.Namespace(lctx); !ok {
			// containerd's metadata store names the backend's snapshots
			// NAMESPACE/ID/KEY.
			if ns, _, ok := strings.Cut(key, "/"); ok && ns != "" {
				lctx = namespaces.WithNamespace(lctx, ns)
			}
		}
		ref, layer, err := s.locator.Locate(lctx, target)
		if err != nil {
			cancel()
			reason := ReasonNoLabels
			var r Reasoner
			if errors.As(err, &r) && validReason(r.FallbackReason()) {
				reason = r.FallbackReason() // located, and not lazy (a plain image, say)
			}
			s.fallback(key, labels, reason, fmt.Errorf("%w; from containerd's content store: %w", missing, err))
			return false
		}
		refs = s.alternates(lctx, ref)
		cancel()
		labels = maps.Clone(labels)
		labels[LabelImageRef], labels[LabelLayerDigest] = ref, layer
		s.m.located.Inc()
		s.log.Debug("layer without labels located", "snapshot", target, "image", ref, "layer", layer, "candidates", refs)
	}
	start := time.Now()
	mp := s.upperPath(id)
	mctx, cancel := context.WithTimeoutCause(ctx, s.mountTimeout, errDeadline)
	var errs []error
	for i, ref := range refs {
		l := labels
		if ref != labels[LabelImageRef] {
			l = maps.Clone(labels)
			l[LabelImageRef] = ref
		}
		gctx, gcancel := guessContext(mctx, len(refs)-i)
		err := s.fs.Mount(gctx, mp, s.withLowers(l, parents))
		unanswered := errors.Is(context.Cause(gctx), errGuessDeadline)
		gcancel()
		if err != nil && errors.Is(context.Cause(mctx), errDeadline) {
			err = fmt.Errorf("%w: %w", errDeadline, err)
		}
		if err == nil {
			if len(refs) > 1 {
				s.learnHost(labels[LabelImageRef], ref)
			}
			labels = l
			errs = nil
			break
		}
		// A failed Mount may still have left something behind.
		if uerr := s.unmount(ctx, mp); uerr != nil {
			s.log.Error("cannot unmount a failed lazy mount", "mountpoint", mp, "err", uerr)
		}
		if len(refs) > 1 {
			err = fmt.Errorf("as %s: %w", ref, err)
		}
		errs = append(errs, err)
		if unanswered && mctx.Err() == nil {
			continue // a host that drops packets: the next guess gets the time left
		}
		if r := reasonOf(err); mctx.Err() != nil || (r != ReasonMountFailed && r != ReasonRegistryNotFound) {
			break // a registry answered there, or time is up: the next guess would not do better
		}
	}
	cancel()
	if len(errs) > 0 {
		// The reason is the last attempt's; the error names every one.
		s.fallback(key, labels, reasonOf(errs[len(errs)-1]), errors.Join(errs...))
		return false
	}
	committed := maps.Clone(labels)
	committed[LabelRemote] = "true"
	err := s.ms.WithTransaction(ctx, true, func(ctx context.Context) error {
		_, err := storage.CommitActive(ctx, key, target, snapshots.Usage{}, append(opts, snapshots.WithLabels(committed))...)
		return err
	})
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		// Another Prepare of the same layer committed target first: drop
		// this copy; containerd finds the target either way.
		if uerr := s.unmount(ctx, mp); uerr != nil {
			s.log.Error("cannot unmount a duplicate lazy mount", "mountpoint", mp, "err", uerr)
		}
		if rerr := s.Remove(ctx, key); rerr != nil {
			s.log.Warn("cannot remove a duplicate remote snapshot", "key", key, "err", rerr)
		}
		return true
	}
	if err != nil {
		if uerr := s.unmount(ctx, mp); uerr != nil {
			s.log.Error("cannot unmount after a failed commit", "mountpoint", mp, "err", uerr)
		}
		s.fallback(key, labels, ReasonCommitFailed, fmt.Errorf("commit remote snapshot %s: %w", target, err))
		return false
	}
	d := time.Since(start)
	s.m.remote.Inc()
	s.m.prepare.Observe(d.Seconds())
	s.log.Info("layer mounted lazily", "image", labels[LabelImageRef], "layer", labels[LabelLayerDigest], "snapshot", target, "took", d)
	return true
}

// errGuessDeadline ends one guess of several (guessContext).
var errGuessDeadline = errors.New("no answer within this guess's share of the mount timeout")

// minGuessTime is the least a guess of several gets (guessContext), unless
// less than twice that is left.
const minGuessTime = 5 * time.Second

// guessContext bounds one of the references tried for a located layer,
// the first of left: each but the last gets an equal share of the time
// left (at least minGuessTime, or half of what is left), so that a guess at
// a host that drops packets, which only the dial timeout would end, leaves
// time for the next. The last gets what is left.
func guessContext(ctx context.Context, left int) (context.Context, context.CancelFunc) {
	dl, ok := ctx.Deadline()
	if left <= 1 || !ok {
		return ctx, func() {}
	}
	rem := time.Until(dl)
	share := max(rem/time.Duration(left), min(minGuessTime, rem/2))
	return context.WithTimeoutCause(ctx, share, errGuessDeadline)
}

// alternates returns the references to try for a located ref: the
// locator's alternates (Alternator), the host that served the last located
// layer of the same host first.
func (s *Snapshotter) alternates(ctx context.Context, ref string) []string {
	a, ok := s.locator.(Alternator)
	if !ok {
		return []string{ref}
	}
	refs := a.Alternates(ctx, ref)
	if len(refs) == 0 {
		return []string{ref}
	}
	host, rest, _ := strings.Cut(ref, "/")
	s.hostsMu.Lock()
	h, ok := s.hosts[host]
	s.hostsMu.Unlock()
	if ok {
		if i := slices.Index(refs, h+"/"+rest); i > 0 {
			refs = append([]string{refs[i]}, slices.Delete(slices.Clone(refs), i, i+1)...)
		}
	}
	return refs
}

// maxLearnedHosts bounds the hosts learnHost remembers.
const maxLearnedHosts = 64

// learnHost remembers that located reference ref was served as served.
func (s *Snapshotter) learnHost(ref, served string) {
	host, _, _ := strings.Cut(ref, "/")
	h, _, _ := strings.Cut(served, "/")
	s.hostsMu.Lock()
	defer s.hostsMu.Unlock()
	if _, ok := s.hosts[host]; !ok && len(s.hosts) >= maxLearnedHosts {
		clear(s.hosts)
	}
	s.hosts[host] = h
}

func (s *Snapshotter) fallback(key string, labels map[string]string, reason string, err error) {
	s.m.fallback.WithLabelValues(reason).Inc()
	s.log.Warn("layer not mounted lazily; containerd unpacks it",
		"reason", reason, "image", labels[LabelImageRef], "layer", labels[LabelLayerDigest], "key", key, "err", err)
}

type remoteSnapshot struct {
	name    string
	id      string
	labels  map[string]string
	parents []string // ids of the snapshots below, the nearest first
}

// ensureParents checks the lazy mounts among the snapshot chain that starts
// at parent and mounts again any that stopped serving (a daemon restart, a
// crashed mount). A parent that cannot be served is an error naming it:
// never a container over an empty lower directory.
func (s *Snapshotter) ensureParents(ctx context.Context, parent string) error {
	if parent == "" || s.fs == nil {
		return nil
	}
	var (
		remotes []remoteSnapshot
		ids     []string // the chain's, the nearest first
	)
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		for name := parent; name != ""; {
			id, info, _, err := storage.GetInfo(ctx, name)
			if err != nil {
				return fmt.Errorf("parent snapshot %s: %w", name, err)
			}
			if info.Labels[LabelRemote] != "" {
				remotes = append(remotes, remoteSnapshot{name: name, id: id, labels: info.Labels})
			}
			ids = append(ids, id)
			name = info.Parent
		}
		return nil
	}); err != nil {
		return err
	}
	// The farthest first: a mount reads the attributes of the directories
	// its layer leaves out from the mounts below it (LabelLowerDirs).
	for i := len(remotes) - 1; i >= 0; i-- {
		r := remotes[i]
		r.parents = ids[slices.Index(ids, r.id)+1:]
		if err := s.check(ctx, r); err == nil {
			continue
		}
		if err := s.restore(ctx, r); err != nil {
			return fmt.Errorf("remote snapshot %s (layer %s): %w", r.name, r.labels[LabelLayerDigest], err)
		}
	}
	return nil
}

func (s *Snapshotter) check(ctx context.Context, r remoteSnapshot) error {
	cctx, cancel := context.WithTimeout(ctx, s.mountTimeout)
	defer cancel()
	return s.fs.Check(cctx, s.upperPath(r.id), r.labels)
}

// restore mounts a remote snapshot again, after detaching whatever dead mount
// is left at its directory.
func (s *Snapshotter) restore(ctx context.Context, r remoteSnapshot) error {
	_, err, _ := s.remounts.Do(r.id, func() (any, error) {
		if s.check(ctx, r) == nil { // restored by an earlier caller
			return nil, nil
		}
		return nil, s.remount(ctx, r)
	})
	return err
}

func (s *Snapshotter) remount(ctx context.Context, r remoteSnapshot) error {
	mp := s.upperPath(r.id)
	if err := s.unmount(ctx, mp); err != nil {
		s.m.restoreKO.Inc()
		return err
	}
	mctx, cancel := context.WithTimeoutCause(ctx, s.mountTimeout, errDeadline)
	defer cancel()
	if err := s.fs.Mount(mctx, mp, s.withLowers(r.labels, r.parents)); err != nil {
		s.m.restoreKO.Inc()
		s.log.Error("cannot restore lazy mount", "snapshot", r.name, "image", r.labels[LabelImageRef], "layer", r.labels[LabelLayerDigest], "err", err)
		return fmt.Errorf("restore lazy mount: %w", err)
	}
	s.m.restored.Inc()
	s.log.Info("lazy mount restored", "snapshot", r.name, "image", r.labels[LabelImageRef], "layer", r.labels[LabelLayerDigest])
	return nil
}

// listRemotes returns every committed remote snapshot in the metastore.
func (s *Snapshotter) listRemotes(ctx context.Context) ([]remoteSnapshot, error) {
	var remotes []remoteSnapshot
	if err := s.ms.WithTransaction(ctx, false, func(ctx context.Context) error {
		return storage.WalkInfo(ctx, func(ctx context.Context, info snapshots.Info) error {
			if info.Kind != snapshots.KindCommitted || info.Labels[LabelRemote] == "" {
				return nil
			}
			id, _, _, err := storage.GetInfo(ctx, info.Name)
			if err != nil {
				return err
			}
			r := remoteSnapshot{name: info.Name, id: id, labels: info.Labels}
			for p := info.Parent; p != "" && len(r.parents) < maxChain; {
				pid, pinfo, _, err := storage.GetInfo(ctx, p)
				if err != nil {
					return err
				}
				r.parents = append(r.parents, pid)
				p = pinfo.Parent
			}
			remotes = append(remotes, r)
			return nil
		})
	}); err != nil && !errors.Is(err, errdefs.ErrNotFound) { // a new store has no bucket yet
		return nil, fmt.Errorf("list remote snapshots: %w", err)
	}
	return remotes, nil
}

// maxChain bounds the parents of a snapshot listRemotes follows.
const maxChain = 4096

// restoreAll mounts again every one of remotes that does not serve, a few
// at a time, until ctx ends: by depth, each snapshot after those below it
// (a mount reads the directories its layer leaves out from the mounts
// below, LabelLowerDirs). Failures are logged and counted, not returned:
// the snapshot is retried when a container needs it (ensureParents).
func (s *Snapshotter) restoreAll(ctx context.Context, remotes []remoteSnapshot) {
	remotes = slices.Clone(remotes)
	slices.SortStableFunc(remotes, func(a, b remoteSnapshot) int { return len(a.parents) - len(b.parents) })
	for len(remotes) > 0 && ctx.Err() == nil {
		n := 1
		for n < len(remotes) && len(remotes[n].parents) == len(remotes[0].parents) {
			n++
		}
		var g errgroup.Group
		g.SetLimit(restoreConcurrency)
		for _, r := range remotes[:n] {
			if ctx.Err() != nil {
				break
			}
			g.Go(func() error {
				if s.check(ctx, r) == nil {
					return nil
				}
				_ = s.restore(ctx, r) // logged and counted
				return nil
			})
		}
		g.Wait()
		remotes = remotes[n:]
	}
}

// isMounted reports whether mp is a mount point; a dead FUSE mount
// (ENOTCONN) counts as mounted.
func isMounted(mp string) (bool, error) {
	ok, err := mountinfo.Mounted(mp)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("mountpoint %s: %w", mp, err)
	}
	return ok, nil
}
