package server

import (
	"fmt"
	"net/http"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/panjf2000/ants/v2"
)

// Why requests run on workers: net/http serves each HTTP/2 request on a
// goroutine of its own, whose stack starts small and is copied to one
// twice its size each time the handler's calls go deeper than it holds
// (Connect, the interceptors, validation, the Redis and MongoDB drivers
// go some tens of kilobytes deep). Copying a stack walks its frames, so a
// short RPC paid for it on every call: 6 % of the server's CPU in a
// profile of W1 (runtime.newstack and copystack; see bench/README.md). A
// worker of a pool keeps the stack it grew, so withWorkers hands the
// request over to one and waits for it: two goroutine switches in place
// of the copies.
//
// Only short HTTP/2 requests go to the workers. An HTTP/1.1 connection
// already serves its requests one after another on one goroutine, whose
// stack stays grown; live streams and file transfers hold their goroutine
// for minutes or hours, and would keep a worker from the others. When
// every worker is busy the request runs where it came, as it would
// without the pool.

// workerCount is how many goroutines the pool keeps at most; idle ones
// stop after workerIdle.
var workerCount = 64 * runtime.GOMAXPROCS(0)

const workerIdle = 10 * time.Second

// workers is the process's pool, shared by every server it runs (the
// tests run many): what it saves is per goroutine, not per server.
var workers = sync.OnceValues(func() (*ants.Pool, error) { return newWorkers(workerCount) })

// newWorkers returns a pool of at most n workers, which refuses work
// when all are busy.
func newWorkers(n int) (*ants.Pool, error) {
	pool, err := ants.NewPool(n,
		ants.WithNonblocking(true),
		ants.WithExpiryDuration(workerIdle),
		// Panics are handed back to the request's own goroutine
		// (see withWorkers); none reaches the pool.
		ants.WithPanicHandler(func(any) {}),
	)
	if err != nil {
		return nil, fmt.Errorf("request workers: %w", err)
	}
	return pool, nil
}

// handedOver is what a worker hands back: a panic of the handler, with
// its stack.
type handedOver struct {
	panicked bool
	value    any
	stack    []byte
}

var handoffs = sync.Pool{New: func() any { return make(chan handedOver, 1) }}

// withWorkers runs next on the pool's workers for HTTP/2 requests whose
// path starts with none of long.
func withWorkers(pool *ants.Pool, next http.Handler, long ...string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 || slices.ContainsFunc(long, func(p string) bool { return strings.HasPrefix(r.URL.Path, p) }) {
			next.ServeHTTP(w, r)
			return
		}
		done := handoffs.Get().(chan handedOver)
		err := pool.Submit(func() {
			var h handedOver
			defer func() {
				if h.panicked {
					h.value = recover()
					if h.value != http.ErrAbortHandler {
						h.stack = debug.Stack()
					}
				}
				done <- h
			}()
			h.panicked = true
			next.ServeHTTP(w, r)
			h.panicked = false
		})
		if err != nil {
			// Every worker busy (ants.ErrPoolOverload).
			handoffs.Put(done)
			next.ServeHTTP(w, r)
			return
		}
		h := <-done
		handoffs.Put(done)
		if h.panicked {
			// As if it had panicked here: net/http logs it and resets
			// the stream (quietly for ErrAbortHandler).
			if h.stack != nil {
				panic(fmt.Sprintf("%v\n\non a request worker:\n%s", h.value, h.stack))
			}
			panic(h.value)
		}
	})
}
