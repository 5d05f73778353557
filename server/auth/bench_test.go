package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/sqldb"
	"github.com/parley-chat/parley/server/user"
)

// BenchmarkLogin measures logins per second through a complete server:
// the Argon2id check dominates, and the machine's cores bound it.
func BenchmarkLogin(b *testing.B) {
	srv := servertest.New(b)
	c := newClients(srv, servertest.Protocols[0])
	name := uniqueName("bench")
	if _, err := c.auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
		Username: name, Email: name + "@example.com", Password: password,
	})); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: password})); err != nil {
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
	stores := servertest.SharedStores(b)
	ctx := context.Background()
	db, err := sqldb.OpenPostgres(ctx, stores.DatabaseURL)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		b.Fatal(err)
	}
	opts, _ := redis.ParseURL(stores.RedisURL)
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	_, key, _ := ed25519.GenerateKey(rand.Reader)
	log := slog.New(slog.DiscardHandler)
	users := user.New(log, db, nil, nil)
	authn, err := auth.New(log, rdb, users, auth.Config{
		Key: key, AccessTTL: 15 * time.Minute, RefreshTTL: time.Hour, RedisPrefix: stores.RedisPrefix + "bench:",
	})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(parleyv1connect.NewUserServiceHandler(users))
	mux.Handle(parleyv1connect.NewAuthServiceHandler(authn))
	public := auth.Public{Procedures: map[string]bool{parleyv1connect.AuthServiceRegisterProcedure: true}}

	withAuth := httptest.NewServer(authn.Middleware(public, mux))
	defer withAuth.Close()
	name := uniqueName("overhead")
	reg, err := parleyv1connect.NewAuthServiceClient(http.DefaultClient, withAuth.URL).Register(ctx,
		connect.NewRequest(&parleyv1.RegisterRequest{Username: name, Email: name + "@example.com", Password: password}))
	if err != nil {
		b.Fatal(err)
	}
	caller := auth.Identity{UserID: int(reg.Msg.GetMe().GetUser().GetId()), SessionID: reg.Msg.GetTokens().GetSessionId()}
	bypass := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mux.ServeHTTP(w, r.WithContext(auth.NewContext(r.Context(), caller)))
	}))
	defer bypass.Close()

	token := reg.Msg.GetTokens().GetAccessToken()
	for _, callers := range []int{1, 16} {
		for _, bc := range []struct {
			name string
			url  string
		}{{"bypass", bypass.URL}, {"auth", withAuth.URL}} {
			b.Run(fmt.Sprintf("callers=%d/%s", callers, bc.name), func(b *testing.B) {
				client := parleyv1connect.NewUserServiceClient(&http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}}, bc.url)
				latencies := callConcurrently(b, callers, func() error {
					_, err := client.GetMe(ctx, withToken(&parleyv1.GetMeRequest{}, token))
					return err
				})
				b.ReportMetric(percentile(latencies, 0.50), "p50-µs")
				b.ReportMetric(percentile(latencies, 0.99), "p99-µs")
			})
		}
	}
}

// callConcurrently makes b.N calls from n goroutines and returns each
// call's latency.
func callConcurrently(b *testing.B, n int, call func() error) []time.Duration {
	latencies := make([]time.Duration, b.N)
	var next sync.Mutex
	i := 0
	var wg sync.WaitGroup
	b.ResetTimer()
	for range n {
		wg.Go(func() {
			for {
				next.Lock()
				if i >= b.N {
					next.Unlock()
					return
				}
				slot := i
				i++
				next.Unlock()
				start := time.Now()
				if err := call(); err != nil {
					b.Error(err)
					return
				}
				latencies[slot] = time.Since(start)
			}
		})
	}
	wg.Wait()
	return latencies
}

func percentile(d []time.Duration, q float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[int(q*float64(len(s)-1))].Nanoseconds()) / 1e3
}
