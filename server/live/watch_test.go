package live

import (
	"net/http"
	"testing"
	"time"
)

// deadlineWriter records the write deadlines set through a
// ResponseController, and fails the test on one set after its handler
// returned (on HTTP/2, net/http's writer panics then).
type deadlineWriter struct {
	http.ResponseWriter
	t        *testing.T
	returned bool
	set      []time.Time
}

func (d *deadlineWriter) SetWriteDeadline(t time.Time) error {
	if d.returned {
		d.t.Error("a write deadline set after the handler returned")
	}
	d.set = append(d.set, t)
	return nil
}

// TestWriteWatch_Cut: a stream is cut (a deadline in the past) while its
// handler runs, never once it is unwatched, which comes before the
// handler returns; the mark of a cut stream fails its writes.
func TestWriteWatch_Cut(t *testing.T) {
	h := &Hub{writers: map[*watchedWriter]struct{}{}}

	dw := &deadlineWriter{t: t}
	w, unwatch := h.watch(http.NewResponseController(dw))
	if !w.cut() || len(dw.set) != 1 || !dw.set[0].Before(time.Now()) {
		t.Fatalf("a running stream's cut set %v, want one deadline in the past", dw.set)
	}
	unwatch()
	dw.returned = true
	if w.cut() {
		t.Error("a stream unwatched was cut")
	}

	// The watch marks a write stuck; the writer's next steps fail.
	w2, unwatch2 := h.watch(http.NewResponseController(&deadlineWriter{t: t}))
	defer unwatch2()
	start, ok := w2.begin()
	if !ok {
		t.Fatal("a fresh stream cannot write")
	}
	if !w2.since.CompareAndSwap(start, cutMark) {
		t.Fatal("no write under way")
	}
	if w2.end(start) {
		t.Error("a write the watch cut ended as if it had not been")
	}
	if _, ok := w2.begin(); ok {
		t.Error("a cut stream began another write")
	}
}
