package chat

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"testing"

	"go.mongodb.org/mongo-driver/v2/mongo"
)

// TestCombiner: items queued while a write runs go together in the next
// write, at most max at a time; every item is written once, and each
// caller gets its own item's result.
func TestCombiner(t *testing.T) {
	const callers, max = 10, 4
	release := make(chan struct{})
	var mu sync.Mutex
	var batches [][]int
	c := &combiner[int]{max: max}
	c.write = func(_ context.Context, items []int) []error {
		mu.Lock()
		first := len(batches) == 0
		mu.Unlock()
		if first {
			<-release // the first write runs until every other caller waits
		}
		mu.Lock()
		batches = append(batches, slices.Clone(items))
		mu.Unlock()
		errs := make([]error, len(items))
		for i, it := range items {
			if it%3 == 0 {
				errs[i] = fmt.Errorf("item %d refused", it)
			}
		}
		return errs
	}
	results := make([]error, callers)
	var wg sync.WaitGroup
	wg.Go(func() { results[0] = c.do(context.Background(), 0) })
	for !queued(c, 0) { // the first caller is writing
		runtime.Gosched()
	}
	for i := 1; i < callers; i++ {
		wg.Go(func() { results[i] = c.do(context.Background(), i) })
	}
	for !queued(c, callers-1) {
		runtime.Gosched()
	}
	close(release)
	wg.Wait()

	var seen []int
	for _, b := range batches {
		if len(b) > max {
			t.Errorf("a batch of %d, want at most %d", len(b), max)
		}
		seen = append(seen, b...)
	}
	slices.Sort(seen)
	if want := []int{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}; !slices.Equal(seen, want) {
		t.Fatalf("written %v, want each item once: %v", seen, want)
	}
	// 1 alone, then 9 waiting: 4 + 4 + 1.
	if len(batches) != 4 {
		t.Errorf("%d writes (%v), want 4", len(batches), batches)
	}
	for i, err := range results {
		if (i%3 == 0) != (err != nil) {
			t.Errorf("caller %d got %v", i, err)
		}
	}
}

// queued reports whether n items wait while a write runs.
func queued(c *combiner[int], n int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.writing && len(c.queue) == n
}

// TestItemErrors: a write error goes to its item, anything else to all.
func TestItemErrors(t *testing.T) {
	if errs := itemErrors(nil, 3, func(i int) int { return i }); errs != nil {
		t.Errorf("no error spread as %v", errs)
	}
	dup := mongo.BulkWriteException{WriteErrors: []mongo.BulkWriteError{
		{WriteError: mongo.WriteError{Index: 3, Code: 11000, Message: "E11000 duplicate key"}},
	}}
	errs := itemErrors(dup, 3, func(i int) int { return i / 2 })
	if errs[0] != nil || errs[2] != nil || !mongo.IsDuplicateKeyError(errs[1]) {
		t.Errorf("a duplicate key at statement 3 (item 1) spread as %v", errs)
	}
	down := errors.New("connection reset")
	for i, err := range itemErrors(down, 2, func(i int) int { return i }) {
		if !errors.Is(err, down) {
			t.Errorf("item %d got %v, want the command's error", i, err)
		}
	}
	wc := mongo.BulkWriteException{WriteConcernError: &mongo.WriteConcernError{Code: 64}, WriteErrors: dup.WriteErrors}
	for i, err := range itemErrors(wc, 2, func(i int) int { return i }) {
		if err == nil {
			t.Errorf("item %d has no error despite the write concern's", i)
		}
	}
}

// TestCombiner_WritePanics: a write that panics fails its items, and the
// next write goes ahead.
func TestCombiner_WritePanics(t *testing.T) {
	calls := 0
	c := &combiner[int]{max: 4, write: func(_ context.Context, items []int) []error {
		calls++
		if calls == 1 {
			panic("broken")
		}
		return nil
	}}
	if err := c.do(context.Background(), 1); err == nil {
		t.Fatal("the item of a write that panicked has no error")
	}
	if err := c.do(context.Background(), 2); err != nil {
		t.Fatalf("the write after a panic: %v", err)
	}
}
