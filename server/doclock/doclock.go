// Package doclock serializes the updates of one MongoDB document across
// requests and instances with a Redis lock per document, on the
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
	lease  time.Duration
	// maxHold is MaxHold but in tests.
	maxHold time.Duration
}

// Lease is how long a lock outlives a holder that died: a live holder
// renews it every third of it, up to MaxHold.
const Lease = 10 * time.Second

// MaxHold bounds how long a holder keeps its lock by renewing it: a
// function still running after that (a store that stopped answering,
// with no deadline) lets the lock lapse a Lease later rather than block
// the document's every other update for as long as it hangs.
const MaxHold = time.Minute

// New returns locks kept in rdb under prefix.
func New(rdb redis.UniversalClient, prefix string) *Locks {
	return &Locks{locker: redislock.New(rdb), prefix: prefix, lease: Lease, maxHold: MaxHold}
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
	return &Locks{locker: l.locker, prefix: l.prefix + prefix, lease: l.lease, maxHold: l.maxHold}
}

// Serial reports whether l locks anything.
func (l *Locks) Serial() bool { return l != nil }

// TryDo runs fn holding the lock named key if it is free now, and reports
// whether it ran. With nil locks it always runs fn.
func (l *Locks) TryDo(ctx context.Context, key string, fn func() error) (bool, error) {
	if l == nil {
		return true, fn()
	}
	lock, err := l.locker.Obtain(ctx, l.prefix+key, l.lease, nil)
	if errors.Is(err, redislock.ErrNotObtained) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("lock %s: %w", key, err)
	}
	return true, l.holding(ctx, lock, fn)
}

// holding runs fn holding lock, which it renews while fn runs (up to
// MaxHold), so that a slow function (a stalled store) does not outlive
// its lock and run beside the next holder; it releases the lock after.
func (l *Locks) holding(ctx context.Context, lock *redislock.Lock, fn func() error) error {
	ctx = context.WithoutCancel(ctx)
	done := make(chan struct{})
	renewed := make(chan struct{})
	go func() {
		defer close(renewed)
		tick := time.NewTicker(l.lease / 3)
		defer tick.Stop()
		until := time.Now().Add(l.maxHold)
		for {
			select {
			case <-done:
				return
			case now := <-tick.C:
				if now.After(until) {
					return
				}
				// A failed renewal (Redis unreachable, or the lock lost
				// already) is tried again at the next tick; the lock
				// lapses a lease after the last that succeeded.
				rctx, cancel := context.WithTimeout(ctx, l.lease/3)
				_ = lock.Refresh(rctx, l.lease, nil)
				cancel()
			}
		}
	}()
	defer func() {
		close(done)
		<-renewed
		_ = lock.Release(ctx)
	}()
	return fn()
}

// ErrBusy is Do's error when the lock stayed taken for all its wait.
var ErrBusy = errors.New("busy: another request holds the lock")

// Do runs fn holding the lock named key, waiting up to 5 s for it
// (ErrBusy after that). The lock is renewed while fn runs, and expires by
// itself a Lease after its holder died. With nil locks it runs fn at
// once.
func (l *Locks) Do(ctx context.Context, key string, fn func() error) error {
	if l == nil {
		return fn()
	}
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lock, err := l.locker.Obtain(lctx, l.prefix+key, l.lease, &redislock.Options{
		RetryStrategy: redislock.LinearBackoff(2 * time.Millisecond),
	})
	if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
		// The wait ran out, not the request. (With a retry strategy
		// that never gives up, the wait's deadline is how Obtain
		// reports a lock it could not take.)
		err = ErrBusy
	}
	if err != nil {
		return fmt.Errorf("lock %s: %w", key, err)
	}
	return l.holding(ctx, lock, fn)
}
