package media

import (
	"context"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/parley-chat/parley/server/enginetest"
)

// testLibrary is a Library on a database of its own (name) on the test
// engine, with its indexes, on clock now, storing files in a temporary
// directory: fs, or wrap(fs) when wrap is given.
func testLibrary(t *testing.T, name string, now func() time.Time, wrap func(*FS) Storage) (*Library, *FS) {
	t.Helper()
	db := enginetest.Database(t, name)
	if err := EnsureIndexes(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	fs, err := NewFS(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var storage Storage = fs
	if wrap != nil {
		storage = wrap(fs)
	}
	return NewLibrary(slog.New(slog.NewTextHandler(io.Discard, nil)), db, nil, storage, now), fs
}

// putMedia stores m, with its URL set, and a file of 4 bytes under it.
func putMedia(t *testing.T, lib *Library, fs *FS, m *mediaDoc) {
	t.Helper()
	ctx := context.Background()
	m.URL, m.Size = URL(m.ID), 4
	if err := lib.store.insert(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := fs.Put(ctx, originalKey(m.ID), strings.NewReader("data"), 4, "application/octet-stream"); err != nil {
		t.Fatal(err)
	}
}

// OwnFiles lists every own file in use, oldest first, over more pages
// than one read takes, and leaves out the others.
func TestOwnFiles_Pages(t *testing.T) {
	ctx := context.Background()
	lib, _ := testLibrary(t, "ownfiles", time.Now, nil)
	const n = 2*ownFilesPage + 30
	var want []bson.ObjectID
	for i := range n + 10 {
		msg := bson.NewObjectID()
		m := &mediaDoc{ID: bson.NewObjectID(), UploaderID: 7, State: stateReady, MessageID: &msg, FileName: "f"}
		switch {
		case i >= n:
			m.MessageID = nil // never sent
		default:
			want = append(want, m.ID)
		}
		if err := lib.store.insert(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	var got []bson.ObjectID
	if err := lib.OwnFiles(ctx, 7, func(f OwnFile) error { got = append(got, f.ID); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("OwnFiles listed %d files, want the %d sent, in order", len(got), len(want))
	}
}
