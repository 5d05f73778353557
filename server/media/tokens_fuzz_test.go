package media

import (
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"net/url"
	"strconv"
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
	oldRing, _ := keyring.New(testKey(2))
	if rotated, err = newSigner(ring); err != nil {
		tb.Fatal(err)
	}
	if old, err = newSigner(oldRing); err != nil {
		tb.Fatal(err)
	}
	return rotated, old
}

// testKey returns a fixed key made from b.
func testKey(b byte) ed25519.PrivateKey {
	return ed25519.NewKeyFromSeed([]byte(strings.Repeat(string(rune(b)), ed25519.SeedSize)))
}

var testGrant = uploadGrant{
	MediaID:  bson.ObjectID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12},
	Uploader: 42,
	Size:     1 << 20,
	Expires:  time.Unix(1_800_000_000, 0),
}

// legacy returns what s signed with its ring's signing key as it was
// before tokens and URLs named their key: an upload token for g, and a
// download URL for path until expires, their MACs over the payload alone.
func legacy(tb testing.TB, key ed25519.PrivateKey, g uploadGrant, path string, expires time.Time) (token, signedURL string) {
	tb.Helper()
	mac := func(label string, data []byte) string {
		k, err := hkdf.Key(sha256.New, key.Seed(), nil, label, 32)
		if err != nil {
			tb.Fatal(err)
		}
		h := hmac.New(sha256.New, k)
		h.Write(data)
		return b64.EncodeToString(h.Sum(nil))
	}
	p := make([]byte, 0, grantLen)
	p = append(p, g.MediaID[:]...)
	p = binary.BigEndian.AppendUint32(p, uint32(g.Uploader))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Size))
	p = binary.BigEndian.AppendUint64(p, uint64(g.Expires.Unix()))
	exp := strconv.FormatInt(expires.Unix(), 10)
	return b64.EncodeToString(p) + "." + mac("parley media upload token", p),
		path + "?expires=" + exp + "&signature=" + mac("parley media download url", []byte(path+"\n"+exp))
}

// withoutKey returns a current token or URL with its key ID taken out.
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
	rotated, _ := testSigners(t)
	for i, key := range []ed25519.PrivateKey{testKey(1), testKey(2)} {
		tok, signed := legacy(t, key, testGrant, "/media/x", testGrant.Expires)
		if g, err := rotated.parseUploadToken(tok); err != nil || g != testGrant {
			t.Errorf("key %d: upload token %q without a key ID: %+v, %v", i, tok, g, err)
		}
		path, q, _ := strings.Cut(signed, "?")
		v, _ := url.ParseQuery(q)
		if !rotated.checkSignedPath(path, v, testGrant.Expires.Add(-time.Second)) {
			t.Errorf("key %d: download URL ?%s without a key ID does not verify", i, q)
		}
		if rotated.checkSignedPath(path, v, testGrant.Expires) {
			t.Errorf("key %d: download URL verifies once expired", i)
		}
	}
	// A current token or URL with its key ID dropped is not an older one.
	if _, err := rotated.parseUploadToken(withoutKey(t, rotated.uploadToken(testGrant))); err == nil {
		t.Error("an upload token with its key ID dropped verifies")
	}
	path, q, _ := strings.Cut(withoutKey(t, rotated.signPath("/media/x", testGrant.Expires)), "?")
	if v, _ := url.ParseQuery(q); rotated.checkSignedPath(path, v, testGrant.Expires.Add(-time.Second)) {
		t.Error("a download URL with its key ID dropped verifies")
	}
}

// FuzzParseUploadToken feeds arbitrary strings to the upload token parser:
// it must never panic, and only the tokens the server issued (with a key
// ID or without) verify, to the grant they were issued for.
func FuzzParseUploadToken(f *testing.F) {
	rotated, old := testSigners(f)
	issued, retired := rotated.uploadToken(testGrant), old.uploadToken(testGrant)
	older, _ := legacy(f, testKey(1), testGrant, "", testGrant.Expires)
	olderRetired, _ := legacy(f, testKey(2), testGrant, "", testGrant.Expires)
	valid := map[string]bool{issued: true, retired: true, older: true, olderRetired: true}
	f.Add(withoutKey(f, issued))
	f.Add(issued[:5] + "\n" + issued[5:])
	f.Add(issued[:len(issued)-3] + "\r\n" + issued[len(issued)-3:])
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
		f.Add(u[:len(u)-3] + "%0A" + u[len(u)-3:])
		f.Add(strings.Replace(u, "expires=", "expires=0", 1))
		f.Add(flipLast(u))
	}
	for _, k := range []ed25519.PrivateKey{testKey(1), testKey(2)} {
		_, signed := legacy(f, k, testGrant, path, testGrant.Expires)
		f.Add(signed)
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
		var signed []string
		for _, s := range []signer{rotated, old} {
			signed = append(signed, s.signPath(path, testGrant.Expires))
		}
		for _, k := range []ed25519.PrivateKey{testKey(1), testKey(2)} {
			_, u := legacy(t, k, testGrant, path, testGrant.Expires)
			signed = append(signed, u)
		}
		for _, s := range signed {
			want, _ := url.ParseQuery(strings.TrimPrefix(s, path+"?"))
			if p == path && v.Get("expires") == want.Get("expires") && v.Get("signature") == want.Get("signature") &&
				v.Get("key") == want.Get("key") {
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
