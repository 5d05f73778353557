// Package doclock serializes the updates of one MongoDB document across
// requests and instances with a short Redis lock per document, on the
// document engines that need it.
//
// MongoDB and FerretDB 2 (on PostgreSQL with DocumentDB) apply each
// single-document update atomically, so Parley's conditional updates are
// correct there without any lock, and no request waits on one. FerretDB
// 1.x, the embedded zero-setup store, rewrites a whole document on each
// update without isolation: concurrent updates of one document (even of
// different fields, even conditional ones) lose writes there. Needed tells
// the two apart; on FerretDB 1.x every update of a document that more than
// one request may change holds its lock. A nil *Locks runs every function
// at once: that is the whole cost of this package on a real engine.
package doclock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// Locks hands out the locks, under one Redis key prefix. The nil *Locks
// is valid and locks nothing.
type Locks struct {
	locker *redislock.Client
	prefix string
}

// New returns locks kept in rdb under prefix.
func New(rdb redis.UniversalClient, prefix string) *Locks {
	return &Locks{locker: redislock.New(rdb), prefix: prefix}
}

// Needed reports whether the database's engine loses concurrent updates
// of one document: true for FerretDB 1.x, false for MongoDB and FerretDB
// 2 and later. FerretDB 1.x names its version in buildInfo's
// ferretdbVersion (which reads "unknown" when it is embedded); FerretDB 2
// moved it under ferretdb.version, and MongoDB has neither.
func Needed(ctx context.Context, db *mongo.Database) (bool, error) {
	var info bson.Raw
	if err := db.RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Decode(&info); err != nil {
		return false, fmt.Errorf("buildInfo: %w", err)
	}
	_, err := info.LookupErr("ferretdbVersion")
	return err == nil, nil
}

// For returns the locks, kept in rdb under prefix, that the updates of
// db's documents need: nil where its engine needs none.
func For(ctx context.Context, db *mongo.Database, rdb redis.UniversalClient, prefix string) (*Locks, error) {
	needed, err := Needed(ctx, db)
	if err != nil || !needed {
		return nil, err
	}
	return New(rdb, prefix), nil
}

// Prefixed returns locks under a further key prefix, nil for nil.
func (l *Locks) Prefixed(prefix string) *Locks {
	if l == nil {
		return nil
	}
	return &Locks{locker: l.locker, prefix: l.prefix + prefix}
}

// Serial reports whether l locks anything.
func (l *Locks) Serial() bool { return l != nil }

// TryDo runs fn holding the lock named key if it is free now, and reports
// whether it ran. With nil locks it always runs fn.
func (l *Locks) TryDo(ctx context.Context, key string, fn func() error) (bool, error) {
	if l == nil {
		return true, fn()
	}
	lock, err := l.locker.Obtain(ctx, l.prefix+key, 10*time.Second, nil)
	if errors.Is(err, redislock.ErrNotObtained) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", key, err)
	}
	defer lock.Release(context.WithoutCancel(ctx))
	return true, fn()
}

// ErrBusy is Do's error when the lock stayed taken for all its wait.
var ErrBusy = errors.New("busy: another request holds the lock")

// Do runs fn holding the lock named key, waiting up to 5 s for it
// (ErrBusy after that). The lock expires by itself after 10 s should its
// holder die. With nil locks it runs fn at once.
func (l *Locks) Do(ctx context.Context, key string, fn func() error) error {
	if l == nil {
		return fn()
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lock, err := l.locker.Obtain(lctx, l.prefix+key, 10*time.Second, &redislock.Options{
		RetryStrategy: redislock.LinearBackoff(2 * time.Millisecond),
	})
	if err != nil && ctx.Err() == nil && (errors.Is(err, context.DeadlineExceeded) || errors.Is(err, redislock.ErrNotObtained)) {
		// The wait ran out, not the request.
		err = ErrBusy
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", key, err)
	}
	defer lock.Release(context.WithoutCancel(ctx))
	return fn()
}
