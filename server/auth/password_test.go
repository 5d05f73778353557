package auth

import (
	"context"
	"strings"
	"testing"
)

func TestPasswords(t *testing.T) {
	p, err := newPasswords(PasswordParams)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	h, err := p.hash(ctx, "correct horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	if want := "$argon2id$v=19$m=19456,t=2,p=1$"; !strings.HasPrefix(h, want) {
		t.Errorf("hash = %q, want PHC format starting %q", h, want)
	}
	for _, tc := range []struct {
		password, hash string
		want           bool
	}{
		{"correct horse battery staple", h, true},
		{"correct horse battery stapl", h, false},
		{"correct horse battery staple", "", false}, // no account: dummy hash
	} {
		got, err := p.verify(ctx, tc.password, tc.hash)
		if err != nil {
			t.Fatal(err)
		}
		if got != tc.want {
			t.Errorf("verify(%q, %.20q...) = %v, want %v", tc.password, tc.hash, got, tc.want)
		}
	}
}

// BenchmarkPasswordHash measures one Argon2id hash with the production
// parameters: the CPU cost of a login or a registration.
func BenchmarkPasswordHash(b *testing.B) {
	p, err := newPasswords(PasswordParams)
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for b.Loop() {
		if _, err := p.hash(ctx, "correct horse battery staple"); err != nil {
			b.Fatal(err)
		}
	}
}
