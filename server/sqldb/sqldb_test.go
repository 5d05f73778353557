package sqldb_test

import (
	"bytes"
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"entgo.io/ent/dialect"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/sqldb"
)

var discard = slog.New(slog.DiscardHandler)

// openDB returns a freshly migrated database of the given dialect.
func openDB(t *testing.T, dia string) *sqldb.DB {
	t.Helper()
	ctx := context.Background()
	var (
		db  *sqldb.DB
		err error
	)
	switch dia {
	case dialect.Postgres:
		db, err = sqldb.OpenPostgres(ctx, servertest.CreateDatabase(t))
	case dialect.SQLite:
		db, err = sqldb.OpenSQLite(ctx, filepath.Join(t.TempDir(), "parley.db"))
	}
	if err != nil {
		t.Fatalf("open %s: %v", dia, err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Migrate(ctx, discard); err != nil {
		t.Fatalf("migrate %s: %v", dia, err)
	}
	return db
}

// TestMigrations_MatchEntSchema fails when ent/schema changes without a
// new SQL migration: after the migrations ran, ent must find nothing to
// change.
func TestMigrations_MatchEntSchema(t *testing.T) {
	db := openDB(t, dialect.Postgres)
	var plan bytes.Buffer
	if err := db.Ent.Schema.WriteTo(context.Background(), &plan); err != nil {
		t.Fatalf("plan: %v", err)
	}
	for _, line := range strings.Split(plan.String(), "\n") {
		switch strings.TrimSpace(line) {
		case "", "BEGIN;", "COMMIT;":
		default:
			t.Errorf("ent/schema differs from ent/migrate/migrations; ent would run:\n%s", plan.String())
			return
		}
	}
}

// TestMigrate_Concurrent starts several instances' migrations at once on a
// fresh database, as a rolling deploy does: each file must apply once.
func TestMigrate_Concurrent(t *testing.T) {
	ctx := context.Background()
	url := servertest.CreateDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() {
			db, err := sqldb.OpenPostgres(ctx, url)
			if err != nil {
				errs[i] = err
				return
			}
			defer db.Close()
			errs[i] = db.Migrate(ctx, discard)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("migration %d: %v", i, err)
		}
	}
	db, err := sqldb.OpenPostgres(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pending, err := db.Pending(ctx)
	if err != nil {
		t.Fatalf("Pending: %v", err)
	}
	if pending {
		t.Error("migrations still pending after Migrate")
	}
}

func createUser(ctx context.Context, c *ent.Client, username, email string) (*ent.User, error) {
	return c.User.Create().
		SetUsername(username).
		SetEmail(email).
		SetPasswordHash("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2g").
		Save(ctx)
}

// TestSchema_Constraints checks the rules the database itself enforces, on
// both PostgreSQL and the embedded SQLite.
func TestSchema_Constraints(t *testing.T) {
	for _, dia := range []string{dialect.Postgres, dialect.SQLite} {
		t.Run(dia, func(t *testing.T) {
			ctx := context.Background()
			db := openDB(t, dia)
			c := db.Ent
			alice, err := createUser(ctx, c, "Alice", "alice@example.com")
			if err != nil {
				t.Fatalf("create user: %v", err)
			}

			t.Run("username unique regardless of case", func(t *testing.T) {
				_, err := createUser(ctx, c, "ALICE", "other@example.com")
				if !ent.IsConstraintError(err) {
					t.Errorf("duplicate username: err = %v, want a constraint error", err)
				}
			})
			t.Run("email unique regardless of case", func(t *testing.T) {
				_, err := createUser(ctx, c, "alice2", "Alice@Example.COM")
				if !ent.IsConstraintError(err) {
					t.Errorf("duplicate email: err = %v, want a constraint error", err)
				}
			})
			t.Run("one profile per user", func(t *testing.T) {
				if _, err := c.Profile.Create().SetUser(alice).Save(ctx); err != nil {
					t.Fatalf("first profile: %v", err)
				}
				_, err := c.Profile.Create().SetUser(alice).Save(ctx)
				if !ent.IsConstraintError(err) {
					t.Errorf("second profile: err = %v, want a constraint error", err)
				}
			})
			t.Run("profile needs a user", func(t *testing.T) {
				_, err := db.SQL.ExecContext(ctx, `INSERT INTO profile (user_id, created_at) VALUES (999999, CURRENT_TIMESTAMP)`)
				if err == nil {
					t.Error("profile of a missing user was stored")
				}
			})
			t.Run("at most one active avatar", func(t *testing.T) {
				if _, err := c.Avatar.Create().SetUserID(alice.ID).SetAvatarURL("/a/1").SetIsActive(true).Save(ctx); err != nil {
					t.Fatalf("first active avatar: %v", err)
				}
				if _, err := c.Avatar.Create().SetUserID(alice.ID).SetAvatarURL("/a/2").Save(ctx); err != nil {
					t.Fatalf("inactive avatar: %v", err)
				}
				_, err := c.Avatar.Create().SetUserID(alice.ID).SetAvatarURL("/a/3").SetIsActive(true).Save(ctx)
				if !ent.IsConstraintError(err) {
					t.Errorf("second active avatar: err = %v, want a constraint error", err)
				}
				n, err := c.Avatar.Query().Count(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := n, 2; got != want {
					t.Errorf("avatars stored = %d, want %d", got, want)
				}
			})
			t.Run("deleting a user deletes its profile and avatars", func(t *testing.T) {
				bob, err := createUser(ctx, c, "bob", "bob@example.com")
				if err != nil {
					t.Fatal(err)
				}
				c.Profile.Create().SetUser(bob).SaveX(ctx)
				c.Avatar.Create().SetUserID(bob.ID).SetAvatarURL("/b/1").SetIsActive(true).SaveX(ctx)
				c.User.DeleteOne(bob).ExecX(ctx)
				if n := c.Avatar.Query().CountX(ctx) + c.Profile.Query().CountX(ctx); n != 3 {
					t.Errorf("rows left = %d, want alice's 3", n)
				}
			})
		})
	}
}

// TestSchema_PostgresLimits checks the seed's column limits in PostgreSQL
// itself, below ent's validators.
func TestSchema_PostgresLimits(t *testing.T) {
	ctx := context.Background()
	db := openDB(t, dialect.Postgres)
	long := func(n int) string { return strings.Repeat("x", n) }
	cases := []struct {
		name                   string
		username, email, phone string
	}{
		{"username over 50", long(51), "a@example.com", "1"},
		{"email over 100", "a", long(101), "1"},
		{"phone over 15", "a", "a@example.com", long(16)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := db.SQL.ExecContext(ctx,
				`INSERT INTO users (username, email, password_hash, phone_number) VALUES ($1, $2, 'h', $3)`,
				tc.username, tc.email, tc.phone)
			if err == nil {
				t.Error("over-long value was stored")
			}
		})
	}
}
