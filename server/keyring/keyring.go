// Package keyring holds the server's signing keys: one Ed25519 key that
// signs access tokens (and from which the MAC keys of refresh tokens,
// upload tokens and download URLs are derived), and retired keys that
// still verify what they signed until it expires. Every token names the
// key that made it by its ID, so rotating keys logs nobody out: an
// instance verifies with whichever of its keys the token names.
//
// Tokens issued before key IDs existed name no key; they are tried against
// every key of the ring.
package keyring

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Key is one Ed25519 key of the ring.
type Key struct {
	// ID names the key in the tokens it signs: 8 URL-safe characters
	// derived from its public key, so the same key has the same ID on
	// every instance.
	ID string
	// Private is the key itself.
	Private ed25519.PrivateKey
}

// Public returns the key's public half.
func (k Key) Public() ed25519.PublicKey {
	return k.Private.Public().(ed25519.PublicKey)
}

// ID returns the ID of the key whose public half is pub.
func ID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return base64.RawURLEncoding.EncodeToString(sum[:6])
}

// Ring is a signing key and the retired keys that still verify.
type Ring struct {
	keys []Key // keys[0] signs
	byID map[string]int
}

// New returns a ring that signs with signing and verifies with it and with
// retired. A retired key equal to the signing key, or listed twice, is
// kept once, so a rotation's steps may list a key in both places.
func New(signing ed25519.PrivateKey, retired ...ed25519.PrivateKey) (*Ring, error) {
	r := &Ring{byID: map[string]int{}}
	for _, k := range append([]ed25519.PrivateKey{signing}, retired...) {
		if len(k) != ed25519.PrivateKeySize {
			return nil, errors.New("keyring: not an Ed25519 private key")
		}
		key := Key{Private: k}
		key.ID = ID(key.Public())
		if _, ok := r.byID[key.ID]; ok {
			continue
		}
		r.byID[key.ID] = len(r.keys)
		r.keys = append(r.keys, key)
	}
	return r, nil
}

// Signing returns the key that signs new tokens.
func (r *Ring) Signing() Key { return r.keys[0] }

// Lookup returns the key with the given ID.
func (r *Ring) Lookup(id string) (Key, bool) {
	i, ok := r.byID[id]
	if !ok {
		return Key{}, false
	}
	return r.keys[i], true
}

// Keys returns every key of the ring, the signing key first.
func (r *Ring) Keys() []Key { return append([]Key(nil), r.keys...) }

// MACs derives from each key of the ring an HMAC-SHA256 key for one
// purpose, named by label; different labels give unrelated keys.
func (r *Ring) MACs(label string) (*MACs, error) {
	m := &MACs{byID: r.byID, ids: make([]string, len(r.keys)), keys: make([][]byte, len(r.keys))}
	for i, k := range r.keys {
		mk, err := hkdf.Key(sha256.New, k.Private.Seed(), nil, label, 32)
		if err != nil {
			return nil, fmt.Errorf("keyring: derive %q: %w", label, err)
		}
		m.ids[i], m.keys[i] = k.ID, mk
	}
	return m, nil
}

// MACs signs and verifies messages with HMAC-SHA256 keys derived from a
// ring's keys.
type MACs struct {
	ids  []string
	keys [][]byte
	byID map[string]int
}

// Sign returns the signing key's ID and its MAC of the ID and data: a
// token cannot drop or change the key it names and still verify.
func (m *MACs) Sign(data []byte) (id string, mac []byte) {
	return m.ids[0], sum(m.keys[0], bound(m.ids[0], data))
}

// Verify reports whether mac is the MAC of data under the key named id,
// as Sign makes it. An empty id, from a token made before tokens named
// their key (whose MAC covers data alone), is tried against every key.
func (m *MACs) Verify(id string, data, mac []byte) bool {
	if id == "" {
		for _, k := range m.keys {
			if hmac.Equal(mac, sum(k, data)) {
				return true
			}
		}
		return false
	}
	i, ok := m.byID[id]
	return ok && hmac.Equal(mac, sum(m.keys[i], bound(id, data)))
}

// bound is what a MAC covers: the key's ID (of fixed length) and data.
func bound(id string, data []byte) []byte {
	return append([]byte(id+"."), data...)
}

// SplitToken splits a token made of n "."-separated parts plus, at index
// at, the ID of the key that signed it. It returns the key ID ("" for a
// token from before tokens named their key, which has the n parts alone)
// and the n parts. ok is false when s has characters no token has, another
// number of parts, or an empty key ID.
func SplitToken(s string, n, at int) (id string, parts []string, ok bool) {
	if !TokenChars(s) {
		return "", nil, false
	}
	parts = strings.Split(s, ".")
	switch len(parts) {
	case n + 1:
		id = parts[at]
		if id == "" {
			return "", nil, false
		}
		parts = append(parts[:at], parts[at+1:]...)
	case n:
	default:
		return "", nil, false
	}
	return id, parts, true
}

// TokenChars reports whether s is made only of the characters of the
// tokens the server issues: URL-safe base64 and ".". Go's base64 decoders,
// even strict ones, skip "\r" and "\n", which would give a token a second
// spelling; parsers check this first.
func TokenChars(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '.':
		default:
			return false
		}
	}
	return true
}

func sum(key, data []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write(data)
	return h.Sum(nil)
}

// Load reads the signing key from path and the retired keys from the
// retired paths, each a PEM file holding a PKCS #8 Ed25519 private key.
// When the signing key's file does not exist and create is true, it
// generates a key and writes it there with mode 0600, so that an embedded
// server keeps its sessions valid across restarts.
func Load(path string, create bool, retired ...string) (*Ring, error) {
	signing, err := LoadOrCreateKey(path, create)
	if err != nil {
		return nil, err
	}
	var old []ed25519.PrivateKey
	for _, p := range retired {
		k, err := LoadOrCreateKey(p, false)
		if err != nil {
			return nil, fmt.Errorf("retired key: %w", err)
		}
		old = append(old, k)
	}
	return New(signing, old...)
}

// LoadOrCreateKey reads an Ed25519 private key from a PEM (PKCS #8) file.
// When the file does not exist and create is true, it generates a key and
// writes it there with mode 0600.
func LoadOrCreateKey(path string, create bool) (ed25519.PrivateKey, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && create {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	k, err := ParseKey(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return k, nil
}

// ParseKey parses a PEM-encoded PKCS #8 Ed25519 private key, as
// `openssl genpkey -algorithm ed25519` writes it.
func ParseKey(data []byte) (ed25519.PrivateKey, error) {
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("signing key: want a PEM \"PRIVATE KEY\" block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key: want Ed25519, got %T", k)
	}
	return key, nil
}

// Marshal returns key as a PEM-encoded PKCS #8 block, the form ParseKey
// reads.
func Marshal(key ed25519.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func createKey(path string) (ed25519.PrivateKey, error) {
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	data, err := Marshal(key)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return LoadOrCreateKey(path, false) // another process won the race
	}
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	return key, nil
}
