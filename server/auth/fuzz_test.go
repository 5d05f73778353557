package auth

import (
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"
)

// FuzzClientAddr checks the client address taken from a trusted proxy's
// header, given as header lines separated by "\n" (which no header value
// holds): what the header yields is an IP address in its canonical form;
// what a client puts in front of the entry the proxy appended, in the
// same line or in lines of its own, changes nothing; and without the
// header configured, or without a usable last entry, the address is the
// connection's host.
func FuzzClientAddr(f *testing.F) {
	for _, tc := range [][2]string{
		{"203.0.113.7", "10.0.0.1:43210"},
		{"198.51.100.1, 203.0.113.7", "10.0.0.1:43210"},
		{"forged,203.0.113.7", "[2001:db8::1]:443"},
		{"198.51.100.1\n203.0.113.7", "10.0.0.1:43210"}, // a proxy that adds a line of its own
		{"2001:DB8:0:0::1", "10.0.0.1:1"},
		{"::ffff:203.0.113.7", "10.0.0.1:1"},
		{" 203.0.113.7 ", "10.0.0.1:1"},
		{"203.0.113.7,", "10.0.0.1:1"},
		{"fe80::1%eth0", "10.0.0.1:1"},
		{"203.0.113.7:8080", "10.0.0.1:1"},
		{"", "10.0.0.1:1"},
		{",,,", "no port"},
		{"unknown", ""},
	} {
		f.Add(tc[0], tc[1])
	}
	const name = "X-Forwarded-For"
	proxied := &Service{cfg: Config{ClientIPHeader: name, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}}}
	direct := &Service{}
	f.Fuzz(func(t *testing.T, header, remote string) {
		lines := strings.Split(header, "\n")
		h := http.Header{name: lines}
		host, _, err := net.SplitHostPort(remote)
		if err != nil {
			host = remote
		}
		if got := direct.clientAddr(remote, h); got != host {
			t.Fatalf("without ClientIPHeader: clientAddr(%q, %q) = %q, want %q", remote, lines, got, host)
		}
		got := proxied.clientAddr(remote, h)
		for _, forged := range [][]string{
			append([]string{"203.0.113.99"}, lines...),
			append([]string{"203.0.113.99, " + lines[0]}, lines[1:]...),
		} {
			if addr := proxied.clientAddr(remote, http.Header{name: forged}); addr != got {
				t.Fatalf("clientAddr(%q, %q) = %q, but with an entry put in front, %q: %q", remote, lines, got, forged, addr)
			}
		}
		if got == host {
			return
		}
		if ip := net.ParseIP(got); ip == nil || ip.String() != got {
			t.Fatalf("clientAddr(%q, %q) = %q: neither the connection's host %q nor a canonical IP address", remote, lines, got, host)
		}
	})
}

// TestClientAddr_TrustedProxies: the header counts from the trusted
// proxies' networks only; from any other peer, the connection's address
// is the client's, whatever the header says.
func TestClientAddr_TrustedProxies(t *testing.T) {
	s := &Service{cfg: Config{ClientIPHeader: "X-Real-IP", TrustedProxies: []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::/8"), netip.MustParsePrefix("192.0.2.1/32"),
	}}}
	h := http.Header{}
	h.Set("X-Real-IP", "198.51.100.7")
	for _, c := range []struct{ remote, want string }{
		{"10.1.2.3:443", "198.51.100.7"},
		{"[::ffff:10.1.2.3]:443", "198.51.100.7"},
		{"[fd12::1]:443", "198.51.100.7"},
		{"[fd12::1%eth0]:443", "198.51.100.7"},
		{"192.0.2.1:1", "198.51.100.7"},
		{"192.0.2.2:1", "192.0.2.2"},
		{"203.0.113.9:5000", "203.0.113.9"},
		{"[2001:db8::1]:443", "2001:db8::1"},
		{"not an address", "not an address"},
	} {
		if got := s.clientAddr(c.remote, h); got != c.want {
			t.Errorf("clientAddr(%q) with the header = %q, want %q", c.remote, got, c.want)
		}
	}
	none := &Service{cfg: Config{ClientIPHeader: "X-Real-IP"}}
	if got := none.clientAddr("10.1.2.3:443", h); got != "10.1.2.3" {
		t.Errorf("with no trusted proxies, clientAddr = %q, want the connection's", got)
	}
}

// sessionHash is a session as create stores it in Redis, every value as
// Redis gives it back.
func sessionHash(s *session, jwt string) map[string]string {
	return map[string]string{
		"user_id": strconv.Itoa(s.UserID),
		"jwt":     jwt,
		"gen":     strconv.FormatInt(s.Generation, 10),
		"salt":    s.Salt,
		"created": strconv.FormatInt(s.CreatedAt.UnixMilli(), 10),
		"used":    strconv.FormatInt(s.LastUsedAt.UnixMilli(), 10),
		"ua":      s.UserAgent,
		"addr":    s.Address,
	}
}

// FuzzParseSession checks the reading of a session's Redis hash: a hash
// with a number field missing or malformed is refused, and a session that
// parses is stored again as a hash that parses to the same session.
func FuzzParseSession(f *testing.F) {
	now := time.UnixMilli(1_700_000_000_123)
	good := sessionHash(&session{
		UserID: 7, Generation: 3, Salt: "c2FsdHNhbHRzYWx0c2FsdA", CreatedAt: now, LastUsedAt: now.Add(time.Hour),
		UserAgent: "parley-web/1.0", Address: "203.0.113.7",
	}, "eyJhbGciOiJFZERTQSJ9.e30.sig")
	add := func(edit func(m map[string]string)) {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		edit(m)
		f.Add("AAAAAAAAAAAAAAAAAAAAAA", m["user_id"], m["gen"], m["created"], m["used"], m["salt"], m["ua"], m["addr"], uint8(0))
	}
	add(func(map[string]string) {})
	add(func(m map[string]string) { m["gen"] = "0" })
	add(func(m map[string]string) { m["user_id"] = "9223372036854775807" })
	add(func(m map[string]string) { m["user_id"] = "9223372036854775808" })
	add(func(m map[string]string) { m["created"] = "-9223372036854775808" })
	add(func(m map[string]string) { m["used"] = "1.7e12" })
	add(func(m map[string]string) { m["gen"] = "+1" })
	add(func(m map[string]string) { m["user_id"] = " 7" })
	add(func(m map[string]string) { m["ua"], m["addr"], m["salt"] = "", "", "" })
	f.Add("", "", "", "", "", "", "", "", uint8(0xff))
	f.Fuzz(func(t *testing.T, id, userID, gen, created, used, salt, ua, addr string, missing uint8) {
		m := map[string]string{"user_id": userID, "gen": gen, "created": created, "used": used, "salt": salt, "ua": ua, "addr": addr}
		for i, k := range []string{"user_id", "gen", "created", "used", "salt", "ua", "addr"} {
			if missing&(1<<i) != 0 {
				delete(m, k)
			}
		}
		s, err := parseSession(id, m)
		_, errU := strconv.Atoi(m["user_id"])
		_, errG := strconv.ParseInt(m["gen"], 10, 64)
		_, errC := strconv.ParseInt(m["created"], 10, 64)
		_, errL := strconv.ParseInt(m["used"], 10, 64)
		malformed := errU != nil || errG != nil || errC != nil || errL != nil
		switch {
		case malformed && err == nil:
			t.Fatalf("parseSession(%q, %q) = %+v, want an error", id, m, s)
		case malformed:
			return
		case err != nil:
			t.Fatalf("parseSession(%q, %q): %v", id, m, err)
		}
		if s.ID != id || s.Salt != m["salt"] || s.UserAgent != m["ua"] || s.Address != m["addr"] {
			t.Fatalf("parseSession(%q, %q) = %+v: strings differ from the hash's", id, m, s)
		}
		stored := sessionHash(s, "jwt")
		again, err := parseSession(id, stored)
		if err != nil {
			t.Fatalf("parseSession(%q, %q) = %+v; stored again as %q: %v", id, m, s, stored, err)
		}
		if *again != *s {
			t.Fatalf("parseSession(%q, %q) = %+v; stored again as %q, it reads %+v", id, m, s, stored, again)
		}
	})
}
