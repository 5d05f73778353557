package chat

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/redisconn"
)

// TestSeqAllocator_KeepsHeldSeqsInFlight: a seq whose send is still
// under way holds readers back however long the send takes (its time in
// flight is renewed); one whose write failed holds them back until it
// goes stale, and then no more. The allocator's time in flight is
// shortened to 300 ms, so the test waits that out three times over.
func TestSeqAllocator_KeepsHeldSeqsInFlight(t *testing.T) {
	url := os.Getenv("PARLEY_TEST_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/0"
	}
	ctx := context.Background()
	rdb, err := redisconn.Open(ctx, url)
	if err != nil {
		t.Fatalf("%v (set PARLEY_TEST_REDIS_URL, or run the tests with `make test`)", err)
	}
	t.Cleanup(func() { rdb.Close() })
	a := &seqAllocator{rdb: rdb, prefix: "test-inflight:" + bson.NewObjectID().Hex() + ":", inflight: 300 * time.Millisecond}
	chatID := bson.NewObjectID()
	next := func(idem string) int64 {
		t.Helper()
		seq, _, err := a.next(ctx, chatID, 1, idem, "", false)
		if err != nil {
			t.Fatal(err)
		}
		return seq
	}
	stable := func() int64 {
		t.Helper()
		wm, ok, err := a.stable(ctx, chatID)
		if err != nil || !ok {
			t.Fatalf("stable: %d, %v, %v", wm, ok, err)
		}
		return wm
	}
	t.Cleanup(func() {
		rdb.Del(ctx, a.key(chatID), a.inflightKey(chatID), a.sentKey(chatID, "slow"), a.sentKey(chatID, "failed"))
	})

	slow, failed := next("slow"), next("failed")
	a.abandon(chatID, failed)
	// Waiting is what is tested: both seqs are older than the time in
	// flight by then.
	time.Sleep(3 * a.inflight)
	if wm := stable(); wm != slow-1 {
		t.Fatalf("with a send still holding seq %d after %v: readers may go up to %d, want %d", slow, 3*a.inflight, wm, slow-1)
	}
	if err := a.done(ctx, chatID, slow); err != nil {
		t.Fatal(err)
	}
	if wm := stable(); wm != failed {
		t.Errorf("with the slow send done and the failed one stale: readers may go up to %d, want %d", wm, failed)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.held) != 0 {
		t.Errorf("%d seqs still kept after their sends ended", len(a.held))
	}
}

// A seq handed out twice (Redis lost the counter while a send held it)
// has one keeper, which runs until both sends release it: none is left
// to renew the seq for ever, and one send's failure does not stop the
// other's.
func TestSeqAllocator_SameSeqKeptTwice(t *testing.T) {
	a := &seqAllocator{inflight: time.Hour}
	chatID := bson.NewObjectID()
	a.keep(chatID, 7)
	a.mu.Lock()
	k := a.held[heldSeq{chatID, 7}]
	a.mu.Unlock()
	a.keep(chatID, 7)
	a.abandon(chatID, 7)
	a.mu.Lock()
	still := a.held[heldSeq{chatID, 7}] == k
	a.mu.Unlock()
	if !still {
		t.Fatal("one send's release ended the keeper of a seq another send holds")
	}
	a.release(chatID, 7)
	if k.timer.Stop() {
		t.Error("the keeper still runs once both sends released the seq")
	}
	a.release(chatID, 7)
	if len(a.held) != 0 {
		t.Errorf("%d seqs still kept", len(a.held))
	}
}

// BenchmarkSeqAllocator_KeepRelease is what keeping a send's seq in flight
// costs a send answered in time: a timer armed and stopped, no Redis call.
func BenchmarkSeqAllocator_KeepRelease(b *testing.B) {
	a := &seqAllocator{}
	chatID := bson.NewObjectID()
	var seq atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := seq.Add(1)
			a.keep(chatID, n)
			a.release(chatID, n)
		}
	})
}
