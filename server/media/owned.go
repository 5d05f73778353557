package media

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// OwnFile is a file a user uploaded and put to use: sent in a message,
// or made the user's or a group's avatar. Data exports list them.
type OwnFile struct {
	ID bson.ObjectID
	// ChatID and MessageID say where a file sent in a message went.
	ChatID, MessageID *bson.ObjectID
	// Avatar is true for an avatar image (the user's own, or a group's
	// when GroupID is set).
	Avatar      bool
	GroupID     *bson.ObjectID
	FileName    string
	ContentType string
	Size        int64
	// SHA256 is the content's digest in lowercase hex.
	SHA256     string
	UploadedAt time.Time
	file       bson.ObjectID
}

// ownFilesPage is how many documents one read of OwnFiles takes.
const ownFilesPage = 100

// OwnFiles calls fn with each file userID uploaded that is in use, oldest
// first: uploads not sent (yet), uploads being deleted and forwarded
// copies of others' files are left out. It reads the documents a page at
// a time, by id, so a user with many files costs no memory, and no cursor
// stays open while fn copies files (the store would drop one idle for
// minutes).
func (l *Library) OwnFiles(ctx context.Context, userID int, fn func(OwnFile) error) error {
	var after *bson.ObjectID
	for {
		filter := bson.D{
			{Key: "uploaderId", Value: userID},
			{Key: "state", Value: stateReady},
			{Key: "fileId", Value: bson.D{{Key: "$exists", Value: false}}},
		}
		if after != nil {
			filter = append(filter, bson.E{Key: "_id", Value: bson.D{{Key: "$gt", Value: *after}}})
		}
		var page []mediaDoc
		cur, err := l.store.media.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(ownFilesPage))
		if err == nil {
			err = cur.All(ctx, &page)
		}
		if err != nil {
			return fmt.Errorf("own files: %w", err)
		}
		for _, m := range page {
			if !m.attached() {
				continue
			}
			f := OwnFile{
				ID: m.ID, ChatID: m.ChatID, MessageID: m.MessageID, Avatar: m.Avatar, GroupID: m.GroupID,
				FileName: m.FileName, ContentType: m.ContentType, Size: m.Size, SHA256: m.SHA256, file: m.fileID(),
			}
			if m.UploadedAt != nil {
				f.UploadedAt = *m.UploadedAt
			}
			if err := fn(f); err != nil {
				return err
			}
		}
		if len(page) < ownFilesPage {
			return nil
		}
		after = &page[len(page)-1].ID
	}
}

// OpenOwn opens the bytes of an own file. ErrNoObject: it was deleted since
// OwnFiles listed it.
func (l *Library) OpenOwn(ctx context.Context, f OwnFile) (Object, error) {
	return l.storage.Open(ctx, originalKey(f.file))
}

// Storage returns where the Library keeps files, for other stored
// objects (data exports) that must live in the same place on every
// instance. Their keys must not be media ids (24 hex digits, optionally
// with ".thumb").
func (l *Library) Storage() Storage { return l.storage }
