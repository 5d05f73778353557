package media

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/parley-chat/parley/server/doclock"
	"github.com/parley-chat/parley/server/mongoindex"
)

// States of a media document. An upload moves pending → uploading →
// ready; a failed one is deleted outright, and clean-up moves stale ones
// to deleting while it removes their files.
const (
	statePending   = "pending"
	stateUploading = "uploading"
	stateReady     = "ready"
	stateDeleting  = "deleting"
)

// File types, as the seed names them.
const (
	TypeImage = "image"
	TypeVideo = "video"
	TypeFile  = "file"
)

// claimAvatar is the claim of an upload being made an avatar, and
// claimGroup (+ the chat id) of one being made a group's avatar.
const (
	claimAvatar = "avatar"
	claimGroup  = "group:"
)

// mediaDoc is a document of the media collection: the seed's fields
// (chatId, messageId, uploaderId, fileType, url, uploadedAt) plus the
// upload's state and what the server learnt from the bytes.
type mediaDoc struct {
	ID         bson.ObjectID  `bson:"_id"`
	ChatID     *bson.ObjectID `bson:"chatId,omitempty"`
	MessageID  *bson.ObjectID `bson:"messageId,omitempty"`
	UploaderID int            `bson:"uploaderId"`
	FileType   string         `bson:"fileType"`
	URL        string         `bson:"url"`
	UploadedAt *time.Time     `bson:"uploadedAt,omitempty"`

	Avatar       bool       `bson:"avatar,omitempty"`
	State        string     `bson:"state"`
	StateAt      time.Time  `bson:"stateAt"`
	CreatedAt    time.Time  `bson:"createdAt"`
	FileName     string     `bson:"fileName"`
	DeclaredType string     `bson:"declaredType"`
	ContentType  string     `bson:"contentType,omitempty"`
	Size         int64      `bson:"size"`
	SHA256       string     `bson:"sha256,omitempty"`
	Width        int        `bson:"width,omitempty"`
	Height       int        `bson:"height,omitempty"`
	Thumbnail    bool       `bson:"thumbnail,omitempty"`
	Claim        string     `bson:"claim,omitempty"`
	ClaimedAt    *time.Time `bson:"claimedAt,omitempty"`
	AvatarID     int        `bson:"avatarId,omitempty"`
	// GroupID is the group whose avatar the upload is.
	GroupID *bson.ObjectID `bson:"groupId,omitempty"`
	// FileID names the media whose stored files this one shares: set on
	// a forwarded copy (see Library.Forward); an upload's files are its
	// own.
	FileID *bson.ObjectID `bson:"fileId,omitempty"`
	// Version counts the updates of the document; each update expects
	// the version it read (see store.update). 0: none stored yet.
	Version int64 `bson:"version,omitempty"`
	// Loose marks what clean-up looks at: an upload in no message, avatar
	// or group (from its insert until it is attached, and again when it
	// is detached), and one being deleted. Clean-up reads these by their
	// index, not the whole collection, which holds mostly files that were
	// sent and stay.
	Loose bool `bson:"loose,omitempty"`
	// ClientUploadID is the uploader's key for a retry of CreateUpload.
	ClientUploadID string `bson:"clientUploadId,omitempty"`
}

// attached reports whether the file is in use: sent in a message or an
// avatar.
func (m *mediaDoc) attached() bool { return m.MessageID != nil || m.AvatarID != 0 || m.GroupID != nil }

// fileID names the stored files of m: the keys of its bytes and
// thumbnail always derive from it, never from m's own id.
func (m *mediaDoc) fileID() bson.ObjectID {
	if m.FileID != nil {
		return *m.FileID
	}
	return m.ID
}

func originalKey(id bson.ObjectID) string  { return id.Hex() }
func thumbnailKey(id bson.ObjectID) string { return id.Hex() + ".thumb" }

// Path is where the download endpoint serves files.
const Path = "/media/"

// URL is where a media's file is downloaded, relative to the base URL.
func URL(id bson.ObjectID) string { return Path + id.Hex() }

func thumbnailURL(id bson.ObjectID) string { return Path + id.Hex() + "/thumbnail" }

var errNoMedia = errors.New("no such media")

// store keeps the media documents. As in the chat store, on engines that
// lose concurrent updates of one document (see doclock), every update of a
// document that more than one request may change holds its lock.
type store struct {
	media *mongo.Collection
	locks *doclock.Locks
	now   func() time.Time
}

func newStore(db *mongo.Database, locks *doclock.Locks, now func() time.Time) *store {
	return &store{media: db.Collection("media"), locks: locks, now: now}
}

// EnsureIndexes creates the media collection's indexes. It is idempotent.
func EnsureIndexes(ctx context.Context, db *mongo.Database) error {
	err := mongoindex.Ensure(ctx, db.Collection("media"), []mongo.IndexModel{
		{Keys: bson.D{{Key: "createdAt", Value: 1}}, Options: options.Index().SetName("createdAt")},
		{Keys: bson.D{{Key: "messageId", Value: 1}}, Options: options.Index().SetName("messageId")},
		// Each CreateUpload sums the user's unsent uploads; an export
		// pages through the user's uploads by id.
		{Keys: bson.D{{Key: "uploaderId", Value: 1}, {Key: "_id", Value: 1}}, Options: options.Index().SetName("uploaderId_id")},
		// A retried CreateUpload finds the upload by its client's key.
		{Keys: bson.D{{Key: "uploaderId", Value: 1}, {Key: "clientUploadId", Value: 1}, {Key: "createdAt", Value: -1}}, Options: options.Index().SetName("uploaderId_clientUploadId_createdAt")},
		// Deleting a file's document looks for others that share it.
		{Keys: bson.D{{Key: "fileId", Value: 1}}, Options: options.Index().SetName("fileId")},
		// Clean-up reads what is loose, oldest first.
		{Keys: bson.D{{Key: "loose", Value: 1}, {Key: "createdAt", Value: 1}}, Options: options.Index().SetName("loose_createdAt")},
	})
	if err != nil {
		return fmt.Errorf("create indexes on media: %w", err)
	}
	// uploaderId_id begins with what this one held.
	if err := mongoindex.Drop(ctx, db.Collection("media"), []string{"uploaderId"}); err != nil {
		return fmt.Errorf("drop an index of media: %w", err)
	}
	return nil
}

func (s *store) nowMs() time.Time { return s.now().UTC().Truncate(time.Millisecond) }

// locked runs fn holding the lock of one media document (see doclock).
func (s *store) locked(ctx context.Context, id bson.ObjectID, fn func() error) error {
	return s.locks.Do(ctx, id.Hex(), fn)
}

func (s *store) insert(ctx context.Context, m *mediaDoc) error {
	if _, err := s.media.InsertOne(ctx, m); err != nil {
		return fmt.Errorf("insert media: %w", err)
	}
	return nil
}

// byClientKey returns the user's latest upload created since since under
// the client's key, or nil.
func (s *store) byClientKey(ctx context.Context, userID int, key string, since time.Time) (*mediaDoc, error) {
	var m mediaDoc
	err := s.media.FindOne(ctx, byClientKeyFilter(userID, key, since),
		options.FindOne().SetSort(bson.D{{Key: "createdAt", Value: -1}})).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("find media by client key: %w", err)
	}
	return &m, nil
}

func byClientKeyFilter(userID int, key string, since time.Time) bson.D {
	return bson.D{
		{Key: "uploaderId", Value: userID},
		{Key: "clientUploadId", Value: key},
		{Key: "createdAt", Value: bson.D{{Key: "$gt", Value: since}}},
		{Key: "state", Value: bson.D{{Key: "$ne", Value: stateDeleting}}},
	}
}

// unsentBytes sums the declared sizes of the user's uploads that are in
// no message and no avatar: those pending since after pendingSince (older
// ones can no longer be uploaded), being received, or ready. Forwarded
// copies, which hold no bytes of their own, do not count.
func (s *store) unsentBytes(ctx context.Context, userID int, pendingSince time.Time) (int64, error) {
	cur, err := s.media.Aggregate(ctx, mongo.Pipeline{
		{{Key: "$match", Value: bson.D{
			{Key: "uploaderId", Value: userID},
			{Key: "messageId", Value: bson.D{{Key: "$exists", Value: false}}},
			{Key: "avatarId", Value: bson.D{{Key: "$exists", Value: false}}},
			{Key: "groupId", Value: bson.D{{Key: "$exists", Value: false}}},
			{Key: "state", Value: bson.D{{Key: "$ne", Value: stateDeleting}}},
			{Key: "fileId", Value: bson.D{{Key: "$exists", Value: false}}},
			{Key: "$or", Value: bson.A{
				bson.D{{Key: "state", Value: bson.D{{Key: "$ne", Value: statePending}}}},
				bson.D{{Key: "createdAt", Value: bson.D{{Key: "$gt", Value: pendingSince}}}},
			}},
		}}},
		{{Key: "$group", Value: bson.D{{Key: "_id", Value: nil}, {Key: "total", Value: bson.D{{Key: "$sum", Value: "$size"}}}}}},
	})
	if err != nil {
		return 0, fmt.Errorf("sum unsent media: %w", err)
	}
	var out []struct {
		Total int64 `bson:"total"`
	}
	if err := cur.All(ctx, &out); err != nil {
		return 0, fmt.Errorf("sum unsent media: %w", err)
	}
	if len(out) == 0 {
		return 0, nil
	}
	return out[0].Total, nil
}

func (s *store) get(ctx context.Context, id bson.ObjectID) (*mediaDoc, error) {
	var m mediaDoc
	err := s.media.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&m)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return nil, errNoMedia
	}
	if err != nil {
		return nil, fmt.Errorf("get media: %w", err)
	}
	return &m, nil
}

// update reads the document, lets change decide (and modify it), and
// writes the update change returns, if the document is still as read: a
// compare and swap on its version, atomic on MongoDB and FerretDB 2 (and
// under the document's lock on FerretDB 1.x). When another update came in
// between, it reads again and asks change again, so change must derive
// everything from the document it is given. change returning an error,
// or no update, leaves the document as it was.
func (s *store) update(ctx context.Context, id bson.ObjectID, change func(m *mediaDoc) (bson.D, error)) (*mediaDoc, error) {
	for {
		var out *mediaDoc
		swapped := true
		err := s.locked(ctx, id, func() error {
			m, err := s.get(ctx, id)
			if err != nil {
				return err
			}
			update, err := change(m)
			if err != nil {
				return err
			}
			out = m
			if len(update) == 0 {
				return nil
			}
			version := bson.E{Key: "version", Value: m.Version}
			if m.Version == 0 {
				version.Value = bson.D{{Key: "$exists", Value: false}}
			}
			update = append(update, bson.E{Key: "$inc", Value: bson.D{{Key: "version", Value: int64(1)}}})
			res, err := s.media.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, version}, update)
			if err != nil {
				return fmt.Errorf("update media: %w", err)
			}
			swapped = res.MatchedCount == 1
			return nil
		})
		if err != nil || swapped {
			return out, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// fileInUse reports whether a media document other than self, and not
// being deleted, uses the stored files of file: the upload file itself or
// a copy of it (fileId). Two queries by index, rather than one $or.
func (s *store) fileInUse(ctx context.Context, file, self bson.ObjectID) (bool, error) {
	live := bson.E{Key: "state", Value: bson.D{{Key: "$ne", Value: stateDeleting}}}
	filters := []bson.D{{{Key: "fileId", Value: file}, {Key: "_id", Value: bson.D{{Key: "$ne", Value: self}}}, live}}
	if file != self {
		filters = append(filters, bson.D{{Key: "_id", Value: file}, live})
	}
	for _, f := range filters {
		err := s.media.FindOne(ctx, f, options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
		if err == nil {
			return true, nil
		}
		if !errors.Is(err, mongo.ErrNoDocuments) {
			return false, fmt.Errorf("media file in use: %w", err)
		}
	}
	return false, nil
}

func (s *store) remove(ctx context.Context, id bson.ObjectID) error {
	if _, err := s.media.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return fmt.Errorf("delete media: %w", err)
	}
	return nil
}

// stale lists documents clean-up should look at, oldest first: loose
// ones created before cutoff, and ones left in deleting since before
// deletingCutoff. (A loose one found attached is one that an older
// version attached: clean-up settles it.)
func (s *store) stale(ctx context.Context, cutoff, deletingCutoff time.Time, limit int) ([]mediaDoc, error) {
	filter, sort := staleQuery(cutoff, deletingCutoff)
	cur, err := s.media.Find(ctx, filter, options.Find().SetLimit(int64(limit)).SetSort(sort))
	if err != nil {
		return nil, fmt.Errorf("stale media: %w", err)
	}
	var out []mediaDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("stale media: %w", err)
	}
	return out, nil
}

// staleQuery is stale's filter and order.
func staleQuery(cutoff, deletingCutoff time.Time) (filter, sort bson.D) {
	return bson.D{{Key: "loose", Value: true}, {Key: "$or", Value: bson.A{
		// Not one whose file arrived since cutoff: it has the whole delay
		// from then (see Janitor.sweepOne), and would hold a place in
		// every batch meanwhile.
		bson.D{
			{Key: "createdAt", Value: bson.D{{Key: "$lt", Value: cutoff}}},
			{Key: "$or", Value: bson.A{
				bson.D{{Key: "state", Value: bson.D{{Key: "$ne", Value: stateReady}}}},
				bson.D{{Key: "stateAt", Value: bson.D{{Key: "$lt", Value: cutoff}}}},
			}},
		},
		bson.D{
			{Key: "state", Value: stateDeleting},
			{Key: "stateAt", Value: bson.D{{Key: "$lt", Value: deletingCutoff}}},
		},
	}}}, bson.D{{Key: "createdAt", Value: 1}}
}

// markLoose marks loose what versions before the mark stored unmarked:
// uploads in no message, avatar or group, and those being deleted. It
// reads the whole collection. Each document is marked by its own
// compare and swap (store.update), as any other change of it, so that
// it loses no change made meanwhile (FerretDB 1.x would, to one
// updateMany).
func (s *store) markLoose(ctx context.Context) (int64, error) {
	const batch = 500
	filter := bson.D{
		{Key: "loose", Value: bson.D{{Key: "$exists", Value: false}}},
		{Key: "$or", Value: bson.A{
			bson.D{
				{Key: "messageId", Value: bson.D{{Key: "$exists", Value: false}}},
				{Key: "avatarId", Value: bson.D{{Key: "$exists", Value: false}}},
				{Key: "groupId", Value: bson.D{{Key: "$exists", Value: false}}},
			},
			bson.D{{Key: "state", Value: stateDeleting}},
		}},
	}
	marked := int64(0)
	after := bson.ObjectID{}
	for {
		// By id, from where the last batch ended: a document that stays
		// unmarked (attached meanwhile) is not read again.
		page := append(bson.D{{Key: "_id", Value: bson.D{{Key: "$gt", Value: after}}}}, filter...)
		cur, err := s.media.Find(ctx, page, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}).SetLimit(batch).
			SetProjection(bson.D{{Key: "_id", Value: 1}}))
		if err != nil {
			return marked, fmt.Errorf("mark loose media: %w", err)
		}
		var ids []struct {
			ID bson.ObjectID `bson:"_id"`
		}
		if err := cur.All(ctx, &ids); err != nil {
			return marked, fmt.Errorf("mark loose media: %w", err)
		}
		for _, d := range ids {
			changed := false
			_, err := s.update(ctx, d.ID, func(m *mediaDoc) (bson.D, error) {
				changed = !m.Loose && (!m.attached() || m.State == stateDeleting)
				if !changed {
					return nil, nil
				}
				return bson.D{{Key: "$set", Value: bson.D{{Key: "loose", Value: true}}}}, nil
			})
			if err != nil && !errors.Is(err, errNoMedia) {
				return marked, fmt.Errorf("mark loose media %s: %w", d.ID.Hex(), err)
			}
			if err == nil && changed {
				marked++
			}
		}
		if len(ids) < batch {
			return marked, nil
		}
		after = ids[len(ids)-1].ID
	}
}

// ofMessage lists the media attached to a message.
func (s *store) ofMessage(ctx context.Context, messageID bson.ObjectID) ([]mediaDoc, error) {
	cur, err := s.media.Find(ctx, bson.D{{Key: "messageId", Value: messageID}})
	if err != nil {
		return nil, fmt.Errorf("media of message: %w", err)
	}
	var out []mediaDoc
	if err := cur.All(ctx, &out); err != nil {
		return nil, fmt.Errorf("media of message: %w", err)
	}
	return out, nil
}
