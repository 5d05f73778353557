package media

import (
	"context"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/enginetest"
	"github.com/parley-chat/parley/server/mongoindex"
)

// TestStale_ReadsByIndex: clean-up's query reads the loose uploads by
// their index, not the whole collection, which holds mostly files that
// were sent. It needs a real engine (PARLEY_TEST_MONGO_URI: FerretDB 2 +
// DocumentDB or MongoDB); FerretDB 1.x answers every query by a scan.
func TestStale_ReadsByIndex(t *testing.T) {
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
	filter, sort := staleQuery(now.Add(-time.Hour), now.Add(-deletingGrace))
	plan, err := db.RunCommand(ctx, bson.D{
		{Key: "explain", Value: bson.D{{Key: "find", Value: "media"}, {Key: "filter", Value: filter}, {Key: "sort", Value: sort}, {Key: "limit", Value: 100}}},
		{Key: "verbosity", Value: "queryPlanner"},
	}).Raw()
	if err != nil {
		t.Fatalf("explain: %v", err)
	}
	reason, err := mongoindex.Unindexed(plan)
	if err != nil {
		t.Fatal(err)
	}
	if reason != "" {
		t.Errorf("%s\nplan: %s", reason, plan)
	}
}
