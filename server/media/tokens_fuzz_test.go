package media

import (
	"crypto/ed25519"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/keyring"
)

// testSigners returns a signer over a ring of a signing and a retired key,
// and a signer of the retired key alone, as an instance before the
// rotation had it.
func testSigners(tb testing.TB) (rotated, old signer) {
	tb.Helper()
	seed := func(b byte) ed25519.PrivateKey {
		return ed25519.NewKeyFromSeed([]byte(strings.Repeat(string(rune(b)), ed25519.SeedSize)))
	}
	ring, err := keyring.New(seed(1), seed(2))
	if err != nil {
		tb.Fatal(err)
	}
	oldRing, _ := keyring.New(seed(2))
	if rotated, err = newSigner(ring); err != nil {
		tb.Fatal(err)
	}
	if old, err = newSigner(oldRing); err != nil {
		tb.Fatal(err)
	}
	return rotated, old
}

var testGrant = uploadGrant{
	MediaID:  bson.ObjectID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
	Uploader: 42,
	Size:     1 << 20,
	Expires:  time.Unix(1_800_000_000, 0),
}

// withoutKey returns a token or URL of the form from before they named
// their key.
func withoutKey(tb testing.TB, s string) string {
	tb.Helper()
	if path, q, ok := strings.Cut(s, "?"); ok {
		v, _ := url.ParseQuery(q)
		return path + "?expires=" + v.Get("expires") + "&signature=" + v.Get("signature")
	}
	_, rest, _ := strings.Cut(s, ".")
	return rest
}

// TestSigner_OlderForms checks that upload tokens and download URLs made
// before they named their key still verify, with whichever key made them.
func TestSigner_OlderForms(t *testing.T) {
	rotated, old := testSigners(t)
	for name, s := range map[string]signer{"signing key": rotated, "retired key": old} {
		tok := withoutKey(t, s.uploadToken(testGrant))
		if g, err := rotated.parseUploadToken(tok); err != nil || g != testGrant {
			t.Errorf("%s: upload token %q without a key ID: %+v, %v", name, tok, g, err)
		}
		path, q, _ := strings.Cut(withoutKey(t, s.signPath("/media/x", testGrant.Expires)), "?")
		v, _ := url.ParseQuery(q)
		if !rotated.checkSignedPath(path, v, testGrant.Expires.Add(-time.Second)) {
			t.Errorf("%s: download URL ?%s without a key ID does not verify", name, q)
		}
		if rotated.checkSignedPath(path, v, testGrant.Expires) {
			t.Errorf("%s: download URL verifies once expired", name)
		}
	}
}

// FuzzParseUploadToken feeds arbitrary strings to the upload token parser:
// it must never panic, and only the tokens the server issued (with a key
// ID or without) verify, to the grant they were issued for.
func FuzzParseUploadToken(f *testing.F) {
	rotated, old := testSigners(f)
	issued, retired := rotated.uploadToken(testGrant), old.uploadToken(testGrant)
	valid := map[string]bool{issued: true, retired: true, withoutKey(f, issued): true, withoutKey(f, retired): true}
	for s := range valid {
		f.Add(s)
	}
	for _, s := range []string{"", ".", "..", "...", issued + ".", "." + issued, flipLast(issued), strings.ToLower(issued)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		g, err := rotated.parseUploadToken(s)
		if err != nil {
			return
		}
		if !valid[s] {
			t.Fatalf("%q verifies as %+v, but the server never issued it", s, g)
		}
		if g != testGrant {
			t.Fatalf("%q verifies as %+v, want %+v", s, g, testGrant)
		}
	})
}

// FuzzCheckSignedPath feeds arbitrary paths and queries to the signed
// download URL check: it must never panic, and a URL verifies only for
// the path it was signed for, with the expiry, key and signature the
// server gave it (or no key, for older URLs).
func FuzzCheckSignedPath(f *testing.F) {
	rotated, old := testSigners(f)
	const path = "/media/0102030405060708090a0b0c"
	for _, s := range []signer{rotated, old} {
		u := s.signPath(path, testGrant.Expires)
		f.Add(u)
		f.Add(withoutKey(f, u))
		f.Add(u + "&key=")
		f.Add(strings.Replace(u, "expires=", "expires=0", 1))
		f.Add(flipLast(u))
	}
	f.Add(path + "/thumbnail?expires=1800000000&signature=")
	f.Add("?")
	now := testGrant.Expires.Add(-time.Minute)
	f.Fuzz(func(t *testing.T, u string) {
		p, q, _ := strings.Cut(u, "?")
		v, err := url.ParseQuery(q)
		if err != nil || !rotated.checkSignedPath(p, v, now) {
			return
		}
		for _, s := range []signer{rotated, old} {
			want, _ := url.ParseQuery(strings.TrimPrefix(s.signPath(path, testGrant.Expires), path+"?"))
			if p == path && v.Get("expires") == want.Get("expires") && v.Get("signature") == want.Get("signature") &&
				(v.Get("key") == want.Get("key") || !v.Has("key")) {
				return
			}
		}
		t.Fatalf("%q verifies, but the server never signed it", u)
	})
}

// flipLast flips a bit in the unused low bits of s's last base64
// character: lenient decoding reads the same bytes.
func flipLast(s string) string {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	i := strings.IndexByte(alphabet, s[len(s)-1])
	return s[:len(s)-1] + string(alphabet[i^1])
}
