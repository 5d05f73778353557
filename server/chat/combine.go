package chat

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
)

// combiner makes the writes of concurrent callers together (group
// commit): one caller at a time writes, everything queued meanwhile goes
// in the next write, in one command, and each caller gets its own item's
// result. A caller alone writes at once, so nothing waits for a batch to
// fill: under load, a send's insert and its chat update share their
// command, and the engine's commit, with the sends that came while the
// previous one ran.
type combiner[T any] struct {
	// write writes the items in one command and returns each one's
	// error (nil slice: none failed).
	write func(ctx context.Context, items []T) []error
	// max bounds a batch.
	max int

	mu      sync.Mutex
	queue   []*combined[T]
	writing bool
}

type combined[T any] struct {
	item T
	err  error
	// done is closed once the item is written; lead, when the caller is
	// to write the next batch.
	done, lead chan struct{}
}

// combineTimeout bounds one combined write. The callers' contexts do not
// end it: it writes others' items too.
const combineTimeout = 10 * time.Second

// do writes item, with whatever other callers write at the same time, and
// returns its result. It waits for the write even when ctx ends, as the
// item may be written with others; the write is bounded by
// combineTimeout.
func (c *combiner[T]) do(ctx context.Context, item T) error {
	j := &combined[T]{item: item, done: make(chan struct{}), lead: make(chan struct{})}
	c.mu.Lock()
	c.queue = append(c.queue, j)
	if c.writing {
		c.mu.Unlock()
		select {
		case <-j.done:
			return j.err
		case <-j.lead:
		}
		c.mu.Lock()
	}
	c.writing = true
	n := min(len(c.queue), c.max)
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	c.mu.Unlock()

	items := make([]T, len(batch))
	for i, b := range batch {
		items[i] = b.item
	}
	errs := c.writeSafely(ctx, items)
	for i, b := range batch {
		if errs != nil {
			b.err = errs[i]
		}
		if b != j {
			close(b.done)
		}
	}

	// The next batch is written by its first caller.
	c.mu.Lock()
	if len(c.queue) > 0 {
		close(c.queue[0].lead)
	} else {
		c.writing = false
	}
	c.mu.Unlock()
	return j.err
}

// writeSafely runs write; a panic in it fails every item (the callers
// log it) instead of leaving the combiner writing for ever.
func (c *combiner[T]) writeSafely(ctx context.Context, items []T) (errs []error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), combineTimeout)
	defer cancel()
	defer func() {
		if r := recover(); r != nil {
			err := fmt.Errorf("combined write panicked: %v\n%s", r, debug.Stack())
			errs = make([]error, len(items))
			for i := range errs {
				errs[i] = err
			}
		}
	}()
	return c.write(ctx, items)
}

// itemErrors spreads the error of a write of n items over them: each
// write error to its item (at of its index in the write), anything else
// to all.
func itemErrors(err error, n int, at func(index int) int) []error {
	if err == nil {
		return nil
	}
	errs := make([]error, n)
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || bwe.WriteConcernError != nil || len(bwe.WriteErrors) == 0 {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	for _, we := range bwe.WriteErrors {
		if i := at(we.Index); i >= 0 && i < n && errs[i] == nil {
			errs[i] = we.WriteError
		}
	}
	return errs
}
