package chat

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/embedded"
)

// testDatabase returns a fresh database on the test engine
// (PARLEY_TEST_MONGO_URI), or on an embedded FerretDB 1.x without one.
func testDatabase(t *testing.T) *mongo.Database {
	t.Helper()
	uri := os.Getenv("PARLEY_TEST_MONGO_URI")
	if uri == "" {
		m, err := embedded.StartMongo(t.TempDir(), slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = m.Close() })
		uri = m.URI()
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		t.Fatal(err)
	}
	db := client.Database(fmt.Sprintf("page_%d", time.Now().UnixNano()))
	t.Cleanup(func() {
		_ = db.Drop(context.Background())
		_ = client.Disconnect(context.Background())
	})
	return db
}

// Pages read through windows of seqs must find every message across gaps
// wider than a window, in both directions, and say when no more lie
// beyond.
func TestStore_PagesAcrossGaps(t *testing.T) {
	ctx := context.Background()
	db := testDatabase(t)
	if err := Prepare(ctx, slog.New(slog.NewTextHandler(io.Discard, nil)), db); err != nil {
		t.Fatal(err)
	}
	s := newStore(db, nil, nil, "", time.Now)
	chatID := bson.NewObjectID()
	var seqs []int64
	for n := int64(1); n <= 10; n++ {
		seqs = append(seqs, n)
	}
	for n := int64(500); n < 530; n++ {
		seqs = append(seqs, n)
	}
	seqs = append(seqs, 5000)
	var docs []any
	for _, n := range seqs {
		docs = append(docs, messageDoc{ID: bson.NewObjectID(), ChatID: chatID, Seq: n, SeqKey: seqKey(chatID, n),
			IdemKey: idemKey(chatID, 1, fmt.Sprint(n)), ClientMessageID: fmt.Sprint(n), SentAt: time.Now(), Status: statusSent})
	}
	if _, err := s.messages.InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	ptr := func(v int64) *int64 { return &v }
	for _, top := range []int64{5000, 520} { // the chat's lastMessage may lag
		for _, upTo := range []*int64{ptr(5000), nil} {
			name := fmt.Sprintf("top %d, upTo %v", top, upTo != nil)
			t.Run(name+", forward", func(t *testing.T) {
				var got []int64
				after := int64(0)
				for {
					page, more, err := s.listMessages(ctx, chatID, nil, &after, upTo, top, 7)
					if err != nil {
						t.Fatal(err)
					}
					for _, m := range page {
						got = append(got, m.Seq)
					}
					if !more {
						break
					}
					after = page[len(page)-1].Seq
				}
				if fmt.Sprint(got) != fmt.Sprint(seqs) {
					t.Errorf("paged forward to %v; want %v", got, seqs)
				}
			})
			t.Run(name+", backward", func(t *testing.T) {
				var got []int64
				var before *int64
				for {
					page, more, err := s.listMessages(ctx, chatID, before, nil, upTo, top, 7)
					if err != nil {
						t.Fatal(err)
					}
					for i := len(page) - 1; i >= 0; i-- {
						got = append([]int64{page[i].Seq}, got...)
					}
					if !more {
						break
					}
					before = ptr(page[0].Seq)
				}
				if fmt.Sprint(got) != fmt.Sprint(seqs) {
					t.Errorf("paged backward to %v; want %v", got, seqs)
				}
			})
		}
	}
}
