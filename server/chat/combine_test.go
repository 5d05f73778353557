package chat

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"runtime"
	"slices"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
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

// TestSentMany: the sends of one chat combined in one update move each
// sender's sentSeq and the chat's updatedAt to the largest of theirs and
// lastMessage to the highest seq, never back (nor sideways: a retry of
// the message it holds changes nothing); updatedAt takes the latest
// sentAt, whatever its message's seq; a preview is stored as written, $
// and all; a lastMessage whose fields come in another order than the
// update's (the struct's, as the seeder writes it) is compared by its
// seq.
func TestSentMany(t *testing.T) {
	if os.Getenv("PARLEY_TEST_MONGO_URI") == "" {
		t.Skip("sentMany runs on the document engine or MongoDB (PARLEY_TEST_MONGO_URI); the embedded FerretDB 1.x takes the serial path")
	}
	ctx := context.Background()
	db := testDatabase(t)
	if err := Prepare(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), db); err != nil {
		t.Fatal(err)
	}
	s := newStore(db, nil, nil, "", time.Now)
	t0 := time.Now().Truncate(time.Millisecond)
	chatID := bson.NewObjectID()
	_, err := s.chats.InsertOne(ctx, bson.D{
		{Key: "_id", Value: chatID}, {Key: "chatType", Value: typeGroup}, {Key: "updatedAt", Value: t0},
		{Key: "participants", Value: bson.A{bson.D{{Key: "user_id", Value: 1}}, bson.D{{Key: "user_id", Value: 2}}, bson.D{{Key: "user_id", Value: 3}}}},
		{Key: "lastMessage", Value: lastMessageDoc{MessageID: bson.NewObjectID(), SenderID: 3, Preview: "seeded", Seq: 4, SentAt: t0}},
	})
	if err != nil {
		t.Fatal(err)
	}
	msg := func(sender int, seq int64, text string, at time.Duration) *messageDoc {
		return &messageDoc{ID: bson.NewObjectID(), ChatID: chatID, SenderID: sender, Seq: seq, Text: text, SentAt: t0.Add(at)}
	}
	check := func(step string, last *messageDoc, sent map[string]int64, updated time.Time) {
		t.Helper()
		var c chatDoc
		if err := s.chats.FindOne(ctx, bson.D{{Key: "_id", Value: chatID}}).Decode(&c); err != nil {
			t.Fatal(err)
		}
		lm := c.LastMessage
		if lm == nil || lm.Seq != last.Seq || lm.MessageID != last.ID || lm.SenderID != last.SenderID || lm.Preview != last.Text || !lm.SentAt.Equal(last.SentAt) {
			t.Errorf("%s: lastMessage = %+v, want seq %d %q from %d", step, lm, last.Seq, last.Text, last.SenderID)
		}
		if !maps.Equal(c.SentSeq, sent) {
			t.Errorf("%s: sentSeq = %v, want %v", step, c.SentSeq, sent)
		}
		if !c.UpdatedAt.Equal(updated) {
			t.Errorf("%s: updatedAt = %v, want %v", step, c.UpdatedAt, updated)
		}
	}

	m5, m9, m8 := msg(1, 5, "older", 3*time.Millisecond), msg(2, 9, "$100 for the tickets", 2*time.Millisecond), msg(1, 8, "{$set: 1}", 1*time.Millisecond)
	if errs := s.sentMany(ctx, []*messageDoc{m5, m9, m8}); errs != nil {
		t.Fatal(errs)
	}
	check("one batch", m9, map[string]int64{"1": 8, "2": 9}, m5.SentAt)

	m6 := msg(3, 6, "late", 0)
	if errs := s.sentMany(ctx, []*messageDoc{m6}); errs != nil {
		t.Fatal(errs)
	}
	check("an older seq after", m9, map[string]int64{"1": 8, "2": 9, "3": 6}, m5.SentAt)

	m10 := msg(3, 10, "newest", 10*time.Millisecond)
	if errs := s.sentMany(ctx, []*messageDoc{m10, msg(1, 7, "retry of an old one", 0)}); errs != nil {
		t.Fatal(errs)
	}
	check("a newer seq", m10, map[string]int64{"1": 8, "2": 9, "3": 10}, m10.SentAt)

	retry := *m10
	retry.ID, retry.Text = bson.NewObjectID(), "a retry"
	if errs := s.sentMany(ctx, []*messageDoc{&retry}); errs != nil {
		t.Fatal(errs)
	}
	check("the same seq again", m10, map[string]int64{"1": 8, "2": 9, "3": 10}, m10.SentAt)
}
