package server_test

import (
	"bytes"
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// startLogged starts a server whose log the test can read.
func startLogged(t *testing.T, configure func(*app.Config)) (*servertest.Server, *servertest.SyncBuffer) {
	t.Helper()
	var logs servertest.SyncBuffer
	stores := servertest.SharedStores(t)
	cfg := app.Config{
		DataDir: t.TempDir(), DatabaseURL: stores.DatabaseURL, MongoURI: stores.MongoURI,
		MongoDatabase: stores.MongoDatabase, RedisURL: stores.RedisURL, RedisPrefix: stores.RedisPrefix,
		Migrate: true, Version: "test",
	}
	if configure != nil {
		configure(&cfg)
	}
	return servertest.Start(t, cfg, slog.New(slog.NewTextHandler(&logs, nil))), &logs
}

func TestServerService_GetServerInfo(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.MaxRequestBytes = 1 << 20 }))
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := servertest.Client(srv, p, parleyv1connect.NewServerServiceClient)
			res, err := c.GetServerInfo(context.Background(), connect.NewRequest(&parleyv1.GetServerInfoRequest{}))
			if err != nil {
				t.Fatalf("GetServerInfo: %v", err)
			}
			if got, want := res.Msg.GetVersion(), "test"; got != want {
				t.Errorf("version = %q, want %q", got, want)
			}
			if got, want := res.Msg.GetMaxRequestBytes(), int64(1<<20); got != want {
				t.Errorf("max_request_bytes = %d, want %d", got, want)
			}
		})
	}
}

// TestServer_RequestLog checks that every request, answered by a handler
// or not, gets one log line with its procedure, protocol and code.
func TestServer_RequestLog(t *testing.T) {
	srv, logs := startLogged(t, nil)
	for _, p := range servertest.Protocols {
		c := servertest.Client(srv, p, parleyv1connect.NewServerServiceClient)
		if _, err := c.GetServerInfo(context.Background(), connect.NewRequest(&parleyv1.GetServerInfoRequest{})); err != nil {
			t.Fatalf("%s: GetServerInfo: %v", p.Name, err)
		}
	}
	res, err := http.Post(srv.URL+"/parley.v1.NoSuchService/Method", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}

	out := logs.String()
	for _, want := range []string{
		"procedure=/parley.v1.ServerService/GetServerInfo protocol=connect code=ok",
		"procedure=/parley.v1.ServerService/GetServerInfo protocol=grpc code=ok",
		"procedure=/parley.v1.ServerService/GetServerInfo protocol=grpcweb code=ok",
		// Nothing is routed before the caller is known.
		"procedure=/parley.v1.NoSuchService/Method protocol=connect code=unauthenticated",
	} {
		if got := strings.Count(out, want); got != 1 {
			t.Errorf("log has %d lines with %q, want 1; log:\n%s", got, want, out)
		}
	}
}

// TestServer_RequestTooLarge checks that a request over the size limit is
// refused before it is decoded.
func TestServer_RequestTooLarge(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) { c.MaxRequestBytes = 1024 }))
	body := `{"padding":"` + strings.Repeat("x", 4096) + `"}`
	res, err := http.Post(srv.URL+"/parley.v1.ServerService/GetServerInfo", "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var buf bytes.Buffer
	buf.ReadFrom(res.Body)
	if !strings.Contains(buf.String(), `"code":"resource_exhausted"`) {
		t.Errorf("oversize request: status %d, body %s; want resource_exhausted", res.StatusCode, buf.String())
	}
}

func TestServer_CORS(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(c *app.Config) {
		c.CORSOrigins = []string{"https://app.example"}
	}))
	preflight := func(origin string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(http.MethodOptions, srv.URL+"/parley.v1.ServerService/GetServerInfo", nil)
		req.Header.Set("Origin", origin)
		req.Header.Set("Access-Control-Request-Method", "POST")
		// Browsers send the header names sorted and in lower case.
		req.Header.Set("Access-Control-Request-Headers", "authorization,connect-protocol-version,content-type")
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		return res
	}
	if got := preflight("https://app.example").Header.Get("Access-Control-Allow-Origin"); got != "https://app.example" {
		t.Errorf("allowed origin: Access-Control-Allow-Origin = %q", got)
	}
	if got := preflight("https://evil.example").Header.Get("Access-Control-Allow-Origin"); got != "" {
		t.Errorf("other origin: Access-Control-Allow-Origin = %q, want none", got)
	}
}
