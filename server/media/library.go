package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/parley-chat/parley/server/doclock"
)

// Library keeps the media documents and their files, and hands uploads
// over to the messages and avatars that use them. The chat and user
// services use it; the Service serves it to clients.
//
// Attaching is two steps, so that a crash between the stores never loses
// a file that is in use: Claim reserves ready uploads for one message (or
// avatar) under a key, the caller stores the message, then Attach records
// the message on the uploads. A retry with the same key claims again
// what it claimed before. Clean-up leaves claimed uploads to their owners
// for a while and then asks (Referrers) whether a message or avatar uses
// them before deleting anything.
type Library struct {
	log     *slog.Logger
	store   *store
	storage Storage
}

// NewLibrary returns a Library over the media collection of db and the
// files in storage. locks serialize the updates of one media document on
// engines that need it (see doclock); nil on MongoDB and FerretDB 2.
func NewLibrary(log *slog.Logger, db *mongo.Database, locks *doclock.Locks, storage Storage, now func() time.Time) *Library {
	if now == nil {
		now = time.Now
	}
	return &Library{log: log, store: newStore(db, locks.Prefixed("media:"), now), storage: storage}
}

// Attachment is what a message keeps of a file sent with it.
type Attachment struct {
	MediaID     bson.ObjectID
	Type        string
	URL         string
	FileName    string
	ContentType string
	Size        int64
	Width       int
	Height      int
	Thumbnail   bool
}

func (m *mediaDoc) attachment() Attachment {
	return Attachment{
		MediaID: m.ID, Type: m.FileType, URL: m.URL, FileName: m.FileName, ContentType: m.ContentType,
		Size: m.Size, Width: m.Width, Height: m.Height, Thumbnail: m.Thumbnail,
	}
}

// ThumbnailURL is where an attachment's preview is, when it has one.
func (a Attachment) ThumbnailURL() string {
	if !a.Thumbnail {
		return ""
	}
	return thumbnailURL(a.MediaID)
}

// Errors of Claim, as Connect errors for the client.
var (
	errMediaNotFound = connect.NewError(connect.CodeNotFound, errors.New("media not found"))
	errNotReady      = connect.NewError(connect.CodeFailedPrecondition, errors.New("media upload not finished"))
	errAlreadyUsed   = connect.NewError(connect.CodeFailedPrecondition, errors.New("media already sent"))
	errAlreadyAvatar = connect.NewError(connect.CodeAlreadyExists, errors.New("media is already an avatar"))
)

// Claim reserves uploads for the message that key names (unique per
// chat and sender): each must be a ready upload of userID to chatID, not
// used by another message. Unknown ids and other people's or other chats'
// uploads are NOT_FOUND. On error nothing stays claimed by this call.
func (l *Library) Claim(ctx context.Context, userID int, chatID bson.ObjectID, key string, ids []bson.ObjectID) ([]Attachment, error) {
	key = "message:" + key
	out := make([]Attachment, 0, len(ids))
	var claimed []bson.ObjectID
	for _, id := range ids {
		fresh := false
		m, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
			fresh = false
			switch {
			case m.UploaderID != userID || m.Avatar || m.ChatID == nil || *m.ChatID != chatID:
				return nil, errMediaNotFound
			case m.State != stateReady:
				return nil, errNotReady
			case m.Claim == key:
				// A retry: the claim is renewed, so that clean-up
				// (which compares claimedAt) leaves it alone.
			case m.Claim != "" || m.attached():
				return nil, errAlreadyUsed
			default:
				fresh = true
			}
			now := l.store.nowMs()
			m.Claim, m.ClaimedAt = key, &now
			return bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: key}, {Key: "claimedAt", Value: now}}}}, nil
		})
		if errors.Is(err, errNoMedia) {
			err = errMediaNotFound
		}
		if err != nil {
			l.release(context.WithoutCancel(ctx), claimed, key)
			return nil, err
		}
		if fresh {
			claimed = append(claimed, id)
		}
		out = append(out, m.attachment())
	}
	return out, nil
}

// Release undoes the claims under key (as given to Claim) of uploads that
// the message did not take: a retried send whose message was stored by an
// earlier attempt with other files.
func (l *Library) Release(ctx context.Context, ids []bson.ObjectID, key string) {
	l.release(ctx, ids, "message:"+key)
}

// release undoes claims made under key that no message took up.
func (l *Library) release(ctx context.Context, ids []bson.ObjectID, key string) {
	for _, id := range ids {
		_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
			if m.Claim != key || m.attached() {
				return nil, nil
			}
			return bson.D{{Key: "$unset", Value: bson.D{{Key: "claim", Value: ""}, {Key: "claimedAt", Value: ""}}}}, nil
		})
		if err != nil && !errors.Is(err, errNoMedia) {
			// Clean-up will find the stale claim unused and delete it.
			l.log.WarnContext(ctx, "release media claim", "media", id.Hex(), "err", err)
		}
	}
}

// Attach records the stored message on the uploads claimed for it under
// key (as given to Claim). It is idempotent.
func (l *Library) Attach(ctx context.Context, ids []bson.ObjectID, key string, messageID bson.ObjectID) error {
	key = "message:" + key
	for _, id := range ids {
		_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
			if m.MessageID != nil || m.Claim != key {
				return nil, nil
			}
			m.MessageID = &messageID
			return settled(m, bson.D{{Key: "$set", Value: bson.D{{Key: "messageId", Value: messageID}}}}, nil), nil
		})
		if err != nil {
			return fmt.Errorf("attach media %s: %w", id.Hex(), err)
		}
	}
	return nil
}

// settled is the update that attaches m, with set and unset, and takes
// its loose mark off, unless m is being deleted: clean-up must finish
// that deletion, should it stop part-way.
func settled(m *mediaDoc, set bson.D, unset bson.D) bson.D {
	if m.State != stateDeleting {
		unset = append(unset, bson.E{Key: "loose", Value: ""})
	}
	if len(unset) == 0 {
		return set
	}
	return append(set, bson.E{Key: "$unset", Value: unset})
}

// settle takes the loose mark off an upload that is attached and not
// being deleted.
func (l *Library) settle(ctx context.Context, id bson.ObjectID) error {
	_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		if !m.Loose || !m.attached() || m.State == stateDeleting {
			return nil, nil
		}
		return bson.D{{Key: "$unset", Value: bson.D{{Key: "loose", Value: ""}}}}, nil
	})
	if err != nil && !errors.Is(err, errNoMedia) {
		return fmt.Errorf("settle media %s: %w", id.Hex(), err)
	}
	return nil
}

// DeleteOfMessage deletes the files sent with a message that was deleted
// for everyone.
func (l *Library) DeleteOfMessage(ctx context.Context, messageID bson.ObjectID) error {
	ms, err := l.store.ofMessage(ctx, messageID)
	if err != nil {
		return err
	}
	for _, m := range ms {
		if _, err := l.delete(ctx, m.ID, func(*mediaDoc) bool { return true }); err != nil {
			return err
		}
	}
	return nil
}

// A Claim is an upload's claim as one call made it, or found it: the
// deletion that follows a detach, or an avatar change that lost, deletes
// the upload only if its claim is still that one. An avatar made of the
// same upload meanwhile takes the claim over, as a new claim with a later
// time (see claimTime), and so keeps its image. The zero Claim holds
// nothing.
type Claim struct{ at time.Time }

// holds reports whether m's claim is still c.
func (c Claim) holds(m *mediaDoc) bool {
	return !c.at.IsZero() && m.ClaimedAt != nil && m.ClaimedAt.Equal(c.at)
}

// claimOf is the claim m holds (none without one).
func claimOf(m *mediaDoc) Claim {
	if m.Claim == "" || m.ClaimedAt == nil {
		return Claim{}
	}
	return Claim{at: *m.ClaimedAt}
}

// claimTime is the time of a claim made now of m: later than the claim m
// holds, if any, so that the new one is told from it even within one
// millisecond.
func (l *Library) claimTime(m *mediaDoc) time.Time {
	now := l.store.nowMs()
	if m.ClaimedAt != nil && !now.After(*m.ClaimedAt) {
		now = m.ClaimedAt.Add(time.Millisecond)
	}
	return now
}

// ClaimAvatar reserves an upload of userID for a new avatar and returns
// the URL the avatar serves it at, and the claim it made, for
// AttachAvatar (none when the upload is one of the user's avatars
// already): it must be a ready avatar image the user uploaded and has not
// used yet. A claim left by an AddAvatar that failed part-way, or by an
// avatar being deleted, is taken over; the avatars table decides (one
// avatar per URL).
func (l *Library) ClaimAvatar(ctx context.Context, userID int, id bson.ObjectID) (string, Claim, error) {
	return l.claimAvatarImage(ctx, userID, id, claimAvatar)
}

// claimAvatarImage reserves an avatar upload of userID under claim (see
// ClaimAvatar and ClaimGroupAvatar) and returns its URL and the claim it
// made (none when the upload was the avatar already).
func (l *Library) claimAvatarImage(ctx context.Context, userID int, id bson.ObjectID, claim string) (string, Claim, error) {
	var made Claim
	m, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		made = Claim{}
		switch {
		case m.UploaderID != userID || !m.Avatar:
			return nil, errMediaNotFound
		case m.State != stateReady:
			return nil, errNotReady
		case m.GroupID != nil && claim == claimGroup+m.GroupID.Hex(), m.AvatarID != 0 && claim == claimAvatar:
			// The group's avatar, or one of the user's, already: a
			// retry of the change that made it so.
			return nil, nil
		case m.attached(), m.Claim != "" && m.Claim != claim:
			// Used, or being made, elsewhere: a user's avatar or
			// another group's. (A claim of the same kind, left by a
			// change that failed part-way or by a deletion, is taken
			// over.)
			return nil, errAlreadyAvatar
		}
		made = Claim{at: l.claimTime(m)}
		return bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: claim}, {Key: "claimedAt", Value: made.at}}}}, nil
	})
	if errors.Is(err, errNoMedia) {
		return "", Claim{}, errMediaNotFound
	}
	if err != nil {
		return "", Claim{}, err
	}
	return m.URL, made, nil
}

// AttachAvatar records the avatar that uses an upload, which claimed it
// with c (see ClaimAvatar): only while the upload still holds that claim,
// or is that avatar's already. An AttachAvatar that comes late, after its
// avatar was deleted and the upload claimed again, changes nothing.
func (l *Library) AttachAvatar(ctx context.Context, id bson.ObjectID, avatarID int, c Claim) error {
	_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		if m.AvatarID != avatarID && (m.AvatarID != 0 || m.Claim != claimAvatar || !c.holds(m)) {
			return nil, nil
		}
		return settled(m, bson.D{{Key: "$set", Value: bson.D{{Key: "avatarId", Value: avatarID}}}}, nil), nil
	})
	if err != nil && !errors.Is(err, errNoMedia) {
		return fmt.Errorf("attach avatar media %s: %w", id.Hex(), err)
	}
	return nil
}

// DetachAvatar turns the upload that serves the avatar at url back into
// a claim, as it is while an avatar is made: before the avatar is
// deleted, so that clean-up deletes the upload if the deletion of the
// avatar or of the upload stops half-way (or records it again on the
// avatar, if that stays). It returns the claim, for DeleteAvatar; an
// upload never recorded on the avatar, which still holds a claim of its
// kind, is claimed anew (see detach).
func (l *Library) DetachAvatar(ctx context.Context, url string, avatarID int) (Claim, error) {
	return l.detach(ctx, url, func(m *mediaDoc) (bson.D, bool) {
		return bson.D{{Key: "avatarId", Value: ""}}, m.AvatarID == avatarID
	}, claimAvatar)
}

// DetachGroupAvatar is DetachAvatar for the avatar of a group, before
// it is replaced or removed.
func (l *Library) DetachGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID) (Claim, error) {
	return l.detach(ctx, url, func(m *mediaDoc) (bson.D, bool) {
		return bson.D{{Key: "groupId", Value: ""}}, m.GroupID != nil && *m.GroupID == chatID
	}, claimGroup+chatID.Hex())
}

// detach replaces the attachment of the upload at url, if attached says
// it is the one, with claim, claimed now, and returns that claim. An
// upload not attached that holds claim already (never recorded on its
// avatar) is claimed anew, so that whoever holds the older claim (a
// stalled change, clean-up) can no longer attach it.
func (l *Library) detach(ctx context.Context, url string, attached func(*mediaDoc) (bson.D, bool), claim string) (Claim, error) {
	id, ok := IDFromURL(url)
	if !ok {
		return Claim{}, nil
	}
	var made Claim
	_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		made = Claim{}
		unset, ok := attached(m)
		if !ok && (m.attached() || m.Claim != claim) {
			return nil, nil
		}
		made = Claim{at: l.claimTime(m)}
		update := bson.D{{Key: "$set", Value: bson.D{{Key: "claim", Value: claim}, {Key: "claimedAt", Value: made.at}, {Key: "loose", Value: true}}}}
		if ok {
			update = append(update, bson.E{Key: "$unset", Value: unset})
		}
		return update, nil
	})
	if err != nil && !errors.Is(err, errNoMedia) {
		return Claim{}, fmt.Errorf("detach avatar media %s: %w", id.Hex(), err)
	}
	return made, nil
}

// DeleteAvatar deletes the upload that a deleted avatar served at url,
// if it is one and was that avatar's: recorded on it, or holding the
// claim that DetachAvatar returned (not one that an AddAvatar of the same
// upload took over since).
func (l *Library) DeleteAvatar(ctx context.Context, url string, avatarID int, c Claim) error {
	id, ok := IDFromURL(url)
	if !ok {
		return nil
	}
	_, err := l.delete(ctx, id, func(m *mediaDoc) bool {
		return m.Avatar && m.GroupID == nil && (m.AvatarID == avatarID || m.AvatarID == 0 && m.Claim == claimAvatar && c.holds(m))
	})
	return err
}

// ClaimGroupAvatar reserves an avatar upload of userID (see ClaimAvatar)
// for the avatar of a group, and returns its URL and the claim it made
// (none when it is the group's avatar already, which it stays).
func (l *Library) ClaimGroupAvatar(ctx context.Context, userID int, id, chatID bson.ObjectID) (string, Claim, error) {
	return l.claimAvatarImage(ctx, userID, id, claimGroup+chatID.Hex())
}

// AttachGroupAvatar records the group whose avatar an upload is, which
// claimed it with c (see ClaimGroupAvatar): only while the upload still
// holds that claim. One recorded on a group already stays as it is.
func (l *Library) AttachGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID, c Claim) error {
	id, ok := IDFromURL(url)
	if !ok {
		return nil
	}
	_, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		if m.GroupID != nil || m.Claim != claimGroup+chatID.Hex() || !c.holds(m) {
			return nil, nil
		}
		// claimedAt stays, so that the next claim (a detach, say) is
		// later than this one, even within its millisecond.
		return settled(m, bson.D{{Key: "$set", Value: bson.D{{Key: "groupId", Value: chatID}}}},
			bson.D{{Key: "claim", Value: ""}}), nil
	})
	if err != nil && !errors.Is(err, errNoMedia) {
		return fmt.Errorf("attach group avatar media %s: %w", id.Hex(), err)
	}
	return nil
}

// DeleteGroupAvatar deletes the upload at url that is no longer the
// group's avatar, if it still holds c, the claim that ClaimGroupAvatar
// or DetachGroupAvatar returned. An upload recorded on the group is the
// avatar again (another change set it since), and a claim taken over is
// being made so: both are kept.
func (l *Library) DeleteGroupAvatar(ctx context.Context, url string, chatID bson.ObjectID, c Claim) error {
	id, ok := IDFromURL(url)
	if !ok {
		return nil
	}
	_, err := l.delete(ctx, id, func(m *mediaDoc) bool {
		return m.Avatar && m.GroupID == nil && m.Claim == claimGroup+chatID.Hex() && c.holds(m)
	})
	return err
}

// DeleteOfGroup deletes the upload at url if it is the group's avatar,
// or claimed for it: the group is being purged, and no change of its
// avatar can come (only its admins make them, and it has none).
func (l *Library) DeleteOfGroup(ctx context.Context, url string, chatID bson.ObjectID) error {
	id, ok := IDFromURL(url)
	if !ok {
		return nil
	}
	_, err := l.delete(ctx, id, func(m *mediaDoc) bool {
		return (m.GroupID != nil && *m.GroupID == chatID) || m.Claim == claimGroup+chatID.Hex()
	})
	return err
}

// IDFromURL returns the media id of a URL that URL made.
func IDFromURL(url string) (bson.ObjectID, bool) {
	if len(url) != len(Path)+24 || url[:len(Path)] != Path {
		return bson.ObjectID{}, false
	}
	id, err := bson.ObjectIDFromHex(url[len(Path):])
	return id, err == nil
}

// delete removes a media document and its files when ok, given the
// document as it is when the deletion starts, agrees, and reports whether
// it did. The document first moves to deleting (one compare and swap, see
// store.update), so that a crash part-way leaves it for clean-up to
// finish, never a file without a document.
func (l *Library) delete(ctx context.Context, id bson.ObjectID, ok func(*mediaDoc) bool) (bool, error) {
	proceed := false
	m, err := l.store.update(ctx, id, func(m *mediaDoc) (bson.D, error) {
		proceed = false
		if m.State == stateDeleting || !ok(m) {
			// Being deleted by another request already, or kept.
			return nil, nil
		}
		proceed = true
		m.State, m.StateAt = stateDeleting, l.store.nowMs()
		return bson.D{{Key: "$set", Value: bson.D{{Key: "state", Value: m.State}, {Key: "stateAt", Value: m.StateAt}, {Key: "loose", Value: true}}}}, nil
	})
	if errors.Is(err, errNoMedia) || (err == nil && !proceed) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, l.purge(ctx, m)
}

// purge removes the files and then the document of media being deleted.
func (l *Library) purge(ctx context.Context, m *mediaDoc) error {
	if err := l.removeFiles(ctx, m); err != nil {
		return err
	}
	return l.store.remove(ctx, m.ID)
}

// removeFiles removes the stored files of m, a media document in state
// deleting (or gone), unless another document not being deleted still
// uses them: forwarded copies share their original's files (see Forward,
// which explains why a forward in progress cannot lose them).
func (l *Library) removeFiles(ctx context.Context, m *mediaDoc) error {
	file := m.fileID()
	used, err := l.store.fileInUse(ctx, file, m.ID)
	if err != nil || used {
		return err
	}
	for _, key := range []string{originalKey(file), thumbnailKey(file)} {
		if err := l.storage.Delete(ctx, key); err != nil {
			return err
		}
	}
	return nil
}
