package user

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"connectrpc.com/connect"
	entsql "entgo.io/ent/dialect/sql"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/deleteduser"
	"github.com/parley-chat/parley/ent/predicate"
	"github.com/parley-chat/parley/ent/user"
	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
)

// Account deletion, as the user domain holds it. A deletion begins with a
// tombstone, a deleted_users row naming the user, its username's key and
// the time (MarkDeleted); from then on the account is deleted to everyone:
// it cannot sign in (LookupLogin and Me do not find it), others do not find
// it (search, MissingUsers, which chats ask before starting a chat with a
// user or adding one to a group), it refuses every message (BlockersOf),
// and GetUser shows it as deleted. The other domains then delete what they
// hold, DeleteRows deletes the users row (its profile, avatars and blocks
// go with it), and MarkFinished marks the tombstone finished. The tombstone
// stays: GetUser answers a deleted account's id with User.deleted rather
// than NOT_FOUND, so that clients can show the sender of the messages it
// left in others' history, and its username's key is refused to new
// accounts and renames for UsernameHoldBack. The email is free at once:
// the person may sign up again with it.

// UsernameHoldBack is how long the username of a deleted account cannot
// be taken by another account (or the same person signing up again), so
// that nobody can pass for the deleted account in the history it left.
const UsernameHoldBack = 30 * 24 * time.Hour

// notDeleted matches the users that no deletion has begun for.
func notDeleted() predicate.User {
	return func(s *entsql.Selector) {
		t := entsql.Table(deleteduser.Table)
		s.Where(entsql.NotExists(entsql.Select(t.C(deleteduser.FieldID)).From(t).
			Where(entsql.ColumnsEQ(t.C(deleteduser.FieldID), s.C(user.FieldID)))))
	}
}

// MarkDeleted begins the deletion of the account: it writes its tombstone,
// with the username's key as it is now, under the user's lock so that a
// rename at the same time is either seen or refused. It is idempotent: an
// account already marked (even one whose rows are gone) is no error. No
// such account is NOT_FOUND.
func (s *Service) MarkDeleted(ctx context.Context, userID int) error {
	err := s.store.withTx(ctx, func(tx *ent.Tx) error {
		if err := s.store.lockUser(ctx, tx, userID); err != nil {
			return err
		}
		u, err := tx.User.Query().Where(user.ID(userID)).Select(user.FieldUsername, user.FieldUsernameKey).Only(ctx)
		if ent.IsNotFound(err) {
			n, err := tx.DeletedUser.Query().Where(deleteduser.ID(userID)).Count(ctx)
			if err != nil {
				return fmt.Errorf("read tombstone: %w", err)
			}
			if n == 0 {
				return errNoUser
			}
			return nil
		}
		if err != nil {
			return fmt.Errorf("read user: %w", err)
		}
		key := usernameKey(u.Username)
		if u.UsernameKey != nil {
			// An account whose name collides with an older one's has its
			// id after the name's key (collisionMark): the name is the
			// key before it.
			key, _, _ = strings.Cut(*u.UsernameKey, collisionMark)
		}
		err = tx.DeletedUser.Create().SetID(userID).SetUsernameKey(key).SetDeletedAt(s.store.now()).
			OnConflictColumns(deleteduser.FieldID).DoNothing().Exec(ctx)
		if err != nil && !errors.Is(err, sql.ErrNoRows) { // ErrNoRows: marked already
			return fmt.Errorf("write tombstone: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("mark account deleted: %w", err)
	}
	return nil
}

// DeleteRows deletes the account's users row, and with it (ON DELETE
// CASCADE) its profile, avatar rows and the blocks it made or was the
// target of. It is idempotent. The avatars' files are the media library's
// to delete, before.
func (s *Service) DeleteRows(ctx context.Context, userID int) error {
	if _, err := s.store.db.Ent.User.Delete().Where(user.ID(userID)).Exec(ctx); err != nil {
		return fmt.Errorf("delete account: %w", err)
	}
	return nil
}

// MarkFinished records that the account's deletion finished. It is
// idempotent.
func (s *Service) MarkFinished(ctx context.Context, userID int) error {
	err := s.store.db.Ent.DeletedUser.Update().Where(deleteduser.ID(userID), deleteduser.FinishedAtIsNil()).
		SetFinishedAt(s.store.now()).Exec(ctx)
	if err != nil {
		return fmt.Errorf("finish account deletion: %w", err)
	}
	return nil
}

// UnfinishedDeletions returns up to limit accounts whose deletion began
// before before and has not finished, oldest first.
func (s *Service) UnfinishedDeletions(ctx context.Context, before time.Time, limit int) ([]int, error) {
	ids, err := s.store.db.Ent.DeletedUser.Query().
		Where(deleteduser.FinishedAtIsNil(), deleteduser.DeletedAtLT(before)).
		Order(ent.Asc(deleteduser.FieldDeletedAt)).Limit(limit).IDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("unfinished deletions: %w", err)
	}
	return ids, nil
}

// deletedAmong returns those of ids whose deletion began.
func (s *store) deletedAmong(ctx context.Context, ids []int) ([]int, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	out, err := s.db.Ent.DeletedUser.Query().Where(deleteduser.IDIn(ids...)).IDs(ctx)
	if err != nil {
		return nil, fmt.Errorf("deleted users: %w", err)
	}
	return out, nil
}

// deletedUser is what others see of a deleted account.
func deletedUser(userID int) *parleyv1.User {
	return &parleyv1.User{Id: int32(userID), Deleted: true}
}

// errNameHeldBack answers a username that a deleted account held less
// than UsernameHoldBack ago, as a taken one is answered.
var errNameHeldBack = connect.NewError(connect.CodeAlreadyExists, errors.New("username is taken"))

// checkName checks, in the transaction that just gave userID the username
// key, that no account deleted less than UsernameHoldBack ago held it, and
// that userID itself is not being deleted (a rename racing the deletion).
// Being after the write in the same transaction, it sees every tombstone
// written before the write: a deletion that began earlier is either seen
// here or still holds the name in the users row (a unique violation).
func (s *store) checkName(ctx context.Context, tx *ent.Tx, userID int, key string) error {
	rows, err := tx.DeletedUser.Query().Where(
		deleteduser.Or(
			deleteduser.And(deleteduser.UsernameKey(key), deleteduser.DeletedAtGT(s.now().Add(-UsernameHoldBack))),
			deleteduser.ID(userID),
		)).Select(deleteduser.FieldID).All(ctx)
	if err != nil {
		return fmt.Errorf("check held-back usernames: %w", err)
	}
	for _, r := range rows {
		if r.ID == userID {
			return errNoUser
		}
	}
	if len(rows) > 0 {
		return errNameHeldBack
	}
	return nil
}
