package push

import (
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"
)

func TestPublicAddr(t *testing.T) {
	for addr, want := range map[string]bool{
		"142.250.74.10":       true,
		"2a00:1450:4001::200": true,
		"127.0.0.1":           false,
		"10.1.2.3":            false,
		"172.16.0.1":          false,
		"192.168.1.1":         false,
		"169.254.169.254":     false,
		"100.64.0.1":          false,
		"0.0.0.0":             false,
		"::1":                 false,
		"fd00::1":             false,
		"fe80::1":             false,
		"224.0.0.1":           false,
	} {
		if got := publicAddr(netip.MustParseAddr(addr)); got != want {
			t.Errorf("publicAddr(%s) = %v, want %v", addr, got, want)
		}
	}
}

// The default client refuses to post to the server's own networks, and
// such a push is not tried again.
func TestWebPush_RefusesLocalEndpoints(t *testing.T) {
	var hit atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { hit.Store(true) }))
	defer srv.Close()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	wp, err := NewWebPush(key, "mailto:ops@parley.example", nil)
	if err != nil {
		t.Fatal(err)
	}
	device, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sub := Subscription{
		Endpoint: srv.URL + "/push/1",
		P256dh:   base64.RawURLEncoding.EncodeToString(device.PublicKey().Bytes()),
		Auth:     base64.RawURLEncoding.EncodeToString(make([]byte, 16)),
	}
	res, err := wp.Send(context.Background(), sub, []byte(`{}`), Options{TTL: time.Minute})
	if !errors.Is(err, errNotPublic) || res.Retry || res.Gone || hit.Load() {
		t.Fatalf("Send to a loopback endpoint = %+v, %v (reached: %v); want errNotPublic, no retry", res, err, hit.Load())
	}
	if _, err := NewWebPush(key, "ops@parley.example", nil); err == nil {
		t.Fatal("NewWebPush accepted a subject that is no mailto: or https: URL")
	}
}
