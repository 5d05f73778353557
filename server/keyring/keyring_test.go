package keyring_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/parley-chat/parley/server/keyring"
)

func newKey(t *testing.T) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestRing(t *testing.T) {
	signing, retired := newKey(t), newKey(t)
	r, err := keyring.New(signing, retired, signing, retired)
	if err != nil {
		t.Fatal(err)
	}
	keys := r.Keys()
	if len(keys) != 2 {
		t.Fatalf("a ring of a signing and a retired key listed twice holds %d keys, want 2", len(keys))
	}
	if !r.Signing().Private.Equal(signing) || !keys[0].Private.Equal(signing) || !keys[1].Private.Equal(retired) {
		t.Errorf("keys in the wrong order: want the signing key first")
	}
	for _, k := range keys {
		if len(k.ID) != 8 || k.ID != keyring.ID(k.Public()) {
			t.Errorf("key ID %q: want 8 characters derived from the public key", k.ID)
		}
		got, ok := r.Lookup(k.ID)
		if !ok || !got.Private.Equal(k.Private) {
			t.Errorf("Lookup(%q) = %v, %v", k.ID, got.ID, ok)
		}
	}
	if keys[0].ID == keys[1].ID {
		t.Errorf("two keys share the ID %q", keys[0].ID)
	}
	if _, ok := r.Lookup("AAAAAAAA"); ok {
		t.Error("Lookup of an unknown ID succeeded")
	}
	if _, err := keyring.New(ed25519.PrivateKey("short")); err == nil {
		t.Error("New accepted a malformed key")
	}
}

func TestMACs(t *testing.T) {
	signing, retired := newKey(t), newKey(t)
	r, _ := keyring.New(signing, retired)
	old, _ := keyring.New(retired)
	data := []byte("payload")

	m, err := r.MACs("purpose")
	if err != nil {
		t.Fatal(err)
	}
	id, mac := m.Sign(data)
	if id != r.Signing().ID {
		t.Errorf("Sign used key %q, want the signing key %q", id, r.Signing().ID)
	}
	oldMACs, _ := old.MACs("purpose")
	oldID, oldMAC := oldMACs.Sign(data)
	legacy, legacyOld := legacyMAC(t, signing, "purpose", data), legacyMAC(t, retired, "purpose", data)
	other, _ := r.MACs("another purpose")
	_, otherMAC := other.Sign(data)
	if bytes.Equal(mac, otherMAC) {
		t.Error("two labels derive the same key")
	}
	for _, c := range []struct {
		name string
		id   string
		data []byte
		mac  []byte
		want bool
	}{
		{"signing key", id, data, mac, true},
		{"retired key", oldID, data, oldMAC, true},
		{"no key named (an older token), signing key", "", data, legacy, true},
		{"no key named (an older token), retired key", "", data, legacyOld, true},
		{"a new MAC with its key dropped", "", data, mac, false},
		{"an older MAC given a key", id, data, legacy, false},
		{"the other key named", oldID, data, mac, false},
		{"unknown key", "AAAAAAAA", data, mac, false},
		{"other data", id, []byte("payloae"), mac, false},
		{"another label's key", id, data, otherMAC, false},
		{"no key named, another label's key", "", data, otherMAC, false},
		{"empty MAC", id, data, nil, false},
	} {
		if got := m.Verify(c.id, c.data, c.mac); got != c.want {
			t.Errorf("%s: Verify = %v, want %v", c.name, got, c.want)
		}
	}
}

// legacyMAC is a MAC as tokens carried them before they named their key:
// over the data alone, with the key derived for the purpose.
func legacyMAC(t *testing.T, key ed25519.PrivateKey, label string, data []byte) []byte {
	t.Helper()
	k, err := hkdf.Key(sha256.New, key.Seed(), nil, label, 32)
	if err != nil {
		t.Fatal(err)
	}
	h := hmac.New(sha256.New, k)
	h.Write(data)
	return h.Sum(nil)
}

func TestTokenChars(t *testing.T) {
	for s, want := range map[string]bool{
		"": true, "abcXYZ019-_.": true, "a\nb": false, "a\rb": false, "a b": false, "a=": false, "a+b/": false, "é": false,
	} {
		if got := keyring.TokenChars(s); got != want {
			t.Errorf("TokenChars(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestSplitToken(t *testing.T) {
	for _, c := range []struct {
		s      string
		id     string
		parts  string
		wantOK bool
	}{
		{"a.b.KID.c", "KID", "a b c", true},
		{"a.b.c", "", "a b c", true}, // from before tokens named their key
		{"a.b..c", "", "", false},
		{"a.b", "", "", false},
		{"a.b.K.c.d", "", "", false},
		{"a.b.K\n.c", "", "", false},
	} {
		id, parts, ok := keyring.SplitToken(c.s, 3, 2)
		if ok != c.wantOK || id != c.id || strings.Join(parts, " ") != c.parts {
			t.Errorf("SplitToken(%q) = %q, %q, %v; want %q, %q, %v", c.s, id, parts, ok, c.id, c.parts, c.wantOK)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	signingFile, retiredFile := filepath.Join(dir, "a", "signing.pem"), filepath.Join(dir, "retired.pem")
	if _, err := keyring.Load(signingFile, false); err == nil {
		t.Fatal("Load of a missing file without create succeeded")
	}
	retired := newKey(t)
	pem, err := keyring.Marshal(retired)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(retiredFile, pem, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := keyring.Load(signingFile, true, retiredFile)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if fi, err := os.Stat(signingFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("created key file: %v, mode %v; want 0600", err, fi.Mode())
	}
	again, err := keyring.Load(signingFile, true, retiredFile)
	if err != nil {
		t.Fatal(err)
	}
	if r.Signing().ID != again.Signing().ID {
		t.Error("a second Load created another signing key")
	}
	if k := r.Keys(); len(k) != 2 || !k[1].Private.Equal(retired) {
		t.Errorf("the retired key is not in the ring")
	}
	if err := os.WriteFile(retiredFile, []byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := keyring.Load(signingFile, false, retiredFile); err == nil {
		t.Error("Load accepted a public key as a retired signing key")
	}
}

// FuzzParseKey feeds arbitrary bytes to the key parser: it must never
// panic, and whatever it accepts is a usable Ed25519 key that marshals
// back to a form it parses to the same key.
func FuzzParseKey(f *testing.F) {
	_, k, _ := ed25519.GenerateKey(rand.Reader)
	good, _ := keyring.Marshal(k)
	f.Add(good)
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"))
	f.Add([]byte("-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		key, err := keyring.ParseKey(data)
		if err != nil {
			return
		}
		if len(key) != ed25519.PrivateKeySize {
			t.Fatalf("parsed a key of %d bytes", len(key))
		}
		again, err := keyring.Marshal(key)
		if err != nil {
			t.Fatalf("Marshal of a parsed key: %v", err)
		}
		back, err := keyring.ParseKey(again)
		if err != nil || !back.Equal(key) {
			t.Fatalf("round trip: %v", err)
		}
		msg := []byte("m")
		if !ed25519.Verify(key.Public().(ed25519.PublicKey), msg, ed25519.Sign(key, msg)) {
			t.Fatal("the parsed key's signature does not verify with its public half")
		}
	})
}
