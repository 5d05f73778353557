package health_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"connectrpc.com/connect"
	healthv1 "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/parley-chat/parley/server/app"
	"github.com/parley-chat/parley/server/health"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

type healthClient struct {
	check *connect.Client[healthv1.HealthCheckRequest, healthv1.HealthCheckResponse]
	watch *connect.Client[healthv1.HealthCheckRequest, healthv1.HealthCheckResponse]
}

func newHealthClient(srv *servertest.Server, p servertest.Protocol) healthClient {
	return healthClient{
		check: connect.NewClient[healthv1.HealthCheckRequest, healthv1.HealthCheckResponse](
			p.HTTPClient, srv.URL+healthv1.Health_Check_FullMethodName, p.Options...),
		watch: connect.NewClient[healthv1.HealthCheckRequest, healthv1.HealthCheckResponse](
			p.HTTPClient, srv.URL+healthv1.Health_Watch_FullMethodName, p.Options...),
	}
}

func (c healthClient) status(t *testing.T, service string) healthv1.HealthCheckResponse_ServingStatus {
	t.Helper()
	res, err := c.check.CallUnary(context.Background(), connect.NewRequest(&healthv1.HealthCheckRequest{Service: service}))
	if err != nil {
		t.Fatalf("Check(%q): %v", service, err)
	}
	return res.Msg.GetStatus()
}

// nextStatus waits for the next message on a Watch stream.
func nextStatus(t *testing.T, stream *connect.ServerStreamForClient[healthv1.HealthCheckResponse]) healthv1.HealthCheckResponse_ServingStatus {
	t.Helper()
	if !stream.Receive() {
		t.Fatalf("Watch ended: %v", stream.Err())
	}
	return stream.Msg().GetStatus()
}

func TestHealth_Check(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			c := newHealthClient(srv, p)
			for _, service := range []string{"", "parley.v1.ServerService"} {
				if got, want := c.status(t, service), healthv1.HealthCheckResponse_SERVING; got != want {
					t.Errorf("Check(%q) = %v, want %v", service, got, want)
				}
			}
			_, err := c.check.CallUnary(context.Background(), connect.NewRequest(&healthv1.HealthCheckRequest{Service: "no.such.Service"}))
			servertest.WantCode(t, err, connect.CodeNotFound)
		})
	}
}

// TestHealth_StoreOutage cuts the connection to one store at a time and
// checks that health follows: NOT_SERVING while the store is unreachable,
// SERVING again once it is back, with no restart.
func TestHealth_StoreOutage(t *testing.T) {
	stores := servertest.SharedStores(t)
	cases := []struct {
		store string
		route func(cfg *app.Config, proxy func(hostport string) string)
	}{
		{"redis", func(cfg *app.Config, proxy func(string) string) {
			cfg.RedisURL = replaceHost(t, stores.RedisURL, proxy)
		}},
		{"mongodb", func(cfg *app.Config, proxy func(string) string) {
			cfg.MongoURI = replaceHost(t, stores.MongoURI, proxy)
		}},
	}
	for _, tc := range cases {
		for _, p := range servertest.Protocols {
			t.Run(tc.store+"/"+p.Name, func(t *testing.T) {
				var px *servertest.Proxy
				srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) {
					tc.route(cfg, func(hostport string) string {
						px = servertest.NewProxy(t, hostport)
						return px.Addr()
					})
				}))
				c := newHealthClient(srv, p)
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				stream, err := c.watch.CallServerStream(ctx, connect.NewRequest(&healthv1.HealthCheckRequest{}))
				if err != nil {
					t.Fatalf("Watch: %v", err)
				}
				defer stream.Close()

				if got, want := nextStatus(t, stream), healthv1.HealthCheckResponse_SERVING; got != want {
					t.Fatalf("status before the outage = %v, want %v", got, want)
				}
				px.Break()
				if got, want := nextStatus(t, stream), healthv1.HealthCheckResponse_NOT_SERVING; got != want {
					t.Fatalf("status during the outage = %v, want %v", got, want)
				}
				if got, want := c.status(t, ""), healthv1.HealthCheckResponse_NOT_SERVING; got != want {
					t.Errorf("Check during the outage = %v, want %v", got, want)
				}
				wantProbe(t, srv, health.ReadyPath, http.StatusServiceUnavailable, "unreachable: "+tc.store)
				wantProbe(t, srv, health.LivePath, http.StatusOK, "ok")
				px.Restore()
				if got, want := nextStatus(t, stream), healthv1.HealthCheckResponse_SERVING; got != want {
					t.Fatalf("status after the outage = %v, want %v", got, want)
				}
				if got, want := c.status(t, ""), healthv1.HealthCheckResponse_SERVING; got != want {
					t.Errorf("Check after the outage = %v, want %v", got, want)
				}
				wantProbe(t, srv, health.ReadyPath, http.StatusOK, "ready")
			})
		}
	}
}

// TestHealth_WatchEndsOnShutdown checks that a graceful shutdown first
// reports NOT_SERVING to watchers and then ends their streams cleanly,
// instead of waiting for them or cutting them.
func TestHealth_WatchEndsOnShutdown(t *testing.T) {
	for _, p := range servertest.Protocols {
		t.Run(p.Name, func(t *testing.T) {
			srv := servertest.New(t)
			c := newHealthClient(srv, p)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			stream, err := c.watch.CallServerStream(ctx, connect.NewRequest(&healthv1.HealthCheckRequest{}))
			if err != nil {
				t.Fatalf("Watch: %v", err)
			}
			defer stream.Close()
			if got, want := nextStatus(t, stream), healthv1.HealthCheckResponse_SERVING; got != want {
				t.Fatalf("first status = %v, want %v", got, want)
			}

			stopped := make(chan error, 1)
			go func() { stopped <- srv.Stop() }()

			if got, want := nextStatus(t, stream), healthv1.HealthCheckResponse_NOT_SERVING; got != want {
				t.Fatalf("status on shutdown = %v, want %v", got, want)
			}
			if stream.Receive() {
				t.Fatalf("got %v after NOT_SERVING, want the end of the stream", stream.Msg().GetStatus())
			}
			if err := stream.Err(); err != nil {
				t.Errorf("stream ended with %v, want a clean end", err)
			}
			if err := <-stopped; err != nil {
				t.Errorf("Stop: %v", err)
			}
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				t.Error("the stream did not end before the test's deadline")
			}
		})
	}
}

// TestReadiness_DrainDelay stops a server with a drain delay: while it
// still serves, /readyz says it is draining, so that a load balancer moves
// away before the listener closes.
func TestReadiness_DrainDelay(t *testing.T) {
	srv := servertest.New(t, servertest.WithConfig(func(cfg *app.Config) { cfg.DrainDelay = 5 * time.Second }))
	wantProbe(t, srv, health.ReadyPath, http.StatusOK, "ready")
	stopped := make(chan error, 1)
	go func() { stopped <- srv.Stop() }()
	deadline := time.Now().Add(5 * time.Second)
	for {
		res, err := http.Get(srv.URL + health.ReadyPath)
		if err != nil {
			t.Fatalf("GET /readyz while draining: %v (the listener closed before the delay ended)", err)
		}
		body, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode == http.StatusServiceUnavailable && strings.TrimSpace(string(body)) == "draining" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /readyz = %d %q during the drain delay, want 503 \"draining\"", res.StatusCode, body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := <-stopped; err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// wantProbe checks the status and body of a plain HTTP health probe,
// called as an orchestrator does: a GET without credentials.
func wantProbe(t *testing.T, srv *servertest.Server, path string, status int, body string) {
	t.Helper()
	res, err := http.Get(srv.URL + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	if res.StatusCode != status || strings.TrimSpace(string(b)) != body {
		t.Errorf("GET %s = %d %q, want %d %q", path, res.StatusCode, b, status, body)
	}
}

// TestReadyHandler_Draining checks that readiness turns false as soon as
// a shutdown begins, before the listener closes.
func TestReadyHandler_Draining(t *testing.T) {
	m := health.NewMonitor(slog.New(slog.DiscardHandler), time.Hour, time.Second,
		[]health.Probe{{Name: "redis", Ping: func(context.Context) error { return nil }}})
	h := health.ReadyHandler(m)
	probe := func() (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, health.ReadyPath, nil))
		return rec.Code, strings.TrimSpace(rec.Body.String())
	}
	if code, body := probe(); code != http.StatusServiceUnavailable || body != "not checked yet" {
		t.Errorf("before the first round: %d %q, want 503 \"not checked yet\"", code, body)
	}
	m.CheckNow(context.Background())
	if code, body := probe(); code != http.StatusOK || body != "ready" {
		t.Errorf("after a round: %d %q, want 200 \"ready\"", code, body)
	}
	m.Shutdown()
	if code, body := probe(); code != http.StatusServiceUnavailable || body != "draining" {
		t.Errorf("after Shutdown: %d %q, want 503 \"draining\"", code, body)
	}
}

// replaceHost returns rawURL with its host:port replaced by route(host:port).
func replaceHost(t *testing.T, rawURL string, route func(hostport string) string) string {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("parse %q: %v", rawURL, err)
	}
	u.Host = route(u.Host)
	return u.String()
}
