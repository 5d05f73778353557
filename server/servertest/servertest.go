// Package servertest starts complete Parley servers in-process for
// integration tests, on real stores: PostgreSQL and Redis from
// PARLEY_TEST_DATABASE_URL and PARLEY_TEST_REDIS_URL (default: the local
// services on their standard ports), MongoDB from PARLEY_TEST_MONGO_URI or,
// when that is unset, an embedded FerretDB.
//
// Each test binary (so each package) works in its own PostgreSQL database,
// Redis key prefix and MongoDB database, created on first use and removed
// when the package's tests end. Packages that use it call Main from their
// TestMain:
//
//	func TestMain(m *testing.M) { servertest.Main(m) }
//
// It also holds what the packages' tests share, written once: accounts
// (Register, UniqueName), requests and their checks (NewClients,
// WithToken, WantCode), chats and messages (PrivateChat, GroupChat, Send,
// ListMessagesAfter), benchmarks (Concurrently, Percentile), store calls
// counted per RPC (StoreCalls, WithStoreCalls), mail (WithMail points a
// server at the package's Mailpit, an SMTP server whose API returns what
// it received: SharedMailpit, WaitMail), a Redis of a test's own that it
// may restart or reconfigure (StartRedis) and a SyncBuffer for output
// read while it is written.
package servertest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/embedded"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/redisconn"
)

// Default addresses of the local services, used when the environment names
// none.
const (
	DefaultDatabaseURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
)

// Stores names the stores one test package works in.
type Stores struct {
	// DatabaseURL points at the package's own PostgreSQL database.
	DatabaseURL string
	// MongoURI and MongoDatabase name the package's MongoDB database.
	MongoURI      string
	MongoDatabase string
	// RedisURL and RedisPrefix name the package's Redis key space.
	RedisURL    string
	RedisPrefix string
	// RedisCluster tells that RedisURL is a Redis Cluster's.
	RedisCluster bool
	// JWTKeyFile holds the signing key all the package's servers share,
	// as the instances of one deployment do.
	JWTKeyFile string
}

var shared struct {
	mu       sync.Mutex
	inMain   bool
	stores   *Stores
	cleanups []func() error
}

// Main runs the package's tests, then removes the stores they used, and
// exits with the tests' status.
func Main(m *testing.M) {
	shared.mu.Lock()
	shared.inMain = true
	shared.mu.Unlock()
	code := m.Run()
	shared.mu.Lock()
	for i := len(shared.cleanups) - 1; i >= 0; i-- {
		if err := shared.cleanups[i](); err != nil {
			fmt.Fprintln(os.Stderr, "servertest: cleanup:", err)
			if code == 0 {
				code = 1
			}
		}
	}
	shared.mu.Unlock()
	os.Exit(code)
}

// SharedStores returns the package's stores, creating them on first use.
func SharedStores(tb testing.TB) *Stores {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if !shared.inMain {
		tb.Fatal("servertest: call servertest.Main(m) from the package's TestMain")
	}
	if shared.stores != nil {
		return shared.stores
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := &Stores{}
	var err error
	if s.DatabaseURL, err = createPostgres(ctx); err != nil {
		tb.Fatalf("servertest: %v", err)
	}
	if s.MongoURI, s.MongoDatabase, err = createMongo(ctx); err != nil {
		tb.Fatalf("servertest: %v", err)
	}
	if s.RedisURL, s.RedisPrefix, s.RedisCluster, err = createRedis(ctx); err != nil {
		tb.Fatalf("servertest: %v", err)
	}
	if s.JWTKeyFile, err = createKey(); err != nil {
		tb.Fatalf("servertest: %v", err)
	}
	shared.stores = s
	return s
}

// AdminDatabaseURL returns the URL of the PostgreSQL server's maintenance
// database that tests create their databases from.
func AdminDatabaseURL() string {
	if u := os.Getenv("PARLEY_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultDatabaseURL
}

// RedisURL returns the URL of the Redis server tests use:
// PARLEY_TEST_REDIS_URL, or the local one on its standard port.
func RedisURL() string {
	if u := os.Getenv("PARLEY_TEST_REDIS_URL"); u != "" {
		return u
	}
	return DefaultRedisURL
}

// CreateDatabase creates an empty PostgreSQL database, dropped when tb's
// test ends, and returns its URL.
func CreateDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dbURL, drop, err := newDatabase(ctx)
	if err != nil {
		tb.Fatalf("servertest: %v", err)
	}
	tb.Cleanup(func() {
		if err := drop(); err != nil {
			tb.Errorf("servertest: %v", err)
		}
	})
	return dbURL
}

func createPostgres(ctx context.Context) (string, error) {
	dbURL, drop, err := newDatabase(ctx)
	if err != nil {
		return "", err
	}
	shared.cleanups = append(shared.cleanups, drop)
	return dbURL, nil
}

func newDatabase(ctx context.Context) (dbURL string, drop func() error, err error) {
	admin := AdminDatabaseURL()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return "", nil, fmt.Errorf("postgres at %s: %w (set PARLEY_TEST_DATABASE_URL, or run the tests with `make test`)", admin, err)
	}
	defer conn.Close(ctx)
	name := "parley_test_" + randomHex()
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	u, err := url.Parse(admin)
	if err != nil {
		return "", nil, fmt.Errorf("PARLEY_TEST_DATABASE_URL: %w", err)
	}
	u.Path = "/" + name
	drop = func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	return u.String(), drop, nil
}

func createMongo(ctx context.Context) (uri, database string, err error) {
	database = "parley_test_" + randomHex()
	uri = os.Getenv("PARLEY_TEST_MONGO_URI")
	if uri == "" {
		dir, err := os.MkdirTemp("", "parley-ferretdb-")
		if err != nil {
			return "", "", err
		}
		log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
		m, err := embedded.StartMongo(dir, log)
		if err != nil {
			os.RemoveAll(dir)
			return "", "", err
		}
		shared.cleanups = append(shared.cleanups, func() error {
			m.Close()
			return os.RemoveAll(dir)
		})
		return m.URI(), database, nil
	}
	shared.cleanups = append(shared.cleanups, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		client, err := mongo.Connect(options.Client().ApplyURI(uri))
		if err != nil {
			return fmt.Errorf("drop mongo database: %w", err)
		}
		defer client.Disconnect(ctx)
		return client.Database(database).Drop(ctx)
	})
	return uri, database, nil
}

func createRedis(ctx context.Context) (redisURL, prefix string, cluster bool, err error) {
	redisURL = RedisURL()
	client, err := redisconn.Open(ctx, redisURL)
	if err != nil {
		return "", "", false, fmt.Errorf("redis at %s: %w (set PARLEY_TEST_REDIS_URL, or run the tests with `make test`)", redisURL, err)
	}
	prefix = "parley_test_" + randomHex() + ":"
	shared.cleanups = append(shared.cleanups, func() error {
		defer client.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		return redisconn.ForEachPrimary(ctx, client, func(ctx context.Context, c *redis.Client) error {
			var errs []error
			iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
			for iter.Next(ctx) {
				errs = append(errs, c.Del(ctx, iter.Val()).Err())
			}
			errs = append(errs, iter.Err())
			return errors.Join(errs...)
		})
	})
	return redisURL, prefix, redisconn.IsCluster(client), nil
}

func randomHex() string {
	b := make([]byte, 6)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// NewKeyFile writes a new signing key to a file of its own, for a server
// of a test's (app.Config.JWTKeyFile or JWTVerifyKeyFiles), and returns
// the file and the key.
func NewKeyFile(tb testing.TB) (string, ed25519.PrivateKey) {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "key.pem")
	key, err := keyring.LoadOrCreateKey(path, true)
	if err != nil {
		tb.Fatal(err)
	}
	return path, key
}

func createKey() (string, error) {
	dir, err := os.MkdirTemp("", "parley-key-")
	if err != nil {
		return "", err
	}
	shared.cleanups = append(shared.cleanups, func() error { return os.RemoveAll(dir) })
	path := filepath.Join(dir, "jwt-ed25519.pem")
	_, err = keyring.LoadOrCreateKey(path, true)
	return path, err
}

// SkipOnRedisCluster skips a test whose set-up does not hold on a Redis
// Cluster, saying why.
func SkipOnRedisCluster(tb testing.TB, why string) {
	tb.Helper()
	if SharedStores(tb).RedisCluster {
		tb.Skip("on a Redis Cluster: " + why)
	}
}

// SkipOnEmbeddedMongo skips a test that takes minutes on the embedded
// FerretDB 1.x, which answers every query by scanning: it runs where
// PARLEY_TEST_MONGO_URI names a real engine (as scripts/with-test-services
// provides), or with PARLEY_TEST_SLOW_EMBEDDED=1. The chat store's tests
// that `make test-embedded` runs on FerretDB 1.x do not call it.
func SkipOnEmbeddedMongo(tb testing.TB) {
	tb.Helper()
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" && os.Getenv("PARLEY_TEST_SLOW_EMBEDDED") == "" {
		tb.Skip("minutes on the embedded FerretDB 1.x: set PARLEY_TEST_MONGO_URI to a real engine, or PARLEY_TEST_SLOW_EMBEDDED=1")
	}
}
