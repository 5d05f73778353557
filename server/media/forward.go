package media

import (
	"context"
	"crypto/sha256"
	"errors"
	"strconv"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// errSourceDeleted refuses a forward whose message is being deleted.
var errSourceDeleted = connect.NewError(connect.CodeFailedPrecondition, errors.New("the message was deleted"))

// forwardClaim is the claim of a copy not yet confirmed (see Forward).
func forwardClaim(key string) string { return "forward:" + key }

// Forward gives the message that key names (as given to Claim), a
// forward by userID into chatID, its own copy of each file ids of the
// message sourceID: a new media document of chatID, uploaded by userID,
// that shares the source's stored files (fileId) and so needs no new
// upload. Access stays per chat (a copy is visible to the members of its
// own chat), and deleting a message deletes its copies as any files.
// Each copy comes claimed for the message, as from Claim, for Attach to
// record the message on. A source file that is not one of the message's
// (missing) is left out with a warning; one being deleted fails the
// forward (FAILED_PRECONDITION).
//
// A retry makes no second copy: a copy's id derives from the chat, the
// sender, the key and the source (copyID), so that a retry finds the
// copy an earlier attempt made.
//
// Stored files are shared, and removed only with the last document that
// uses them (removeFiles). A forward racing with the deletion of its
// source could copy a document whose files are being removed; each side
// therefore writes first and reads second:
//
//   - the forward inserts its copy unconfirmed (claim "forward:<key>"),
//     then reads the source again, then confirms the copy (claim
//     "message:<key>") only if the source is still there and not
//     deleting, and otherwise aborts it (state deleting, then removed);
//     confirming and aborting are compare and swaps on the copy, so that
//     of two attempts at one send that see the source differently only
//     one decides, and the message is stored only with confirmed copies;
//   - the deleter moves its document to deleting, then looks for another
//     document of the same file not deleting (its copies, its original).
//
// Each store operation is atomic. So either the deleter's look comes
// after the copy's insert and finds the copy (unaborted, since it was
// confirmed), and keeps the files; or it comes before, and then so did
// the source's move to deleting, which the forward's read after its
// insert sees: the copy is aborted and no message takes it. The same
// holds of a copy of a copy, down to the upload. A copy left unconfirmed
// or unattached by a send that died is a stale claim for clean-up, which
// deletes it through the same check.
func (l *Library) Forward(ctx context.Context, userID int, chatID bson.ObjectID, key string, sourceID bson.ObjectID, ids []bson.ObjectID) ([]Attachment, error) {
	out := make([]Attachment, 0, len(ids))
	for _, id := range ids {
		a, ok, err := l.forwardOne(ctx, userID, chatID, key, sourceID, id)
		if err != nil {
			// Copies confirmed so far may be taken by another attempt
			// at the send, which cannot be told from here: they are
			// left to clean-up, as stale claims.
			return nil, err
		}
		if ok {
			out = append(out, a)
		}
	}
	return out, nil
}

// forwardOne makes Forward's copy of one file, reporting false when the
// file is to be left out.
func (l *Library) forwardOne(ctx context.Context, userID int, chatID bson.ObjectID, key string, sourceID, id bson.ObjectID) (Attachment, bool, error) {
	src, err := l.store.get(ctx, id)
	if errors.Is(err, errNoMedia) || (err == nil && (src.MessageID == nil || *src.MessageID != sourceID)) {
		l.log.WarnContext(ctx, "forward: a file of the message is missing; left out", "message", sourceID.Hex(), "media", id.Hex())
		return Attachment{}, false, nil
	}
	if err != nil {
		return Attachment{}, false, err
	}
	if src.State != stateReady {
		return Attachment{}, false, errSourceDeleted
	}
	now := l.store.nowMs()
	fileID := src.fileID()
	cp := &mediaDoc{
		ID: copyID(chatID, userID, key, id), ChatID: &chatID, UploaderID: userID, FileType: src.FileType, UploadedAt: &now,
		State: stateReady, StateAt: now, CreatedAt: now,
		FileName: src.FileName, DeclaredType: src.DeclaredType, ContentType: src.ContentType, Size: src.Size, SHA256: src.SHA256,
		Width: src.Width, Height: src.Height, Thumbnail: src.Thumbnail,
		Claim: forwardClaim(key), ClaimedAt: &now, FileID: &fileID, Loose: true,
	}
	cp.URL = URL(cp.ID)
	if err := l.store.insert(ctx, cp); err != nil && !mongo.IsDuplicateKeyError(err) {
		return Attachment{}, false, err
	}
	// Made now, or by an earlier attempt at this send: either way the
	// source is read again, after the copy exists.
	again, err := l.store.get(ctx, id)
	there := err == nil && again.State == stateReady
	if err != nil && !errors.Is(err, errNoMedia) {
		return Attachment{}, false, err
	}
	aborted := false
	cp, err = l.store.update(ctx, cp.ID, func(m *mediaDoc) (bson.D, error) {
		aborted = false
		switch {
		case m.State == stateDeleting:
			// Aborted by another attempt.
			return nil, errSourceDeleted
		case m.Claim == forwardClaim(key) && there:
			m.Claim = "message:" + key
			return bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: m.Claim}}}}, nil
		case m.Claim == forwardClaim(key):
			aborted = true
			m.State, m.StateAt = stateDeleting, l.store.nowMs()
			return bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: m.State}, {Key: "stateAt", Value: m.StateAt}, {Key: "loose", Value: true}}}}, nil
		case m.Claim == "" && !m.attached():
			// Confirmed, then released by an attempt whose message was
			// stored without it: claimed again, as Claim does.
			claimedAt := l.store.nowMs()
			m.Claim, m.ClaimedAt = "message:"+key, &claimedAt
			return bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: m.Claim}, {Key: "claimedAt", Value: claimedAt}}}}, nil
		}
		// Confirmed already, by another attempt: the source was there
		// after the copy was made, so the copy keeps the files.
		return nil, nil
	})
	if errors.Is(err, errNoMedia) {
		// Aborted and removed by another attempt.
		return Attachment{}, false, errSourceDeleted
	}
	if err != nil {
		return Attachment{}, false, err
	}
	if aborted {
		if err := l.purge(ctx, cp); err != nil {
			// Clean-up finishes a deletion left part-way.
			l.log.WarnContext(ctx, "forward: remove an aborted copy", "media", cp.ID.Hex(), "err", err)
		}
		return Attachment{}, false, errSourceDeleted
	}
	return cp.attachment(), true, nil
}

// copyID is the id of the copy of source that the forward into chatID
// by userID under key makes: the same for every attempt at the send.
func copyID(chatID bson.ObjectID, userID int, key string, source bson.ObjectID) bson.ObjectID {
	sum := sha256.Sum256([]byte("forward:" + chatID.Hex() + ":" + strconv.Itoa(userID) + ":" + source.Hex() + ":" + key))
	var id bson.ObjectID
	copy(id[:], sum[:len(id)])
	return id
}
