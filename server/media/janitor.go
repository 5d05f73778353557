package media

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Referrers find what uses an upload whose claim was never completed
// (the server stopped between storing a message or avatar and recording
// it on the media).
type Referrers interface {
	// MessageWithMedia returns the message that senderID sent to chatID
	// under clientMessageID (a claim's key), if it has mediaID among its
	// attachments.
	MessageWithMedia(ctx context.Context, chatID bson.ObjectID, senderID int, clientMessageID string, mediaID bson.ObjectID) (bson.ObjectID, bool, error)
	// AvatarWithURL returns the avatar that serves url.
	AvatarWithURL(ctx context.Context, url string) (int, bool, error)
	// GroupHasAvatar reports whether the group's avatar is url.
	GroupHasAvatar(ctx context.Context, chatID bson.ObjectID, url string) (bool, error)
}

// Janitor deletes uploads that were never attached to a message or
// avatar within a delay, with their files. Every instance may run one:
// each deletion re-checks the document under its lock, and files are
// removed before the document that names them, so a crash leaves work
// for the next round rather than orphaned files.
type Janitor struct {
	log   *slog.Logger
	lib   *Library
	refs  Referrers
	after time.Duration
	now   func() time.Time
}

// claimGrace is how long a claim holds an upload before clean-up checks
// whether the message or avatar it was claimed for exists.
const claimGrace = time.Hour

// deletingGrace is how long a deletion in progress is left to its
// instance before clean-up finishes it.
const deletingGrace = 10 * time.Minute

// NewJanitor returns a janitor that deletes uploads left unattached for
// longer than after.
func NewJanitor(log *slog.Logger, lib *Library, refs Referrers, after time.Duration, now func() time.Time) *Janitor {
	if now == nil {
		now = time.Now
	}
	return &Janitor{log: log, lib: lib, refs: refs, after: after, now: now}
}

// markEvery is how often Run marks what older versions left unmarked
// (MarkLoose): once at start, then daily, for the instances of an older
// version that run on during an upgrade.
const markEvery = 24 * time.Hour

// Run cleans up every interval (with jitter, so instances spread out)
// until ctx is done. It marks what older versions left unmarked
// (MarkLoose) at its start and every markEvery; after a failure, at the
// next round.
func (j *Janitor) Run(ctx context.Context, interval time.Duration) {
	var marked time.Time
	mark := func() {
		n, err := j.MarkLoose(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			j.log.ErrorContext(ctx, "media clean-up: mark loose uploads", "err", err, "marked", n)
		case err == nil:
			marked = time.Now()
			if n > 0 {
				j.log.InfoContext(ctx, "media clean-up: marked loose uploads", "count", n)
			}
		}
	}
	mark()
	j.sweepTemp(ctx)
	for {
		wait := interval/2 + rand.N(interval)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if time.Since(marked) >= markEvery {
			mark()
		}
		if n, err := j.Sweep(ctx); err != nil && ctx.Err() == nil {
			j.log.ErrorContext(ctx, "media clean-up", "err", err, "deleted", n)
		} else if n > 0 {
			j.log.InfoContext(ctx, "media clean-up", "deleted", n)
		}
	}
}

// MarkLoose marks for clean-up the uploads in no message, avatar or
// group, and those being deleted, that a version before the mark
// (mediaDoc.Loose) stored: clean-up reads only marked ones. It reads the
// whole collection, and Run calls it once; it returns how many it marked.
func (j *Janitor) MarkLoose(ctx context.Context) (int64, error) {
	return j.lib.store.markLoose(ctx)
}

// tempSweeper is a Storage whose uploads that stopped with their process
// may leave temporary files (FS).
type tempSweeper interface {
	SweepTemp(olderThan time.Time) (int, error)
}

// tempGrace is how long a temporary file may go unwritten before it is
// taken for one whose upload stopped with its process: a live upload
// writes every few seconds, or fails (idleDeadline, the minimum rate).
const tempGrace = time.Hour

// sweepTemp deletes the storage's temporary files of uploads that stopped
// with their process. Run does it once, at its start: it reads every
// directory of the storage.
func (j *Janitor) sweepTemp(ctx context.Context) {
	ts, ok := j.lib.storage.(tempSweeper)
	if !ok {
		return
	}
	n, err := ts.SweepTemp(j.now().Add(-tempGrace))
	if err != nil {
		j.log.ErrorContext(ctx, "media clean-up: temporary files", "err", err, "deleted", n)
	} else if n > 0 {
		j.log.InfoContext(ctx, "media clean-up: temporary files of uploads that stopped", "deleted", n)
	}
}

// Sweep deletes what is due now and returns how many uploads it deleted.
func (j *Janitor) Sweep(ctx context.Context) (int, error) {
	now := j.now()
	deleted := 0
	for {
		batch, err := j.lib.store.stale(ctx, now.Add(-j.after), now.Add(-deletingGrace), 100)
		if err != nil {
			return deleted, err
		}
		progress := false
		var errs []error
		for i := range batch {
			// One upload that cannot be cleaned up must not stop the rest.
			done, err := j.sweepOne(ctx, &batch[i], now)
			if err != nil {
				if ctx.Err() != nil {
					return deleted, err
				}
				errs = append(errs, fmt.Errorf("media %s: %w", batch[i].ID.Hex(), err))
				continue
			}
			if done {
				deleted++
				progress = true
			}
		}
		if len(errs) > 0 {
			return deleted, errors.Join(errs...)
		}
		if len(batch) < 100 || !progress {
			return deleted, nil
		}
	}
}

// sweepOne deletes one stale upload unless, looked at again under its
// lock, it is in use after all.
func (j *Janitor) sweepOne(ctx context.Context, seen *mediaDoc, now time.Time) (bool, error) {
	switch {
	case seen.State == stateDeleting && now.Sub(seen.StateAt) < deletingGrace:
		// Another janitor, or a request, is deleting it now.
		return false, nil
	case seen.State == stateDeleting:
		// A deletion that stopped part-way: finish it.
		return true, j.lib.purge(ctx, seen)
	case seen.State == stateUploading && now.Sub(seen.StateAt) < MaxUploadTime+time.Minute:
		// Still arriving, perhaps slowly.
		return false, nil
	case seen.State == stateReady && now.Sub(seen.StateAt) < j.after:
		// Arrived lately, after an upload of up to MaxUploadTime: its
		// sender has the whole delay from then.
		return false, nil
	case seen.attached():
		// Attached by a version that left the mark: settled now.
		return false, j.lib.settle(ctx, seen.ID)
	}
	// A claim may be a message or avatar stored but not yet recorded.
	var messageID, groupID *bson.ObjectID
	avatarID := 0
	if seen.Claim != "" {
		if seen.ClaimedAt != nil && now.Sub(*seen.ClaimedAt) < claimGrace {
			return false, nil
		}
		var err error
		if seen.Claim == claimAvatar {
			var ok bool
			avatarID, ok, err = j.refs.AvatarWithURL(ctx, seen.URL)
			if !ok {
				avatarID = 0
			}
		} else if hex, ok := strings.CutPrefix(seen.Claim, claimGroup); ok {
			if id, perr := bson.ObjectIDFromHex(hex); perr == nil {
				var has bool
				if has, err = j.refs.GroupHasAvatar(ctx, id, seen.URL); has {
					groupID = &id
				}
			}
		} else if key, ok := strings.CutPrefix(seen.Claim, "message:"); ok && seen.ChatID != nil {
			// The claim's key is the message's client id, and its
			// sender the upload's (a forward's copy is the forwarder's).
			id, ok, ferr := j.refs.MessageWithMedia(ctx, *seen.ChatID, seen.UploaderID, key, seen.ID)
			if ok {
				messageID = &id
			}
			err = ferr
		}
		if err != nil {
			return false, err
		}
	}
	if messageID != nil {
		return false, j.lib.Attach(ctx, []bson.ObjectID{seen.ID}, strings.TrimPrefix(seen.Claim, "message:"), *messageID)
	}
	if avatarID != 0 {
		return false, j.lib.AttachAvatar(ctx, seen.ID, avatarID, claimOf(seen))
	}
	if groupID != nil {
		return false, j.lib.AttachGroupAvatar(ctx, seen.URL, *groupID, claimOf(seen))
	}
	return j.lib.delete(ctx, seen.ID, func(m *mediaDoc) bool {
		// Only what is exactly as seen: a claim taken or renewed since,
		// an attachment, or an upload begun since, keeps it.
		return !m.attached() && m.Claim == seen.Claim && sameTime(m.ClaimedAt, seen.ClaimedAt) &&
			m.State == seen.State && m.StateAt.Equal(seen.StateAt) && m.CreatedAt.Before(now.Add(-j.after))
	})
}

func sameTime(a, b *time.Time) bool {
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}
