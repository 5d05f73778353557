package main

import (
	"io"
	"strings"
	"testing"

	"github.com/parley-chat/parley/server/auth"
)

// FuzzParseArgs feeds parseArgs arbitrary arguments (separated by NUL,
// which no real argument holds) and environment ("KEY=value" lines), and
// checks that whatever it accepts passes the checks it promises: a
// configuration it returns without error is one app.Run may start.
func FuzzParseArgs(f *testing.F) {
	for _, tc := range [][2]string{
		{"", ""},
		{"", "PARLEY_ADDR=:9000\nPARLEY_MIGRATE=false\nPARLEY_CORS_ORIGINS=https://a.example, https://b.example"},
		{"-addr\x00:7000", "PARLEY_ADDR=:9000"},
		{"migrate\x00-database-url\x00postgres://x", ""},
		{"-request-body-timeout\x009s", "PARLEY_READ_HEADER_TIMEOUT=3s\nPARLEY_REQUEST_BODY_TIMEOUT=7s\nPARLEY_UNAUTHENTICATED_PER_ADDRESS=5"},
		{"-request-body-timeout\x000s", ""},
		{"", "PARLEY_HEALTH_INTERVAL=soon"},
		{"-tls-key\x00k.pem", ""},
		{"-log-level\x00loud", ""},
		{"-log-format\x00xml", ""},
		{"serve", ""},
		{"-access-token-ttl=16m", ""},
		{"-media-cleanup-after=1m\x00-media-upload-ttl=1h", ""},
		{"-live-max-streams-per-user=1\x00-live-max-streams-per-session=2", ""},
		{"--cors-origins= ,*, ", "PARLEY_SEND_RATE=-1"},
		{"-h", ""},
		{"-migrate=maybe", "PARLEY_MIGRATE=maybe"},
	} {
		f.Add(tc[0], tc[1])
	}
	f.Fuzz(func(t *testing.T, args, env string) {
		argv := []string{"parley"}
		if args != "" {
			argv = append(argv, strings.Split(args, "\x00")...)
		}
		vars := map[string]string{}
		for _, line := range strings.Split(env, "\n") {
			if k, v, ok := strings.Cut(line, "="); ok {
				vars[k] = v
			}
		}
		o, err := parseArgs(argv, func(k string) string { return vars[k] }, io.Discard)
		if err != nil {
			return
		}
		c := o.app
		for _, check := range []struct {
			ok   bool
			what string
		}{
			{o.logFormat == "text" || o.logFormat == "json", "log format text or json"},
			{(c.TLSCertFile == "") == (c.TLSKeyFile == ""), "TLS certificate and key together"},
			{c.AccessTokenTTL > 0 && c.AccessTokenTTL <= auth.MaxAccessTTL, "access token lifetime in (0, 15m]"},
			{c.Media.MaxImageBytes > 0 && c.Media.MaxVideoBytes > 0 && c.Media.MaxFileBytes > 0 && c.Media.Images.MaxPixels > 0, "positive media limits"},
			{c.MediaCleanupAfter > c.Media.UploadTTL, "clean-up after the upload TTL"},
			{c.MaxRequestBytes > 0, "positive request size"},
			{c.Live.MaxStreamsPerSession > 0 && c.Live.MaxStreamsPerUser >= c.Live.MaxStreamsPerSession, "live stream bounds"},
			{c.Sends.Rate > 0 && c.Sends.Burst > 0 && c.Media.MaxConcurrentUploads > 0 && c.Media.MaxUnsentBytes > 0 &&
				c.Media.MinUploadRate > 0 && c.Media.UploadRateWindow > 0, "positive rates"},
			{c.ReadHeaderTimeout > 0 && c.RequestBodyTimeout > 0 && c.UnauthenticatedPerAddress > 0, "positive slow-client bounds"},
		} {
			if !check.ok {
				t.Fatalf("parseArgs(%q, %q) accepted %+v without %s", argv, vars, o, check.what)
			}
		}
		for _, origin := range c.CORSOrigins {
			if origin == "" || origin != strings.TrimSpace(origin) || strings.Contains(origin, ",") {
				t.Fatalf("parseArgs(%q, %q): CORS origins %q", argv, vars, c.CORSOrigins)
			}
		}
	})
}
