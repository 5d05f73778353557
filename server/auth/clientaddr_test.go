package auth

import "testing"

// A proxy header's address is read with or without a port, as load
// balancers write it; anything else is no address.
func TestHeaderIP(t *testing.T) {
	for in, want := range map[string]string{
		"198.51.100.7":          "198.51.100.7",
		" 198.51.100.7 ":        "198.51.100.7",
		"198.51.100.7:41234":    "198.51.100.7",
		"2001:db8::7":           "2001:db8::7",
		"[2001:db8::7]:443":     "2001:db8::7",
		"[2001:db8::7]":         "2001:db8::7",
		"unknown":               "",
		"198.51.100.7:x:y":      "",
		"for=198.51.100.7":      "",
		"":                      "",
		"example.com:443":       "",
		"[2001:db8::7]:443:443": "",
	} {
		got := ""
		if ip := headerIP(in); ip != nil {
			got = ip.String()
		}
		if got != want {
			t.Errorf("headerIP(%q) = %q, want %q", in, got, want)
		}
	}
}
