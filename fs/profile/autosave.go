package profile

import (
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
)

// Default autosave timing (AutosaveOptions).
const (
	// DefaultAutosaveIdle is how long a recorder must have recorded nothing
	// new, after recording something, before it is saved: a start-up is
	// over.
	DefaultAutosaveIdle = 5 * time.Second
	// DefaultAutosaveInterval is the most time between saves while reads
	// keep adding to the profile.
	DefaultAutosaveInterval = 30 * time.Second
)

// AutosaveOptions time Autosave. Zero values take the defaults above; Off
// turns autosaving off.
type AutosaveOptions struct {
	Idle     time.Duration
	Interval time.Duration
	Off      bool
}

// Autosave saves rec's profile as image's in s while rec records, so that
// a process killed before its mounts are unmounted (SIGKILL, OOM, power
// loss) has still stored what it learned: whenever rec recorded new chunks
// and then none for o.Idle, and at least every o.Interval while it keeps
// recording. Saves are Store.Save's (atomic); errors go to onErr (may be
// nil). stop ends it and waits for a save in progress; it does not save
// (the owner's final save on unmount does).
func Autosave(s *Store, image digest.Digest, rec *Recorder, o AutosaveOptions, onErr func(error)) (stop func()) {
	if o.Off || s == nil || rec == nil {
		return func() {}
	}
	if o.Idle <= 0 {
		o.Idle = DefaultAutosaveIdle
	}
	if o.Interval <= 0 {
		o.Interval = DefaultAutosaveInterval
	}
	tick := max(min(o.Idle, o.Interval)/4, 10*time.Millisecond)
	quit := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(tick)
		defer t.Stop()
		var saved uint64
		savedAt := time.Now()
		for {
			select {
			case <-quit:
				return
			case <-t.C:
			}
			n, last := rec.activity()
			if n == saved {
				continue
			}
			now := time.Now()
			if now.Sub(last) < o.Idle && now.Sub(savedAt) < o.Interval {
				continue
			}
			if err := s.Save(image, rec.Profile()); err != nil && onErr != nil {
				onErr(err)
			}
			saved, savedAt = n, now
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			close(quit)
			<-done
		})
	}
}
