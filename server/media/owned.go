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

// OwnFiles calls fn with each file userID uploaded that is in use, oldest
// first: uploads not sent (yet), uploads being deleted and forwarded
// copies of others' files are left out. It reads the documents as it goes,
// so a user with many files costs no memory.
func (l *Library) OwnFiles(ctx context.Context, userID int, fn func(OwnFile) error) error {
	filter := bson.D{
		{Key: "uploaderId", Value: userID},
		{Key: "state", Value: stateReady},
		{Key: "fileId", Value: bson.D{{Key: "$exists", Value: false}}},
	}
	cur, err := l.store.media.Find(ctx, filter, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return fmt.Errorf("own files: %w", err)
	}
	defer cur.Close(ctx)
	for cur.Next(ctx) {
		var m mediaDoc
		if err := cur.Decode(&m); err != nil {
			return fmt.Errorf("own files: %w", err)
		}
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
	if err := cur.Err(); err != nil {
		return fmt.Errorf("own files: %w", err)
	}
	return nil
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
