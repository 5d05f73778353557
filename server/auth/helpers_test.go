package auth_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/redisconn"
	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/sqldb"
	"github.com/parley-chat/parley/server/user"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// countUsers returns how many users the database holds.
func countUsers(t *testing.T, srv *servertest.Server) int {
	t.Helper()
	n, err := srv.App.DB().Ent.User.Query().Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }

// standaloneAuth is the authentication service alone on the package's
// stores, without the rest of a server, for tests that stand between it
// and the user domain.
type standaloneAuth struct {
	users *user.Service
	authn *auth.Service
	// mux serves AuthService; public names its procedures that take no
	// token, for authn.Middleware.
	mux    *http.ServeMux
	public auth.Public
}

// newStandaloneAuth returns the service, whose accounts are the user
// domain's as wrap returns them (nil: as they are).
func newStandaloneAuth(tb testing.TB, wrap func(auth.Accounts) auth.Accounts) *standaloneAuth {
	tb.Helper()
	stores := servertest.SharedStores(tb)
	ctx := context.Background()
	db, err := sqldb.OpenPostgres(ctx, stores.DatabaseURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		tb.Fatal(err)
	}
	// A single Redis or a Redis Cluster, as the tests run on.
	rdb, err := redisconn.Open(ctx, stores.RedisURL)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { rdb.Close() })
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	keys, err := keyring.New(key)
	if err != nil {
		tb.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	users := user.New(log, db, nil, nil)
	var accounts auth.Accounts = users
	if wrap != nil {
		accounts = wrap(users)
	}
	authn, err := auth.New(log, rdb, accounts, auth.Config{
		Keys: keys, AccessTTL: 15 * time.Minute, RefreshTTL: time.Hour, RedisPrefix: stores.RedisPrefix + "standalone:",
	})
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle(parleyv1connect.NewAuthServiceHandler(authn))
	return &standaloneAuth{users: users, authn: authn, mux: mux, public: auth.Public{Procedures: map[string]bool{
		parleyv1connect.AuthServiceRegisterProcedure: true,
		parleyv1connect.AuthServiceLoginProcedure:    true,
	}}}
}
