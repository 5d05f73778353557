// Package sqldb opens Parley's relational database (PostgreSQL in
// production, SQLite for the zero-setup default) behind an ent client and
// keeps its schema current.
//
// PostgreSQL is migrated with the versioned SQL files in
// ent/migrate/migrations, applied by goose under a session advisory lock so
// that several instances starting at once apply each file exactly once.
// SQLite, which only ever serves one embedded instance, uses ent's
// auto-migration plus the indexes ent cannot express.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"entgo.io/ent/dialect"
	entsql "entgo.io/ent/dialect/sql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/migrate/migrations"
)

// DB is an open relational database with its ent client.
type DB struct {
	// Ent is the ent client over SQL.
	Ent *ent.Client
	// SQL is the underlying connection pool.
	SQL *sql.DB
	// Dialect is dialect.Postgres or dialect.SQLite.
	Dialect string
}

// OpenPostgres opens a PostgreSQL database through pgx. The url is a
// PostgreSQL connection string such as
// "postgres://user:pass@host:5432/parley?sslmode=disable".
func OpenPostgres(ctx context.Context, url string) (*DB, error) {
	return OpenPostgresTraced(ctx, url, nil)
}

// OpenPostgresTraced is OpenPostgres with every query traced by tracer
// (none when nil).
func OpenPostgresTraced(ctx context.Context, url string, tracer pgx.QueryTracer) (*DB, error) {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("open postgres: %w", err)
	}
	cfg.Tracer = tracer
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(32)
	db.SetMaxIdleConns(16)
	db.SetConnMaxIdleTime(5 * time.Minute)
	return open(ctx, db, dialect.Postgres)
}

// OpenSQLite opens (creating if needed) the SQLite database file at path.
func OpenSQLite(ctx context.Context, path string) (*DB, error) {
	dsn := "file:" + path +
		"?_pragma=foreign_keys(1)&_pragma=journal_mode(WAL)&_pragma=busy_timeout(10000)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open sqlite: %w", err)
	}
	return open(ctx, db, dialect.SQLite)
}

func open(ctx context.Context, db *sql.DB, dia string) (*DB, error) {
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("ping %s: %w", dia, err)
	}
	client := ent.NewClient(ent.Driver(entsql.OpenDB(dia, db)))
	return &DB{Ent: client, SQL: db, Dialect: dia}, nil
}

// Ping checks that the database answers.
func (db *DB) Ping(ctx context.Context) error {
	return db.SQL.PingContext(ctx)
}

// Close closes the connection pool.
func (db *DB) Close() error {
	return db.Ent.Close()
}

// sqliteExtraIndexes are the indexes ent cannot declare; PostgreSQL gets
// them from the SQL migrations.
var sqliteExtraIndexes = []string{
	`CREATE UNIQUE INDEX IF NOT EXISTS users_lower_username_key ON users (lower(username))`,
	`CREATE UNIQUE INDEX IF NOT EXISTS users_lower_email_key ON users (lower(email))`,
}

// Migrate brings the schema up to date and reports what it applied.
func (db *DB) Migrate(ctx context.Context, log *slog.Logger) error {
	switch db.Dialect {
	case dialect.Postgres:
		return migratePostgres(ctx, db.SQL, log)
	case dialect.SQLite:
		if err := db.Ent.Schema.Create(ctx); err != nil {
			return fmt.Errorf("migrate sqlite: %w", err)
		}
		for _, stmt := range sqliteExtraIndexes {
			if _, err := db.SQL.ExecContext(ctx, stmt); err != nil {
				return fmt.Errorf("migrate sqlite: %w", err)
			}
		}
		return nil
	default:
		return fmt.Errorf("migrate: unknown dialect %q", db.Dialect)
	}
}

// Pending reports whether PostgreSQL migrations remain to be applied.
func (db *DB) Pending(ctx context.Context) (bool, error) {
	if db.Dialect != dialect.Postgres {
		return false, errors.New("pending: versioned migrations are for postgres only")
	}
	p, err := newProvider(db.SQL)
	if err != nil {
		return false, err
	}
	return p.HasPending(ctx)
}

func migratePostgres(ctx context.Context, db *sql.DB, log *slog.Logger) error {
	p, err := newProvider(db)
	if err != nil {
		return err
	}
	results, err := p.Up(ctx)
	if err != nil {
		return fmt.Errorf("migrate postgres: %w", err)
	}
	for _, r := range results {
		log.Info("applied migration", "file", r.Source.Path, "duration", r.Duration)
	}
	return nil
}

func newProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker()
	if err != nil {
		return nil, fmt.Errorf("migration lock: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, migrations.FS,
		goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true),
	)
	if err != nil {
		return nil, fmt.Errorf("migrations: %w", err)
	}
	return p, nil
}
