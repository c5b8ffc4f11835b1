package remote

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/registry"
)

// hosts.toml TLS settings: a private CA and a client certificate (mutual TLS).
func TestHostsTLS(t *testing.T) {
	l := allTypesLayer(t)
	h := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	plain := httptest.NewServer(h)
	defer plain.Close()
	push(t, strings.TrimPrefix(plain.URL, "http://"), "lazy/img:v1", l)

	dir := t.TempDir()
	clientCert, clientKey, clientPool := makeClientCert(t, dir)
	srv := httptest.NewUnstartedServer(h)
	srv.TLS = &tls.Config{ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientPool}
	srv.StartTLS()
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "https://")
	caFile := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644); err != nil {
		t.Fatal(err)
	}
	ref := host + "/lazy/img:v1"
	for _, tc := range []struct {
		name, config string
		ok           bool
	}{
		{"ca and client certificate", fmt.Sprintf("server = %q\nca = %q\nclient = [[%q, %q]]\n", srv.URL, caFile, clientCert, clientKey), true},
		{"no client certificate", fmt.Sprintf("server = %q\nca = %q\n", srv.URL, caFile), false},
		{"unknown CA", fmt.Sprintf("server = %q\nclient = [[%q, %q]]\n", srv.URL, clientCert, clientKey), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hd := t.TempDir()
			writeHosts(t, hd, host, tc.config)
			f := newFetcher(t, WithHostsDir(hd), WithRetry(2, time.Millisecond, time.Second))
			img, err := f.Resolve(context.Background(), ref, nil)
			if !tc.ok {
				if err == nil {
					t.Fatal("resolved without the right TLS settings")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fetchAll(context.Background(), f.LayerBlob(img, 0), l.res.TOC.Chunks); err != nil {
				t.Fatal(err)
			}
		})
	}
	// Bad files are configuration errors.
	hd := t.TempDir()
	writeHosts(t, hd, host, fmt.Sprintf("server = %q\nclient = [[%q, %q]]\n", srv.URL, caFile, caFile))
	_, err := newFetcher(t, WithHostsDir(hd)).Resolve(context.Background(), ref, nil)
	if !errors.Is(err, ErrBadHostsConfig) {
		t.Errorf("bad client key: %v, want ErrBadHostsConfig", err)
	}
}

// makeClientCert writes a self-signed client certificate and key, and
// returns their paths and a pool trusting the certificate.
func makeClientCert(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "lazyfs-test-client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "client.cert"), filepath.Join(dir, "client.key")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kd}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}
