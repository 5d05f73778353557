package auth

import (
	"strings"
	"testing"
)

// FuzzParseVerifyToken checks that a verification token has one spelling
// and that only the token the server signed verifies.
func FuzzParseVerifyToken(f *testing.F) {
	_, ring := testTokens(f)
	macs, err := ring.MACs("parley email verification token")
	if err != nil {
		f.Fatal(err)
	}
	const email = "Alice@example.com"
	issued := verifyToken{userID: 42, expires: 1_800_000_000, nonce: testSession}
	issued.keyID, issued.mac = macs.Sign(verifyPayload(issued, email))
	s0 := issued.String()
	for _, s := range []string{s0, spareBits(s0), dropKey(s0), s0[:10] + "\n" + s0[10:], "", "....", "1.2.a.b.c",
		"+" + s0, strings.Replace(s0, "42.", "042.", 1), s0 + ".", strings.Replace(s0, ".1800000000.", ".+1800000000.", 1)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		vt, ok := parseVerifyToken(s)
		if !ok {
			return
		}
		if vt.userID <= 0 || !validSessionID(vt.nonce) || vt.keyID == "" {
			t.Fatalf("parsed %q to %+v", s, vt)
		}
		if back := vt.String(); back != s {
			t.Fatalf("%q parses to %+v, which formats as %q", s, vt, back)
		}
		// The address in any case is the same address.
		for _, e := range []string{email, strings.ToLower(email)} {
			if macs.Verify(vt.keyID, verifyPayload(vt, e), vt.mac) && s != s0 {
				t.Fatalf("%q verifies, but the server never issued it", s)
			}
		}
	})
}
