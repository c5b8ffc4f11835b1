package prewarm

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
)

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

func contains(s, sub string) bool { return strings.Contains(s, sub) }

type recorder struct {
	*httptest.ResponseRecorder
	code int
	body *bytes.Buffer
}

func newRecorder() *recorder {
	r := httptest.NewRecorder()
	return &recorder{ResponseRecorder: r, body: r.Body}
}

func (r *recorder) WriteHeader(c int) { r.code = c; r.ResponseRecorder.WriteHeader(c) }
func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = 200
	}
	return r.ResponseRecorder.Write(b)
}

func mustReq(method, path string) *http.Request { return httptest.NewRequest(method, path, nil) }

func dialUnix(path string) (net.Conn, error) { return net.Dial("unix", path) }

// unixClient returns an HTTP client that dials one unix socket.
func unixClient(socket string) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
}
