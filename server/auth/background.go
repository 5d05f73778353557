package auth

import (
	"context"
	"fmt"
	"sync"

	"go.opentelemetry.io/otel/trace"
)

// Background tracks the work that the account calls go on with after
// answering (making and mailing a password reset code), so that a server
// that stops can wait for it (Wait) before it closes the stores. The zero
// Background is ready to use.
type Background struct {
	mu sync.Mutex
	n  int
	// idle is closed when n falls to 0; nil while nobody waits.
	idle chan struct{}
}

// Go runs f in a goroutine of its own, tracked until it returns.
func (b *Background) Go(f func()) {
	b.mu.Lock()
	b.n++
	b.mu.Unlock()
	go func() {
		defer b.done()
		f()
	}()
}

func (b *Background) done() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.n--
	if b.n == 0 && b.idle != nil {
		close(b.idle)
		b.idle = nil
	}
}

// Running returns how many functions Go started that have not returned.
func (b *Background) Running() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

// Wait waits until no function that Go started is running, or until ctx
// is done; then it returns an error that says how many still run. Work
// started while it waits is waited for too.
func (b *Background) Wait(ctx context.Context) error {
	b.mu.Lock()
	if b.n == 0 {
		b.mu.Unlock()
		return nil
	}
	if b.idle == nil {
		b.idle = make(chan struct{})
	}
	idle := b.idle
	b.mu.Unlock()
	select {
	case <-idle:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("%d background tasks still running: %w", b.Running(), ctx.Err())
	}
}

// detach returns a context for work that goes on after the request of
// ctx was answered: not cancelled with it, and without its values but
// its trace, so that the work's log lines carry the request's trace id
// while its store calls are not counted as the request's.
func detach(ctx context.Context) context.Context {
	return trace.ContextWithSpanContext(context.Background(), trace.SpanContextFromContext(ctx))
}
