package server

import (
	"context"
	"time"

	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/export"
	"github.com/parley-chat/parley/server/live"
	"github.com/parley-chat/parley/server/media"
	"github.com/parley-chat/parley/server/push"
	"github.com/parley-chat/parley/server/user"
)

// accountDeleter carries out account deletion (auth.AccountDeleter) over
// the domains that hold an account's data: the user's rows and tombstone,
// its chats, and its uploads.
type accountDeleter struct {
	users   *user.Service
	chats   *chat.Service
	files   *media.Library // nil: uploads are not configured
	exports *export.Service
	push    *push.Service // nil: pushes are off
	live    *live.Hub     // nil: no live delivery
}

var _ auth.AccountDeleter = accountDeleter{}

func (a accountDeleter) MarkDeleted(ctx context.Context, userID int) error {
	return a.users.MarkDeleted(ctx, userID)
}

func (a accountDeleter) LeaveChats(ctx context.Context, userID int) error {
	return a.chats.LeaveAll(ctx, userID)
}

// DeleteFiles deletes the user's exports and uploads, and forgets its push
// subscriptions and settings and its live event log: it runs in both
// passes of a deletion, so that a subscription a request under way
// registered after the first pass is gone too, and the events of its
// leaving (its own log's among them) are published before.
func (a accountDeleter) DeleteFiles(ctx context.Context, userID int) error {
	if a.push != nil {
		if err := a.push.ForgetUser(ctx, userID); err != nil {
			return err
		}
	}
	if a.live != nil {
		if err := a.live.ForgetUser(ctx, userID); err != nil {
			return err
		}
	}
	// The exports first: their zips hold copies of the files.
	if err := a.exports.DeleteUser(ctx, userID); err != nil {
		return err
	}
	if a.files == nil {
		return nil
	}
	_, err := a.files.DeleteUploadsOf(ctx, userID)
	return err
}

func (a accountDeleter) DeleteRows(ctx context.Context, userID int) error {
	return a.users.DeleteRows(ctx, userID)
}

func (a accountDeleter) MarkFinished(ctx context.Context, userID int) error {
	return a.users.MarkFinished(ctx, userID)
}

func (a accountDeleter) UnfinishedDeletions(ctx context.Context, before time.Time, limit int) ([]int, error) {
	return a.users.UnfinishedDeletions(ctx, before, limit)
}

// NewDeletionSweep returns the account deletions over the same stores as
// New, for their sweep (auth.Deletions.Run): the finishing of deletions
// that stopped part-way.
func NewDeletionSweep(d Deps) (*auth.Deletions, error) {
	if d.Now == nil {
		d.Now = time.Now
	}
	if d.Auth.Now == nil {
		d.Auth.Now = d.Now
	}
	if d.Live != nil && d.Auth.SessionEnds == nil {
		d.Auth.SessionEnds = d.Live
	}
	users, chats := domain(d, d.Live)
	exports, err := export.New(d.Log, d.Mongo, d.DocLocks, d.Media.Storage(), exportConfig(d))
	if err != nil {
		return nil, err
	}
	return auth.NewDeletions(d.Log, d.Redis, d.Auth, accountDeleter{users: users, chats: chats, files: d.Media, exports: exports, push: d.Push, live: d.Live}), nil
}
