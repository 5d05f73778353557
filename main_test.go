package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/sqldb"
)

// startRun runs the program in-process with the given environment and
// returns its base URL, its banner, and a function that stops it and
// returns run's error.
func startRun(t *testing.T, env map[string]string, args ...string) (baseURL, banner string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	stdoutR, stdoutW := io.Pipe()
	var stderr bytes.Buffer
	done := make(chan error, 1)
	go func() {
		err := run(ctx, append([]string{"parley"}, args...), func(k string) string { return env[k] }, stdoutW, &stderr)
		stdoutW.CloseWithError(io.EOF)
		done <- err
	}()

	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdoutR)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	urlRE := regexp.MustCompile(`listening on (https?://\S+)`)
	var out strings.Builder
	timeout := time.After(time.Minute)
	for baseURL == "" || !strings.Contains(out.String(), "curl") {
		select {
		case line, ok := <-lines:
			if !ok {
				cancel()
				t.Fatalf("run ended before serving: %v\nstdout:\n%s\nstderr:\n%s", <-done, out.String(), stderr.String())
			}
			out.WriteString(line + "\n")
			if m := urlRE.FindStringSubmatch(line); m != nil {
				baseURL = m[1]
			}
		case <-timeout:
			cancel()
			t.Fatalf("no banner after a minute; stdout:\n%s", out.String())
		}
	}
	go func() {
		for range lines {
		}
	}()
	stopped := false
	stop = func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("run: %v", err)
		}
	})
	return baseURL, out.String(), stop
}

// TestRun_EmbeddedDefaults starts the program as `go run .` does, with no
// store configured, and checks that the banner's curl command works and the
// API answers over Connect and gRPC.
func TestRun_EmbeddedDefaults(t *testing.T) {
	dir := t.TempDir()
	baseURL, banner, stop := startRun(t, nil, "-addr", "127.0.0.1:0", "-data-dir", dir)
	for _, store := range []string{"postgres embedded: SQLite", "mongodb  embedded: FerretDB", "redis    embedded: miniredis", "mail     no -smtp-url: mails are written to the log"} {
		if !strings.Contains(banner, store) {
			t.Errorf("banner does not say %q:\n%s", store, banner)
		}
	}

	// The banner's curl command: a JSON health check.
	res, err := http.Post(baseURL+"/grpc.health.v1.Health/Check", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if got, want := strings.TrimSpace(string(body)), `{"status":"SERVING"}`; got != want {
		t.Errorf("health check = %s, want %s", got, want)
	}

	srv := &servertest.Server{URL: baseURL}
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.Client(srv, p, parleyv1connect.NewServerServiceClient)
			res, err := c.GetServerInfo(context.Background(), connect.NewRequest(&parleyv1.GetServerInfoRequest{}))
			if err != nil {
				t.Fatalf("GetServerInfo: %v", err)
			}
			if got, want := res.Msg.GetApi(), "parley.v1"; got != want {
				t.Errorf("api = %q, want %q", got, want)
			}
		})
	}

	// A second server on the same data directory would run its own
	// embedded stores on the same files: it is refused, and says why.
	var stderr bytes.Buffer
	err = run(context.Background(), []string{"parley", "-addr", "127.0.0.1:0", "-data-dir", dir},
		func(string) string { return "" }, io.Discard, &stderr)
	if !errors.Is(err, app.ErrDataDirInUse) {
		t.Errorf("a second server on the same data directory: %v, want %v", err, app.ErrDataDirInUse)
	} else if want := fmt.Sprintf("used by another Parley server (process %d)", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("the refusal %q does not say %q", err, want)
	}

	if err := stop(); err != nil {
		t.Errorf("run after shutdown: %v", err)
	}
	// Once the first has stopped, the directory is free again.
	_, _, stop = startRun(t, nil, "-addr", "127.0.0.1:0", "-data-dir", dir)
	if err := stop(); err != nil {
		t.Errorf("run on the data directory after the first stopped: %v", err)
	}
}

// TestRun_Admin checks that -admin-addr serves metrics, probes, profiles
// and memory statistics on a listener of its own, and that the public
// listener serves only the probes.
func TestRun_Admin(t *testing.T) {
	baseURL, banner, _ := startRun(t, nil, "-addr", "127.0.0.1:0", "-admin-addr", "127.0.0.1:0", "-data-dir", t.TempDir())
	m := regexp.MustCompile(`Admin .* on (http://\S+)/metrics`).FindStringSubmatch(banner)
	if m == nil {
		t.Fatalf("the banner names no admin listener:\n%s", banner)
	}
	adminURL := m[1]
	get := func(url string) (int, string) {
		t.Helper()
		res, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		body, _ := io.ReadAll(res.Body)
		return res.StatusCode, string(body)
	}
	if code, body := get(adminURL + "/debug/vars"); code != http.StatusOK || !strings.Contains(body, `"HeapInuse"`) {
		t.Errorf("GET /debug/vars = %d, want 200 with the memory statistics; got %.200s", code, body)
	}
	if code, body := get(adminURL + "/debug/pprof/heap?gc=1&debug=1"); code != http.StatusOK || !strings.Contains(body, "heap profile") {
		t.Errorf("GET /debug/pprof/heap = %d %.200s, want a heap profile", code, body)
	}
	if code, body := get(adminURL + "/debug/pprof/goroutine?debug=1"); code != http.StatusOK || !strings.Contains(body, "goroutine profile") {
		t.Errorf("GET /debug/pprof/goroutine = %d %.200s, want a goroutine profile", code, body)
	}
	if code, body := get(adminURL + "/metrics"); code != http.StatusOK || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "parley_live_streams 0") {
		t.Errorf("GET /metrics = %d %.200s, want Prometheus metrics with the Go runtime's and Parley's", code, body)
	}
	for _, probe := range []struct{ path, body string }{{"/livez", "ok"}, {"/readyz", "ready"}} {
		for _, base := range []string{adminURL, baseURL} {
			if code, body := get(base + probe.path); code != http.StatusOK || strings.TrimSpace(body) != probe.body {
				t.Errorf("GET %s%s = %d %q, want 200 %q", base, probe.path, code, body, probe.body)
			}
		}
	}
	for _, path := range []string{"/debug/vars", "/debug/pprof/cmdline"} {
		if _, body := get(adminURL + path); strings.Contains(body, "-data-dir") {
			t.Errorf("the admin listener shows the command line at %s: %.200s", path, body)
		}
	}
	for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/vars", "/metrics"} {
		if code, _ := get(baseURL + path); code == http.StatusOK {
			t.Errorf("the public listener serves %s", path)
		}
	}
}

// TestRun_ExternalStores points the program at real PostgreSQL and Redis:
// each URL that is set replaces its embedded store.
func TestRun_ExternalStores(t *testing.T) {
	dbURL := servertest.CreateDatabase(t)
	env := map[string]string{
		"PARLEY_ADDR":         "127.0.0.1:0",
		"PARLEY_DATA_DIR":     t.TempDir(),
		"PARLEY_DATABASE_URL": dbURL,
		"PARLEY_REDIS_URL":    servertest.RedisURL(),
		"PARLEY_REDIS_PREFIX": "parley_test_run:",
	}
	_, banner, _ := startRun(t, env)
	for _, want := range []string{"postgres external:", "redis    external:", "mongodb  embedded:"} {
		if !strings.Contains(banner, want) {
			t.Errorf("banner does not say %q:\n%s", want, banner)
		}
	}
}

func TestParseArgs(t *testing.T) {
	cases := []struct {
		name    string
		args    []string
		env     map[string]string
		check   func(t *testing.T, o options)
		wantErr string
	}{
		{
			name: "defaults",
			check: func(t *testing.T, o options) {
				if o.addr != ":8080" || o.app.DataDir != "./data" || !o.app.Migrate || o.app.RedisPrefix != "parley:" {
					t.Errorf("defaults = %+v", o)
				}
			},
		},
		{
			name: "environment fallbacks",
			env: map[string]string{
				"PARLEY_ADDR": ":9000", "PARLEY_MIGRATE": "false",
				"PARLEY_CORS_ORIGINS": "https://a.example, https://b.example",
			},
			check: func(t *testing.T, o options) {
				if o.addr != ":9000" || o.app.Migrate {
					t.Errorf("addr=%q migrate=%v", o.addr, o.app.Migrate)
				}
				if got := strings.Join(o.app.CORSOrigins, " "); got != "https://a.example https://b.example" {
					t.Errorf("cors origins = %q", got)
				}
			},
		},
		{
			name:    "the admin listener is never the public one",
			args:    []string{"-addr", "127.0.0.1:8080", "-admin-addr", "127.0.0.1:8080"},
			wantErr: "-admin-addr must differ from -addr",
		},
		{
			name: "retired signing keys",
			args: []string{"-jwt-key-file", "new.pem", "-jwt-verify-key-files", "old.pem,, older.pem "},
			check: func(t *testing.T, o options) {
				if got := strings.Join(o.app.JWTVerifyKeyFiles, " "); o.app.JWTKeyFile != "new.pem" || got != "old.pem older.pem" {
					t.Errorf("key file %q, verify key files %q", o.app.JWTKeyFile, got)
				}
			},
		},
		{
			name: "flags override the environment",
			args: []string{"-addr", ":7000"},
			env:  map[string]string{"PARLEY_ADDR": ":9000"},
			check: func(t *testing.T, o options) {
				if o.addr != ":7000" {
					t.Errorf("addr = %q, want :7000", o.addr)
				}
			},
		},
		{
			name: "migrate subcommand",
			args: []string{"migrate", "-database-url", "postgres://x"},
			check: func(t *testing.T, o options) {
				if !o.migrate || o.app.DatabaseURL != "postgres://x" {
					t.Errorf("migrate=%v database=%q", o.migrate, o.app.DatabaseURL)
				}
			},
		},
		{
			name: "slow-client bounds",
			env: map[string]string{
				"PARLEY_READ_HEADER_TIMEOUT": "3s", "PARLEY_REQUEST_BODY_TIMEOUT": "7s",
				"PARLEY_UNAUTHENTICATED_PER_ADDRESS": "5",
			},
			args: []string{"-request-body-timeout", "9s"},
			check: func(t *testing.T, o options) {
				if c := o.app; c.ReadHeaderTimeout != 3*time.Second || c.RequestBodyTimeout != 9*time.Second || c.UnauthenticatedPerAddress != 5 {
					t.Errorf("read header %s, request body %s, unauthenticated per address %d", c.ReadHeaderTimeout, c.RequestBodyTimeout, c.UnauthenticatedPerAddress)
				}
			},
		},
		{name: "zero body timeout", args: []string{"-request-body-timeout", "0s"}, wantErr: "-request-body-timeout"},
		{name: "malformed environment", env: map[string]string{"PARLEY_HEALTH_INTERVAL": "soon"}, wantErr: "PARLEY_HEALTH_INTERVAL"},
		{name: "tls key without cert", args: []string{"-tls-key", "k.pem"}, wantErr: "go together"},
		{name: "bad log level", args: []string{"-log-level", "loud"}, wantErr: "-log-level"},
		{name: "bad log format", args: []string{"-log-format", "xml"}, wantErr: "-log-format"},
		{name: "stray argument", args: []string{"serve"}, wantErr: "unexpected argument"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o, err := parseArgs(append([]string{"parley"}, tc.args...), func(k string) string { return tc.env[k] }, io.Discard)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parseArgs: %v", err)
			}
			tc.check(t, o)
		})
	}
}

// TestRun_Migrate applies the PostgreSQL migrations with `parley migrate`.
func TestRun_Migrate(t *testing.T) {
	dbURL := servertest.CreateDatabase(t)
	var stdout bytes.Buffer
	err := run(context.Background(), []string{"parley", "migrate", "-database-url", dbURL},
		func(string) string { return "" }, &stdout, io.Discard)
	if err != nil {
		t.Fatalf("parley migrate: %v", err)
	}
	if !strings.Contains(stdout.String(), "up to date") {
		t.Errorf("stdout = %q, want it to say the schema is up to date", stdout.String())
	}
	db, err := sqldb.OpenPostgres(context.Background(), dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if pending, err := db.Pending(context.Background()); err != nil || pending {
		t.Errorf("Pending() = %v, %v after parley migrate; want false, nil", pending, err)
	}
}

// TestParseArgs_TrustedProxies: -trusted-proxies takes networks and
// single addresses, loopback and the private ranges by default, and
// refuses what is neither.
func TestParseArgs_TrustedProxies(t *testing.T) {
	parse := func(args ...string) ([]netip.Prefix, error) {
		o, err := parseArgs(append([]string{"parley"}, args...), func(string) string { return "" }, io.Discard)
		return o.app.TrustedProxies, err
	}
	if got, err := parse(); err != nil || !slices.Equal(got, app.DefaultTrustedProxies) {
		t.Errorf("default: %v, %v; want %v", got, err, app.DefaultTrustedProxies)
	}
	got, err := parse("-trusted-proxies", "203.0.113.7, 198.51.100.9/24,2001:db8::1,::ffff:192.0.2.1,::ffff:10.0.0.0/104")
	want := []netip.Prefix{
		netip.MustParsePrefix("203.0.113.7/32"), netip.MustParsePrefix("198.51.100.0/24"),
		netip.MustParsePrefix("2001:db8::1/128"), netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("10.0.0.0/8"),
	}
	if err != nil || !slices.Equal(got, want) {
		t.Errorf("-trusted-proxies: %v, %v; want %v", got, err, want)
	}
	for _, none := range []string{"", "none"} {
		if got, err := parse("-trusted-proxies", none); err != nil || got == nil || len(got) != 0 {
			t.Errorf("-trusted-proxies %q: %v, %v; want none (not the default)", none, got, err)
		}
	}
	if _, err := parse("-trusted-proxies", "10.0.0.0/8,proxy.internal"); err == nil || !strings.Contains(err.Error(), "proxy.internal") {
		t.Errorf("-trusted-proxies with a host name: %v, want an error naming it", err)
	}
}

// TestParseArgs_DeployEnv reads the example configuration of the systemd
// unit (deploy/systemd/parley.env) as the unit passes it: every variable
// in it is one the server knows, with a value it takes.
func TestParseArgs_DeployEnv(t *testing.T) {
	b, err := os.ReadFile("deploy/systemd/parley.env")
	if err != nil {
		t.Fatal(err)
	}
	env := map[string]string{}
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("not a variable: %q", line)
		}
		env[k] = v
	}
	known := map[string]bool{}
	for _, m := range regexp.MustCompile(`\((PARLEY_[A-Z0-9_]+)\)`).FindAllStringSubmatch(usage(t), -1) {
		known[m[1]] = true
	}
	for k := range env {
		if !known[k] && !strings.HasPrefix(k, "OTEL_") { // OpenTelemetry's own
			t.Errorf("deploy/systemd/parley.env sets %s, which no flag reads", k)
		}
	}
	o, err := parseArgs([]string{"parley"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatalf("parseArgs with deploy/systemd/parley.env: %v", err)
	}
	if o.app.ClientIPHeader != "X-Real-IP" || len(o.app.TrustedProxies) != 1 || o.adminAddr == "" || o.app.MediaS3URL == "" || o.app.JWTKeyFile == "" {
		t.Errorf("the example's settings did not all take: %+v", o)
	}
}

// usage is the program's -h text, which names each flag's variable.
func usage(t *testing.T) string {
	t.Helper()
	var out bytes.Buffer
	parseArgs([]string{"parley", "-h"}, func(string) string { return "" }, &out)
	if !strings.Contains(out.String(), "PARLEY_ADDR") {
		t.Fatalf("-h does not list the variables:\n%s", out.String())
	}
	return out.String()
}

// TestRun_SMTP checks that -smtp-url and -mail-from (here from the
// environment) send the account mails through that server, and that the
// banner says so.
func TestRun_SMTP(t *testing.T) {
	mp := servertest.StartMailpit(t)
	env := map[string]string{"PARLEY_SMTP_URL": mp.SMTPURL, "PARLEY_MAIL_FROM": "Parley Test <parley@test.example>"}
	baseURL, banner, _ := startRun(t, env, "-addr", "127.0.0.1:0", "-data-dir", t.TempDir())
	if want := "mail     SMTP at " + mp.SMTPURL; !strings.Contains(banner, want) {
		t.Errorf("banner does not say %q:\n%s", want, banner)
	}
	srv := &servertest.Server{URL: baseURL}
	c := servertest.NewClients(srv, servertest.Protocols[0])
	a := servertest.Register(t, c.Auth, "smtp_user")
	if _, err := c.Account.SendEmailVerification(context.Background(), servertest.WithToken(&parleyv1.SendEmailVerificationRequest{}, a.Token)); err != nil {
		t.Fatalf("SendEmailVerification: %v", err)
	}
	if m := mp.WaitMail(t, a.Email, 1); m.From != "parley@test.example" {
		t.Errorf("the mail is from %q, want parley@test.example", m.From)
	}
}

// TestRun_TLS: with a certificate, the server speaks HTTP/2 over TLS
// (negotiated by ALPN), so gRPC clients reach it, and HTTP/1.1 too.
func TestRun_TLS(t *testing.T) {
	roots, certFile, keyFile := servertest.SelfSignedCert(t, t.TempDir())
	env := map[string]string{
		"PARLEY_ADDR":     "127.0.0.1:0",
		"PARLEY_DATA_DIR": t.TempDir(),
	}
	base, _, _ := startRun(t, env, "-tls-cert", certFile, "-tls-key", keyFile)
	if !strings.HasPrefix(base, "https://") {
		t.Fatalf("listening on %s, want https", base)
	}
	h2 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: true}}
	h1 := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}
	for _, c := range []struct {
		name   string
		client *http.Client
		proto  string
	}{{"h2", h2, "HTTP/2.0"}, {"http/1.1", h1, "HTTP/1.1"}} {
		res, err := c.client.Get(base + "/livez")
		if err != nil {
			t.Fatalf("%s: GET /livez: %v", c.name, err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK || res.Proto != c.proto {
			t.Errorf("%s: GET /livez: %d over %s, want 200 over %s", c.name, res.StatusCode, res.Proto, c.proto)
		}
	}
	info := parleyv1connect.NewServerServiceClient(h2, base, connect.WithGRPC())
	if _, err := info.GetServerInfo(context.Background(), connect.NewRequest(&parleyv1.GetServerInfoRequest{})); err != nil {
		t.Errorf("GetServerInfo over gRPC and TLS: %v", err)
	}
}

// The banner warns of a Redis embedded beside shared databases, and of
// nothing in the embedded and in the shared set-ups.
func TestSharingNote(t *testing.T) {
	embedded := func(name string) app.StoreInfo { return app.StoreInfo{Name: name, Embedded: true} }
	shared := func(name string) app.StoreInfo { return app.StoreInfo{Name: name} }
	for _, c := range []struct {
		stores []app.StoreInfo
		warn   bool
	}{
		{[]app.StoreInfo{embedded("postgres"), embedded("mongodb"), embedded("redis")}, false},
		{[]app.StoreInfo{shared("postgres"), shared("mongodb"), shared("redis")}, false},
		{[]app.StoreInfo{shared("postgres"), shared("mongodb"), embedded("redis")}, true},
		{[]app.StoreInfo{embedded("postgres"), shared("mongodb"), embedded("redis")}, true},
	} {
		if got := sharingNote(c.stores) != ""; got != c.warn {
			t.Errorf("sharingNote(%v) warns: %v, want %v", c.stores, got, c.warn)
		}
	}
}
