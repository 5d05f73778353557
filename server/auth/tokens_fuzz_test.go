package auth

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/parley-chat/parley/server/keyring"
)

// testTokens returns tokens over a ring of a signing and a retired key,
// with a fixed clock.
func testTokens(tb testing.TB) (*tokens, *keyring.Ring) {
	tb.Helper()
	seed := func(b byte) ed25519.PrivateKey { return ed25519.NewKeyFromSeed(bytesOf(b, ed25519.SeedSize)) }
	ring, err := keyring.New(seed(1), seed(2))
	if err != nil {
		tb.Fatal(err)
	}
	now := time.Unix(1_800_000_000, 0)
	tok, err := newTokens(ring, 10*time.Minute, func() time.Time { return now })
	if err != nil {
		tb.Fatal(err)
	}
	return tok, ring
}

func bytesOf(b byte, n int) []byte { return []byte(strings.Repeat(string(rune(b)), n)) }

// spareBits returns s with a bit flipped in the unused low bits of its
// last base64 character: lenient decoding reads the same bytes.
func spareBits(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[i^1])
}

const testSession = "AAECAwQFBgcICQoLDA0ODw" // 16 bytes, as newSessionID makes them

// legacyRefresh makes a refresh token as they were before they named
// their key: "<user>.<session>.<generation>.<mac>", the MAC over the
// payload alone.
func legacyRefresh(tb testing.TB, ring *keyring.Ring, key int, userID int, sessionID string, gen int64, salt string) string {
	tb.Helper()
	k, err := hkdf.Key(sha256.New, ring.Keys()[key].Private.Seed(), nil, "parley refresh token mac", 32)
	if err != nil {
		tb.Fatal(err)
	}
	m := hmac.New(sha256.New, k)
	m.Write(refreshPayload(userID, sessionID, gen, salt))
	return fmt.Sprintf("%d.%s.%d.%s", userID, sessionID, gen, base64.RawURLEncoding.EncodeToString(m.Sum(nil)))
}

// dropKey returns a current refresh token with its key ID taken out.
func dropKey(s string) string {
	p := strings.Split(s, ".")
	return strings.Join(append(p[:3], p[4]), ".")
}

// legacyAccess makes an access token as they were before they named their
// key: no "kid" in the header.
func legacyAccess(tb testing.TB, t *tokens, key ed25519.PrivateKey, userID int, sessionID string) string {
	tb.Helper()
	now := t.now()
	s, err := jwt.NewWithClaims(jwt.SigningMethodEdDSA, accessClaims{
		RegisteredClaims: jwt.RegisteredClaims{
			Issuer: issuer, Subject: fmt.Sprint(userID),
			IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute)),
		},
		SessionID: sessionID,
	}).SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// TestTokens_OlderForms checks that tokens issued before tokens named
// their key still verify, by whichever key of the ring signed them.
func TestTokens_OlderForms(t *testing.T) {
	tok, ring := testTokens(t)
	for i, k := range ring.Keys() {
		s := legacyRefresh(t, ring, i, 42, testSession, 3, "salt")
		rt, ok := parseRefresh(s)
		if !ok || !tok.verifyRefresh(rt, "salt") {
			t.Errorf("key %d: refresh token without a key ID does not verify", i)
		}
		if tok.verifyRefresh(rt, "other salt") {
			t.Errorf("key %d: refresh token verifies with another session's salt", i)
		}
		v, err := tok.verifyAccess(legacyAccess(t, tok, k.Private, 42, testSession))
		if err != nil || v.userID != 42 || v.sessionID != testSession {
			t.Errorf("key %d: access token without a key ID: %+v, %v", i, v, err)
		}
	}
}

// FuzzParseRefresh feeds arbitrary strings to the refresh token parser.
// It must never panic; what it parses is in one canonical spelling (it
// formats back to the same string); and only the tokens the server issued
// (in the current form, or the older form without a key ID) verify.
func FuzzParseRefresh(f *testing.F) {
	tok, ring := testTokens(f)
	issued := tok.issueRefresh(42, testSession, 7, "salt")
	legacy := legacyRefresh(f, ring, 0, 42, testSession, 7, "salt")
	retired := legacyRefresh(f, ring, 1, 42, testSession, 7, "salt")
	for _, s := range []string{issued, legacy, retired, spareBits(issued), dropKey(issued), issued[:10] + "\n" + issued[10:],
		issued[:len(issued)-5] + "\r\n" + issued[len(issued)-5:], "", "....", "1.a.0.b.c", "+42." + testSession + ".7.x.y",
		strings.Replace(issued, ".7.", ".07.", 1), issued + ".", "0.a.0.a"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rt, ok := parseRefresh(s)
		if !ok {
			return
		}
		if rt.userID <= 0 || rt.generation < 0 || !validSessionID(rt.sessionID) {
			t.Fatalf("parsed %q to %+v", s, rt)
		}
		back := fmt.Sprintf("%d.%s.%d.", rt.userID, rt.sessionID, rt.generation)
		if rt.keyID != "" {
			back += rt.keyID + "."
		}
		if back += base64.RawURLEncoding.EncodeToString(rt.mac); back != s {
			t.Fatalf("%q parses to %+v, which formats as %q", s, rt, back)
		}
		if tok.verifyRefresh(rt, "salt") && s != issued && s != legacy && s != retired {
			t.Fatalf("%q verifies, but the server never issued it", s)
		}
	})
}

// FuzzVerifyAccess feeds arbitrary strings to the access token check: it
// must never panic, and only tokens the server signed verify.
func FuzzVerifyAccess(f *testing.F) {
	tok, ring := testTokens(f)
	issued, _, err := tok.issueAccess(42, testSession)
	if err != nil {
		f.Fatal(err)
	}
	legacy := legacyAccess(f, tok, ring.Keys()[1].Private, 42, testSession)
	for _, s := range []string{issued, legacy, "", "a.b.c", issued + "=", strings.ToUpper(issued), spareBits(issued),
		issued[:len(issued)-5] + "\n" + issued[len(issued)-5:]} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		tok.verified.Purge() // each input is checked, not remembered
		v, err := tok.verifyAccess(s)
		if err != nil {
			return
		}
		if s != issued && s != legacy {
			t.Fatalf("%q verifies as %+v, but the server never signed it", s, v)
		}
		if v.userID != 42 || v.sessionID != testSession {
			t.Fatalf("%q verifies as %+v", s, v)
		}
	})
}
