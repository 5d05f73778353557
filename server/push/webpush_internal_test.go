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
		"142.250.74.10":        true,
		"2a00:1450:4001::200":  true,
		"127.0.0.1":            false,
		"10.1.2.3":             false,
		"172.16.0.1":           false,
		"192.168.1.1":          false,
		"169.254.169.254":      false,
		"100.64.0.1":           false,
		"0.0.0.0":              false,
		"::1":                  false,
		"fd00::1":              false,
		"fe80::1":              false,
		"224.0.0.1":            false,
		"0.1.2.3":              false,
		"192.0.0.170":          false,
		"198.18.0.1":           false,
		"198.19.255.254":       false,
		"240.0.0.1":            false,
		"255.255.255.255":      false,
		"192.0.2.1":            false,
		"::ffff:10.0.0.1":      false,
		"::ffff:142.250.74.10": true,
		"::a00:1":              false, // IPv4-compatible
		"::":                   false,
		// NAT64: as public as the IPv4 address it carries.
		"64:ff9b::a00:1":       false,
		"64:ff9b::7f00:1":      false,
		"64:ff9b::a9fe:a9fe":   false,
		"64:ff9b::8efa:4a0a":   true,
		"64:ff9b:1::8efa:4a0a": false, // local-use NAT64
		// 6to4: likewise.
		"2002:a00:1::1":       false,
		"2002:7f00:1::1":      false,
		"2002:8efa:4a0a::1":   true,
		"2001:0:4136:e378::1": false, // Teredo
		"2001:db8::1":         false,
		"fec0::1":             false,
		"100::1":              false,
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
