package auth_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
)

// BenchmarkLogin measures logins per second through a complete server:
// the Argon2id check dominates, and the machine's cores bound it.
func BenchmarkLogin(b *testing.B) {
	srv := servertest.New(b)
	c := servertest.NewClients(srv, servertest.Protocols[0])
	name := servertest.Register(b, c.Auth, servertest.UniqueName("bench")).Username
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: servertest.Password})); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "logins/s")
}

// BenchmarkAuthOverhead compares GetMe behind the authentication middleware
// (JWT check plus the Redis session lookup) with the same handler reached
// with the caller injected, 16 callers at a time, and reports latency
// percentiles. The two sub-benchmarks share one process and stores, so
// their ratio is the overhead of authentication.
func BenchmarkAuthOverhead(b *testing.B) {
	ctx := context.Background()
	a := newStandaloneAuth(b, nil)
	users, authn, mux, public := a.users, a.authn, a.mux, a.public
	mux.Handle(parleyv1connect.NewUserServiceHandler(users))

	withAuth := httptest.NewServer(authn.Middleware(public, mux))
	defer withAuth.Close()
	reg := servertest.Register(b, parleyv1connect.NewAuthServiceClient(http.DefaultClient, withAuth.URL), servertest.UniqueName("overhead"))
	caller := auth.Identity{UserID: int(reg.ID), SessionID: reg.Tokens.GetSessionId()}
	bypass := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), caller)))
	}))
	defer bypass.Close()

	token := reg.Token
	for _, callers := range []int{1, 16} {
		for _, bc := range []struct {
			name string
			url  string
		}{{"bypass", bypass.URL}, {"auth", withAuth.URL}} {
			b.Run(fmt.Sprintf("callers=%d/%s", callers, bc.name), func(b *testing.B) {
				client := parleyv1connect.NewUserServiceClient(&http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}, bc.url)
				latencies := servertest.Concurrently(b, callers, func(int) error {
					_, err := client.GetMe(ctx, servertest.WithToken(&parleyv1.GetMeRequest{}, token))
					return err
				})
				b.ReportMetric(microseconds(servertest.Percentile(latencies, 0.50)), "p50-µs")
				b.ReportMetric(microseconds(servertest.Percentile(latencies, 0.99)), "p99-µs")
			})
		}
	}
}

func microseconds(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
