package user_test

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/parley-chat/parley/server/servertest"
	"github.com/parley-chat/parley/server/sqldb"
	"github.com/parley-chat/parley/server/user"
)

// queries records the SQL of the statements a connection runs, with
// their arguments.
type queries struct {
	mu   sync.Mutex
	seen []pgx.TraceQueryStartData
}

func (q *queries) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.seen = append(q.seen, d)
	return ctx
}

func (q *queries) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestSearch_PlanReadsOnePage: SearchUsers' query, for a first page and
// for one after a cursor, is answered in the index's order (no sort),
// from the index on the search key and id, however many users a short
// prefix matches. The plan is asked with sequential scans off, so that a
// query the index cannot answer shows as one (the table is small).
func TestSearch_PlanReadsOnePage(t *testing.T) {
	ctx := context.Background()
	rec := &queries{}
	db, err := sqldb.OpenPostgresTraced(ctx, servertest.CreateDatabase(t), rec)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for _, cursor := range []struct {
		key string
		id  int
	}{{"", 0}, {"alice", 7}} {
		rec.mu.Lock()
		rec.seen = nil
		rec.mu.Unlock()
		if _, err := user.SearchStore(ctx, db, "a", cursor.key, cursor.id, 20); err != nil {
			t.Fatalf("search: %v", err)
		}
		rec.mu.Lock()
		var q *pgx.TraceQueryStartData
		for i := range rec.seen {
			if strings.Contains(rec.seen[i].SQL, `FROM "users"`) {
				q = &rec.seen[i]
				break
			}
		}
		rec.mu.Unlock()
		if q == nil {
			t.Fatal("no query of the users table")
		}
		tx, err := db.SQL.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
			t.Fatal(err)
		}
		rows, err := tx.QueryContext(ctx, "EXPLAIN "+q.SQL, q.Args...)
		if err != nil {
			t.Fatalf("EXPLAIN %s: %v", q.SQL, err)
		}
		var plan strings.Builder
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			fmt.Fprintln(&plan, line)
		}
		rows.Close()
		_ = tx.Rollback()
		if !strings.Contains(plan.String(), "users_username_search_order") || strings.Contains(plan.String(), "Sort") ||
			strings.Contains(plan.String(), `Seq Scan on users`) {
			t.Errorf("cursor %v: the plan of\n%s\n%s", cursor, q.SQL, plan.String())
		}
	}
}

// TestSearch_SQLite: the embedded store pages the search by the same
// cursor (a row comparison, which SQLite has too).
func TestSearch_SQLite(t *testing.T) {
	ctx := context.Background()
	db, err := sqldb.OpenSQLite(ctx, filepath.Join(t.TempDir(), "parley.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Migrate(ctx, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"ann", "anna", "bob", "annie"} {
		if err := db.Ent.User.Create().SetUsername(name).SetUsernameKey(name).SetEmail(name + "@example.com").SetPasswordHash("x").Exec(ctx); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	key, id := "", 0
	for range 4 {
		page, err := user.SearchStore(ctx, db, "an", key, id, 2)
		if err != nil {
			t.Fatalf("search: %v", err)
		}
		if len(page) == 0 {
			break
		}
		for _, u := range page {
			got = append(got, u.Username)
		}
		last := page[len(page)-1]
		key, id = *last.UsernameKey, last.ID
	}
	if want := []string{"ann", "anna", "annie"}; !slices.Equal(got, want) {
		t.Errorf("pages of 2 of the names starting with \"an\": %v, want %v", got, want)
	}
}
