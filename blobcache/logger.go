package blobcache

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
)

// badgerLogger adapts badger's Logger to slog, forwarding only warnings and
// errors: badger logs several lines per compaction at info level.
type badgerLogger struct{ l *slog.Logger }

func (b badgerLogger) Errorf(f string, args ...any) { b.log(slog.LevelError, f, args) }

func (b badgerLogger) Warningf(f string, args ...any) { b.log(slog.LevelWarn, f, args) }

func (badgerLogger) Infof(string, ...any) {}

func (badgerLogger) Debugf(string, ...any) {}

func (b badgerLogger) log(level slog.Level, f string, args []any) {
	if !b.l.Enabled(context.Background(), level) {
		return
	}
	b.l.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(f, args...)), "component", "badger")
}
