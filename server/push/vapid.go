package push

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// LoadOrCreateVAPIDKey reads the VAPID key, an ECDSA P-256 private key in
// a PEM file (PKCS #8 "PRIVATE KEY", or SEC 1 "EC PRIVATE KEY" as
// `openssl ecparam -name prime256v1 -genkey` writes it). When the file
// does not exist and create is true, it generates a key and writes it
// there (PKCS #8, mode 0600). Every instance must use the same key: the
// browsers' subscriptions are bound to its public half.
func LoadOrCreateVAPIDKey(path string, create bool) (*ecdsa.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		return createVAPIDKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	k, err := ParseVAPIDKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ParseVAPIDKey parses a PEM-encoded ECDSA P-256 private key (PKCS #8 or
// SEC 1).
func ParseVAPIDKey(data []byte) (*ecdsa.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil {
		return nil, errors.New("vapid key: want a PEM \"PRIVATE KEY\" or \"EC PRIVATE KEY\" block")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("vapid key: want a PEM \"PRIVATE KEY\" or \"EC PRIVATE KEY\" block, got %q", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	k, ok := key.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("vapid key: want an ECDSA P-256 key, got %T", key)
	}
	return k, nil
}

func createVAPIDKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateVAPIDKey(path, false) // another process won the race
	}
	if err != nil {
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	_, err = f.Write(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("vapid key: %w", err)
	}
	return key, nil
}

// vapidKeys returns the key's public half, uncompressed, and its private
// scalar, both base64url without padding: the applicationServerKey
// browsers subscribe with, and the forms webpush-go signs with.
func vapidKeys(k *ecdsa.PrivateKey) (public, private string, err error) {
	ek, err := k.ECDH()
	if err != nil {
		return "", "", fmt.Errorf("vapid key: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(ek.PublicKey().Bytes()),
		base64.RawURLEncoding.EncodeToString(ek.Bytes()), nil
}

// validP256 reports whether b is an uncompressed P-256 public key.
func validP256(b []byte) bool {
	_, err := ecdh.P256().NewPublicKey(b)
	return err == nil && len(b) == 65
}
