// Package embedded starts the in-process stand-ins that make `go run .` work
// with no outside services: FerretDB on SQLite for the MongoDB API and
// miniredis for Redis. (PostgreSQL's stand-in, SQLite under ent, lives in
// server/sqldb.) Only the program's entry point and the test harness import
// this package, because FerretDB adds tens of megabytes and seconds of build
// time to whatever imports it.
package embedded

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"github.com/alicebob/miniredis/v2"
)

// Mongo is a running FerretDB that stores its data in SQLite files.
type Mongo struct {
	uri    string
	cancel context.CancelFunc
	done   chan struct{}
}

// StartMongo starts FerretDB on a free loopback port, keeping its data in
// dir (created if needed). FerretDB's own log is kept to errors, since it
// logs every error response it sends.
func StartMongo(dir string, log *slog.Logger) (*Mongo, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("embedded mongo: %w", err)
	}
	level := new(slog.LevelVar)
	level.Set(slog.LevelError)
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
		Logger:    slog.New(levelHandler{Handler: log.Handler(), level: level}),
	})
	if err != nil {
		return nil, fmt.Errorf("embedded mongo: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Mongo{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(m.done)
		_ = f.Run(ctx) // always nil; it returns when ctx is cancelled
	}()
	// MongoDBURI waits for the listener that Run opens.
	m.uri = f.MongoDBURI()
	return m, nil
}

// URI returns the MongoDB connection string of the running server.
func (m *Mongo) URI() string { return m.uri }

// Close stops FerretDB and waits until its files are closed.
func (m *Mongo) Close() error {
	m.cancel()
	<-m.done
	return nil
}

// levelHandler raises the minimum level of a slog.Handler.
type levelHandler struct {
	slog.Handler
	level slog.Leveler
}

func (h levelHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.level.Level() && h.Handler.Enabled(ctx, l)
}

func (h levelHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return levelHandler{Handler: h.Handler.WithAttrs(attrs), level: h.level}
}

func (h levelHandler) WithGroup(name string) slog.Handler {
	return levelHandler{Handler: h.Handler.WithGroup(name), level: h.level}
}

// Redis is a running miniredis. It keeps its data in memory only, so
// sessions and live-event history end when the process does.
type Redis struct {
	srv  *miniredis.Miniredis
	stop chan struct{}
	done chan struct{}
}

// ttlTick is how often the embedded Redis's keys age: miniredis counts
// TTLs down only when told time passed (FastForward). (Its ClockTTL does
// it at every command, over every key: too dear for a server's Redis.)
const ttlTick = time.Second

// StartRedis starts miniredis on a free loopback port, its keys expiring
// as in Redis, to the second.
func StartRedis() (*Redis, error) {
	srv := miniredis.NewMiniRedis()
	if err := srv.Start(); err != nil {
		return nil, fmt.Errorf("embedded redis: %w", err)
	}
	r := &Redis{srv: srv, stop: make(chan struct{}), done: make(chan struct{})}
	go r.age()
	return r, nil
}

// age moves the keys' TTLs on with the clock until Close.
func (r *Redis) age() {
	defer close(r.done)
	t := time.NewTicker(ttlTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-r.stop:
			return
		case now := <-t.C:
			if d := now.Sub(last); d > 0 {
				r.srv.FastForward(d)
				last = now
			}
		}
	}
}

// URL returns the redis:// URL of the running server.
func (r *Redis) URL() string { return "redis://" + r.srv.Addr() + "/0" }

// Close stops the server.
func (r *Redis) Close() error {
	close(r.stop)
	<-r.done
	r.srv.Close()
	return nil
}
