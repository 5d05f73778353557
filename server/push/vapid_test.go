package push_test

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"github.com/parley-chat/parley/server/push"
)

func TestLoadOrCreateVAPIDKey(t *testing.T) {
	dir := t.TempDir()
	t.Run("created once, then read", func(t *testing.T) {
		path := filepath.Join(dir, "sub", "vapid.pem")
		k1, err := push.LoadOrCreateVAPIDKey(path, true)
		if err != nil {
			t.Fatal(err)
		}
		fi, err := os.Stat(path)
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("key file: %v, %v; want mode 0600", fi, err)
		}
		k2, err := push.LoadOrCreateVAPIDKey(path, true)
		if err != nil || !k1.Equal(k2) {
			t.Fatalf("second load: %v; same key: %v", err, err == nil && k1.Equal(k2))
		}
	})
	t.Run("openssl's SEC 1 form", func(t *testing.T) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "ec.pem")
		os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), 0o600)
		got, err := push.LoadOrCreateVAPIDKey(path, false)
		if err != nil || !got.Equal(k) {
			t.Fatalf("load: %v; want the key written", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		if _, err := push.LoadOrCreateVAPIDKey(filepath.Join(dir, "missing.pem"), false); err == nil {
			t.Error("a missing file without create: no error")
		}
		_, ek, _ := ed25519.GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKCS8PrivateKey(ek)
		path := filepath.Join(dir, "ed.pem")
		os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		if _, err := push.LoadOrCreateVAPIDKey(path, false); err == nil {
			t.Error("an Ed25519 key: no error")
		}
		p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		der, _ = x509.MarshalPKCS8PrivateKey(p384)
		os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
		if _, err := push.LoadOrCreateVAPIDKey(path, false); err == nil {
			t.Error("a P-384 key: no error")
		}
	})
}
