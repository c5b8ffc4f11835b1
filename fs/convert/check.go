package convert

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// CheckPush checks, before any conversion, that dst's registry lets these
// credentials push to its repository: it starts a blob upload (as
// go-containerregistry's remote.CheckPushPermission does, but under ctx)
// and cancels it. A nil keychain means authn.DefaultKeychain. The error is
// the registry's (a *transport.Error for a refusal), naming dst.
func CheckPush(ctx context.Context, dst string, insecure bool, kc authn.Keychain) error {
	ref, err := ParseReference(dst, insecure)
	if err != nil {
		return err
	}
	if kc == nil {
		kc = authn.DefaultKeychain
	}
	repo := ref.Context()
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil {
		return fmt.Errorf("push to %s: credentials: %w", repo, err)
	}
	rt, err := transport.NewWithContext(ctx, repo.Registry, auth, transport.NewUserAgent(remote.DefaultTransport, "lazyfs-convert"),
		[]string{repo.Scope(transport.PushScope)})
	if err != nil {
		return fmt.Errorf("push to %s: %w", repo, err)
	}
	u := url.URL{Scheme: repo.Scheme(), Host: repo.RegistryStr(), Path: fmt.Sprintf("/v2/%s/blobs/uploads/", repo.RepositoryStr())}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: rt}).Do(req)
	if err != nil {
		return fmt.Errorf("push to %s: %w", repo, err)
	}
	defer resp.Body.Close()
	if err := transport.CheckError(resp, http.StatusAccepted); err != nil {
		return fmt.Errorf("push to %s: %w", repo, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	if loc := resp.Header.Get("Location"); loc != "" {
		// Free what the registry reserved for the upload; best effort.
		if l, err := u.Parse(loc); err == nil {
			if del, err := http.NewRequestWithContext(ctx, http.MethodDelete, l.String(), nil); err == nil {
				if r, err := (&http.Client{Transport: rt}).Do(del); err == nil {
					r.Body.Close()
				}
			}
		}
	}
	return nil
}
