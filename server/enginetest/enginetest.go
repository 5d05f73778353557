// Package enginetest gives tests a database of their own on the real
// document engine, for what only a real engine shows (query plans).
// It imports no Parley package, so that any package's own tests may use
// it.
package enginetest

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Database returns a fresh database, named after prefix, on the engine
// at PARLEY_TEST_MONGO_URI (FerretDB 2 + DocumentDB or MongoDB), dropped
// when the test ends. Without that engine the test is skipped: the
// embedded FerretDB 1.x answers every query by a scan.
func Database(tb testing.TB, prefix string) *mongo.Database {
	tb.Helper()
	uri := os.Getenv("PARLEY_TEST_MONGO_URI")
	if uri == "" {
		tb.Skip("PARLEY_TEST_MONGO_URI is not set: the embedded FerretDB 1.x uses no indexes (scripts/with-test-services sets it)")
	}
	client, err := mongo.Connect(options.Client().ApplyURI(uri))
	if err != nil {
		tb.Fatal(err)
	}
	db := client.Database(fmt.Sprintf("%s_%d", prefix, time.Now().UnixNano()))
	tb.Cleanup(func() {
		_ = db.Drop(context.Background())
		_ = client.Disconnect(context.Background())
	})
	return db
}
