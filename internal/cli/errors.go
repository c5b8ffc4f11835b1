package cli

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/lazyfs/lazyfs/fs/remote"
)

// Exit statuses of every lazyfs binary.
const (
	ExitError       = 1   // the command failed
	ExitConflict    = 2   // a conflict a script may retry (e.g. GPU claimed)
	ExitUsage       = 64  // bad arguments or flags (sysexits EX_USAGE)
	ExitInterrupted = 130 // SIGINT or SIGTERM stopped the command (128+SIGINT)
)

// exitCoder is an error that chooses its exit status.
type exitCoder interface{ ExitCode() int }

// ExitCode is the status a command that failed with err exits with: the
// error's own (an ExitCode method anywhere in its chain), ExitInterrupted
// when ctx was cancelled by a signal, else ExitError.
func ExitCode(ctx context.Context, err error) int {
	if err == nil {
		return 0
	}
	var ec exitCoder
	if errors.As(err, &ec) {
		return ec.ExitCode()
	}
	if ctx != nil && ctx.Err() != nil {
		return ExitInterrupted
	}
	if unknownCommand(err) {
		return ExitUsage
	}
	return ExitError
}

// unknownCommand matches cobra's error for a subcommand that does not
// exist, which cobra returns before any hook of ours runs.
func unknownCommand(err error) bool { return strings.HasPrefix(err.Error(), "unknown command ") }

// Message is the one line printed for err: "interrupted" when ctx was
// cancelled by a signal (whatever the error says about the cancellation),
// else the error.
func Message(ctx context.Context, err error) string {
	var ec exitCoder
	if ctx != nil && ctx.Err() != nil && !errors.As(err, &ec) {
		return "interrupted"
	}
	if unknownCommand(err) {
		return err.Error() + "; see --help for the commands"
	}
	return err.Error()
}

// UsageError is a bad argument or flag: exit status ExitUsage.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// ExitCode implements the exit status contract.
func (e *UsageError) ExitCode() int { return ExitUsage }

// Usagef returns a UsageError.
func Usagef(format string, args ...any) error {
	return &UsageError{fmt.Errorf(format, args...)}
}

// friendly replaces an error's text with one line for a person, and keeps
// the original in the chain for errors.Is/As.
type friendly struct {
	msg string
	err error
}

func (e *friendly) Error() string { return e.msg }
func (e *friendly) Unwrap() error { return e.err }

// Sentinels of the registry mapping, matched with errors.Is.
var (
	ErrImageNotFound = errors.New("image not found")
	ErrAccessDenied  = errors.New("registry access denied")
)

type joined struct {
	friendly
	sentinel error
}

func (e *joined) Is(target error) bool { return target == e.sentinel }

// RegistryError maps a registry failure about ref to one line that says
// what happened and what to do: a missing repository or tag
// (MANIFEST_UNKNOWN, NAME_UNKNOWN, 404) and refused credentials (401, 403,
// UNAUTHORIZED, DENIED) instead of the registry's raw HTTP body. Other
// errors, and nil, are returned unchanged.
func RegistryError(ref string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	notFound := errors.Is(err, remote.ErrNotFound)
	denied := errors.Is(err, remote.ErrUnauthorized)
	blobGone := false
	if notFound && strings.Contains(err.Error(), "/blobs/") {
		// fs/remote names the URL: a layer or TOC blob, not the manifest.
		notFound, blobGone = false, true
	}
	var te *transport.Error
	if errors.As(err, &te) {
		for _, d := range te.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				notFound = true
			case transport.BlobUnknownErrorCode:
				blobGone = true
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				denied = true
			}
		}
		switch te.StatusCode {
		case http.StatusNotFound:
			notFound = notFound || !blobGone
		case http.StatusUnauthorized, http.StatusForbidden:
			denied = true
		}
	}
	switch {
	case denied:
		return &joined{friendly{fmt.Sprintf("%s: the registry refused access: log in (credentials come from ~/.docker/config.json, e.g. docker login or crane auth login) or check the repository name", ref), err}, ErrAccessDenied}
	case blobGone:
		return &joined{friendly{fmt.Sprintf("%s: a blob of the image is missing from the registry (the image is broken or partly deleted): push it again; %v", ref, err), err}, ErrImageNotFound}
	case notFound:
		return &joined{friendly{fmt.Sprintf("%s: no such image in the registry (repository or tag unknown): check the name and tag", ref), err}, ErrImageNotFound}
	}
	return err
}

// PushError maps a failed push check of dst to one line: the registry
// refused the credentials, or does not take pushes there (405, e.g. a
// read-only mirror), before anything was converted.
func PushError(dst string, err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return err
	}
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusMethodNotAllowed {
		return &friendly{fmt.Sprintf("cannot push to %s: its registry does not accept pushes there (405): pick a registry and repository you can push to; nothing was converted", dst), err}
	}
	if m := RegistryError(dst, err); m != err && errors.Is(m, ErrAccessDenied) {
		return &friendly{fmt.Sprintf("cannot push to %s: the registry refused access: log in (docker login or crane auth login write ~/.docker/config.json) or pick a repository you can push to; nothing was converted", dst), err}
	}
	return fmt.Errorf("cannot push to %s (nothing was converted): %w", dst, err)
}
