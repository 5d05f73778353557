package live

import (
	"context"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// The write watch ends the streams whose client has taken nothing for the
// write timeout (Config.WriteTimeout), so that a client that stops reading
// cannot hold a stream, its goroutine and its queue for ever. Each stream
// marks when a write begins and ends; a goroutine of the hub looks at the
// marks every quarter of the timeout and cuts a stream whose write has
// been under way for the timeout or longer, by moving its write deadline
// into the past: on HTTP/2 that resets the stream, on HTTP/1.1 it fails
// the connection's blocked write, and the handler returns. A stream is
// thus cut between one and one and a quarter timeouts after its client
// stopped taking data.
//
// Setting a deadline before each write and clearing it after, as streams
// did before, cost two messages to the HTTP/2 connection's goroutine and
// a timer for every event written (8% of the server's CPU in workload
// W2-100): the watch costs two atomic stores per event.

// cutMark in watchedWriter.since marks a stream that was cut.
const cutMark = -1

// watchEpoch and monoNow give the watch a monotonic clock in nanoseconds,
// always above 0, which a change of the wall clock leaves alone.
var watchEpoch = time.Now()

func monoNow() int64 { return int64(time.Since(watchEpoch)) + 1 }

// watchedWriter is one stream's side of the write watch.
type watchedWriter struct {
	// since is when the write under way began (monoNow), 0 when none is,
	// cutMark once the stream was cut.
	since atomic.Int64
	rc    *http.ResponseController

	// mu orders a cut and the end of the stream's handler: once done,
	// rc must not be used (on HTTP/2 a response writer whose handler
	// returned panics; on HTTP/1.1 the past deadline would stay on a
	// kept-alive connection).
	mu   sync.Mutex
	done bool
}

// cut moves the stream's write deadline into the past, which takes
// effect at once, unless its handler is done; it reports whether it did.
func (w *watchedWriter) cut() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.done {
		return false
	}
	_ = w.rc.SetWriteDeadline(time.Unix(0, 1))
	return true
}

// begin marks the start of a write; false: the stream was cut. A nil
// writer (a stream that cannot be cut) is never cut.
func (w *watchedWriter) begin() (int64, bool) {
	if w == nil {
		return 0, true
	}
	if w.since.Load() == cutMark {
		return 0, false
	}
	// Writes are made one at a time, and the watch only acts on a write
	// under way: no cut can come between the load and the store.
	t := monoNow()
	w.since.Store(t)
	return t, true
}

// end marks the end of the write begin(t) started; false: the stream was
// cut meanwhile.
func (w *watchedWriter) end(t int64) bool {
	if w == nil {
		return true
	}
	return w.since.CompareAndSwap(t, 0)
}

// watch registers a stream's writer, cut through rc; the returned
// function unregisters it, and must be called before the stream's
// handler returns.
func (h *Hub) watch(rc *http.ResponseController) (*watchedWriter, func()) {
	w := &watchedWriter{rc: rc}
	h.writersMu.Lock()
	h.writers[w] = struct{}{}
	h.writersMu.Unlock()
	return w, func() {
		h.writersMu.Lock()
		delete(h.writers, w)
		h.writersMu.Unlock()
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	}
}

// watchWrites cuts the streams whose write has been under way for the
// write timeout, until the hub closes.
func (h *Hub) watchWrites(ctx context.Context) {
	defer h.done.Done()
	timeout := h.cfg.WriteTimeout
	t := time.NewTicker(max(timeout/4, time.Millisecond))
	defer t.Stop()
	var stuck []*watchedWriter
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := monoNow()
		stuck = stuck[:0]
		h.writersMu.Lock()
		for w := range h.writers {
			if s := w.since.Load(); s > 0 && now-s >= int64(timeout) && w.since.CompareAndSwap(s, cutMark) {
				stuck = append(stuck, w)
			}
		}
		h.writersMu.Unlock()
		for _, w := range stuck {
			if w.cut() {
				streamsCut.Inc()
			}
		}
		clear(stuck)
	}
}
