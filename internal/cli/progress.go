package cli

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/lazyfs/lazyfs/internal/size"
)

// Progress draws one status line on a terminal: phase, bytes done/total,
// percent, and the average rate since Start, the same definition of rate
// that the command's summary prints, so the two agree (a rate over the last
// tick jumps wildly when a burst of buffered bytes lands at once).
// Create it only when the writer is a terminal.
type Progress struct {
	w     io.Writer
	start time.Time
	every time.Duration
	now   func() time.Time

	mu    sync.Mutex
	last  time.Time
	drawn bool
}

// NewProgress starts a progress line on w.
func NewProgress(w io.Writer) *Progress {
	return &Progress{w: w, start: time.Now(), every: 200 * time.Millisecond, now: time.Now}
}

// Update redraws the line (at most every 200ms) with done of total bytes
// (total ≤ 0: unknown) in phase.
func (p *Progress) Update(phase string, done, total int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	if p.drawn && now.Sub(p.last) < p.every && (total <= 0 || done < total) {
		return
	}
	p.last, p.drawn = now, true
	fmt.Fprintf(p.w, "\r\x1b[K%s", Line(phase, done, total, now.Sub(p.start)))
}

// Finish clears the line. A nil Progress does nothing.
func (p *Progress) Finish() {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// Line is the text of a progress line: "converting  12MiB/40MiB  30%  6MiB/s".
// The rate is done/elapsed, shown once a second has passed.
func Line(phase string, done, total int64, elapsed time.Duration) string {
	s := fmt.Sprintf("%-10s  %s", phase, size.Human(done))
	if total > 0 {
		s += fmt.Sprintf("/%s  %3d%%", size.Human(total), done*100/total)
	}
	if elapsed >= time.Second {
		s += fmt.Sprintf("  %s/s", size.Human(int64(float64(done)/elapsed.Seconds())))
	}
	return s
}
