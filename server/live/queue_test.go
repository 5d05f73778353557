package live

import (
	"strconv"
	"testing"
)

// A stream's queue holds nothing while idle, grows with the events that
// come, hands them over in order, and ends the stream when more than its
// bound wait.
func TestSubscriber_Queue(t *testing.T) {
	s := &subscriber{limit: 4, wake: make(chan struct{}, 1), live: true}
	if s.pending != nil {
		t.Fatal("an idle stream holds a queue")
	}
	for i := range 3 {
		s.offer(logged{cursor: strconv.Itoa(i + 1)})
	}
	select {
	case <-s.wake:
	default:
		t.Fatal("no wake-up after events came")
	}
	events, f := s.take(nil)
	if len(events) != 3 || events[0].cursor != "1" || events[2].cursor != "3" || f.overflowed {
		t.Fatalf("take = %v, %+v; want cursors 1..3, not overflowed", events, f)
	}
	// The buffer handed back is the next queue, emptied.
	s.offer(logged{cursor: "4"})
	spare := events
	events, _ = s.take(spare)
	s.offer(logged{cursor: "5"})
	if len(s.pending) != 1 || &s.pending[0] != &spare[:1][0] {
		t.Fatalf("pending = %v; want one event in the handed-back buffer", s.pending)
	}
	for i := range 4 {
		s.offer(logged{cursor: strconv.Itoa(i + 6)})
	}
	if events, f = s.take(events); !f.overflowed || len(events) != 4 {
		t.Fatalf("after 5 events with a bound of 4: %d taken, overflowed %v; want 4 and overflowed", len(events), f.overflowed)
	}
	// A big buffer is not kept for a stream gone idle.
	big := make([]logged, 0, keptBuffer+1)
	s.take(big)
	if cap(s.pending) > keptBuffer {
		t.Fatalf("kept a buffer of %d entries", cap(s.pending))
	}
}

// While a stream reads the log, live events are not queued: it marks
// itself to read the log again instead.
func TestSubscriber_CatchingUp(t *testing.T) {
	s := &subscriber{limit: 4, wake: make(chan struct{}, 1)}
	s.offer(logged{cursor: "1"})
	if s.pending != nil || !s.dirty {
		t.Fatalf("pending %v, dirty %v; want nothing queued and dirty", s.pending, s.dirty)
	}
	if s.goLive() {
		t.Fatal("went live with an unread event in the log")
	}
	if !s.goLive() {
		t.Fatal("did not go live once the log was read")
	}
}
