package media

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/enginetest"
	"github.com/parley-chat/parley/server/mongoindex"
)

// TestQueries_ReadByIndex: clean-up's query reads the loose uploads by
// their index, not the whole collection, which holds mostly files that
// were sent; a retried CreateUpload finds its upload by the uploader's
// index. It needs a real engine (PARLEY_TEST_MONGO_URI: FerretDB 2 +
// DocumentDB or MongoDB); FerretDB 1.x answers every query by a scan.
func TestQueries_ReadByIndex(t *testing.T) {
	db := enginetest.Database(t, "explain_media")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := EnsureIndexes(ctx, db); err != nil {
		t.Fatal(err)
	}
	// 5,000 files sent in messages, and 20 loose uploads.
	now := time.Now().UTC().Truncate(time.Millisecond)
	var docs []any
	for i := range 5020 {
		m := mediaDoc{ID: bson.NewObjectID(), UploaderID: i % 50, FileType: TypeFile, State: stateReady,
			StateAt: now, CreatedAt: now.Add(-time.Duration(i) * time.Minute), Size: 10}
		if i < 5000 {
			msg := bson.NewObjectID()
			m.MessageID = &msg
		} else {
			m.Loose = true
		}
		docs = append(docs, m)
	}
	if _, err := db.Collection("media").InsertMany(ctx, docs); err != nil {
		t.Fatal(err)
	}
	stale, staleSort := staleQuery(now.Add(-time.Hour), now.Add(-deletingGrace))
	for _, q := range []struct {
		name         string
		filter, sort bson.D
	}{
		{"clean-up", stale, staleSort},
		{"retried upload", byClientKeyFilter(7, "k", now.Add(-time.Hour)), bson.D{{Key: "createdAt", Value: -1}}},
	} {
		plan, err := db.RunCommand(ctx, bson.D{
			{Key: "explain", Value: bson.D{{Key: "find", Value: "media"}, {Key: "filter", Value: q.filter}, {Key: "sort", Value: q.sort}, {Key: "limit", Value: 100}}},
			{Key: "verbosity", Value: "queryPlanner"},
		}).Raw()
		if err != nil {
			t.Fatalf("explain %s: %v", q.name, err)
		}
		reason, err := mongoindex.Unindexed(plan)
		if err != nil {
			t.Fatal(err)
		}
		if reason != "" {
			t.Errorf("%s: %s\nplan: %s", q.name, reason, plan)
		}
	}
}
