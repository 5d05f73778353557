// Package doclock serializes the updates of one MongoDB document across
// requests and instances with a short Redis lock per document.
//
// FerretDB, unlike MongoDB, rewrites a whole document on each update
// without isolation, so concurrent updates of one document (even of
// different fields, even conditional ones) lose writes there. Every update
// of a document that more than one request may change holds its lock.
package doclock

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/bsm/redislock"
	"github.com/redis/go-redis/v9"
)

// Locks hands out the locks, under one Redis key prefix.
type Locks struct {
	locker *redislock.Client
	prefix string
}

// New returns locks kept in rdb under prefix.
func New(rdb redis.UniversalClient, prefix string) *Locks {
	return &Locks{locker: redislock.New(rdb), prefix: prefix}
}

// TryDo runs fn holding the lock named key if it is free now, and reports
// whether it ran.
func (l *Locks) TryDo(ctx context.Context, key string, fn func() error) (bool, error) {
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

// Do runs fn holding the lock named key, waiting up to 5 s for it. The
// lock expires by itself after 10 s should its holder die.
func (l *Locks) Do(ctx context.Context, key string, fn func() error) error {
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	lock, err := l.locker.Obtain(lctx, l.prefix+key, 10*time.Second, &redislock.Options{
		RetryStrategy: redislock.LinearBackoff(2 * time.Millisecond),
	})
	if err != nil {
		return fmt.Errorf("lock %s: %w", key, err)
	}
	defer lock.Release(context.WithoutCancel(ctx))
	return fn()
}
