package media

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// failingDeletes is a real store of files whose deletions fail while
// fail is set: a deletion that stops part-way.
type failingDeletes struct {
	Storage
	fail bool
}

func (f *failingDeletes) Delete(ctx context.Context, key string) error {
	if f.fail {
		return errors.New("storage unavailable")
	}
	return f.Storage.Delete(ctx, key)
}

// TestLoose_KeptByEveryChange: each change of a media document leaves
// its loose mark as clean-up needs it: set on an upload or a forwarded
// copy until attached, and on one whose deletion stopped part-way (also
// when an attachment comes after the deletion began); off once attached.
func TestLoose_KeptByEveryChange(t *testing.T) {
	ctx := context.Background()
	var storage *failingDeletes
	lib, fs := testLibrary(t, "loose", time.Now, func(fs *FS) Storage {
		storage = &failingDeletes{Storage: fs}
		return storage
	})
	now := time.Now().UTC().Truncate(time.Millisecond)
	chatID := bson.NewObjectID()
	upload := func(claim string) *mediaDoc {
		t.Helper()
		m := &mediaDoc{ID: bson.NewObjectID(), UploaderID: 1, FileType: TypeFile, State: stateReady,
			StateAt: now, CreatedAt: now, Loose: true, Claim: claim}
		if claim == claimAvatar {
			m.Avatar, m.FileType = true, TypeImage
		} else {
			m.ChatID = &chatID
		}
		if claim != "" {
			m.ClaimedAt = &now
		}
		putMedia(t, lib, fs, m)
		return m
	}
	loose := func(id bson.ObjectID) bool {
		t.Helper()
		m, err := lib.store.get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return m.Loose
	}

	// Attached to a message: settled.
	sent, msgID := upload("message:k"), bson.NewObjectID()
	if err := lib.Attach(ctx, []bson.ObjectID{sent.ID}, "k", msgID); err != nil {
		t.Fatal(err)
	}
	if loose(sent.ID) {
		t.Error("an upload attached to its message is still loose")
	}
	// Forwarded: the copy is loose until its message is recorded.
	other := bson.NewObjectID()
	copies, err := lib.Forward(ctx, 2, other, "f", msgID, []bson.ObjectID{sent.ID})
	if err != nil || len(copies) != 1 {
		t.Fatalf("Forward: %v, %v", copies, err)
	}
	if !loose(copies[0].MediaID) {
		t.Error("a forwarded copy not yet in its message is not loose")
	}
	// A deletion that stops part-way leaves the upload loose, for
	// clean-up to finish; an attachment that comes after it began, too.
	storage.fail = true
	if err := lib.DeleteOfMessage(ctx, bson.NewObjectID()); err != nil {
		t.Fatal(err) // a message with no files: nothing to delete
	}
	doomed := upload(claimAvatar)
	if err := lib.AttachAvatar(ctx, doomed.ID, 7, claimOf(doomed)); err != nil {
		t.Fatal(err)
	}
	if loose(doomed.ID) {
		t.Error("an avatar's upload is still loose")
	}
	if err := lib.DeleteAvatar(ctx, doomed.URL, 7, Claim{}); err == nil {
		t.Fatal("DeleteAvatar with the files' deletion failing: no error")
	}
	if !loose(doomed.ID) {
		t.Error("an upload whose deletion stopped part-way is not loose")
	}
	if err := lib.AttachAvatar(ctx, doomed.ID, 7, claimOf(doomed)); err != nil {
		t.Fatal(err)
	}
	if !loose(doomed.ID) {
		t.Error("an upload being deleted lost its loose mark to an attachment")
	}
	storage.fail = false
	// Clean-up finishes the deletion.
	j := NewJanitor(lib.log, lib, nil, time.Hour, func() time.Time { return now.Add(2 * deletingGrace) })
	if n, err := j.Sweep(ctx); err != nil || n != 1 {
		t.Fatalf("sweep: %d, %v; want the deletion finished", n, err)
	}
	if _, err := lib.store.get(ctx, doomed.ID); !errors.Is(err, errNoMedia) {
		t.Errorf("the upload whose deletion stopped part-way: %v, want it gone", err)
	}
}
