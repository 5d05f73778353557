package user

import (
	"context"
	"fmt"
	"strings"

	"github.com/parley-chat/parley/ent"
	"github.com/parley-chat/parley/ent/user"
	"github.com/parley-chat/parley/server/auth"
)

var _ auth.AccountEmails = (*Service)(nil)

// AccountEmail implements auth.AccountEmails.
func (s *Service) AccountEmail(ctx context.Context, userID int) (auth.AccountEmail, error) {
	u, err := s.store.db.Ent.User.Query().Where(user.ID(userID), notDeleted()).
		Select(user.FieldEmail, user.FieldEmailVerifiedAt, user.FieldPendingEmail).Only(ctx)
	if ent.IsNotFound(err) {
		return auth.AccountEmail{}, errNoUser
	}
	if err != nil {
		return auth.AccountEmail{}, fmt.Errorf("account email: %w", err)
	}
	a := auth.AccountEmail{Email: u.Email, Verified: u.EmailVerifiedAt != nil}
	if u.PendingEmail != nil {
		a.Pending = *u.PendingEmail
	}
	return a, nil
}

// LookupEmail implements auth.AccountEmails. An account being deleted
// has no email: no code goes to it.
func (s *Service) LookupEmail(ctx context.Context, email string) (int, bool, error) {
	u, err := s.store.db.Ent.User.Query().Where(lowerEQ(user.FieldEmail, email), notDeleted()).
		Select(user.FieldID, user.FieldEmailVerifiedAt).Only(ctx)
	if ent.IsNotFound(err) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("lookup email: %w", err)
	}
	return u.ID, u.EmailVerifiedAt != nil, nil
}

// SetPasswordHash implements auth.AccountEmails.
func (s *Service) SetPasswordHash(ctx context.Context, userID int, hash string) error {
	err := s.store.db.Ent.User.UpdateOneID(userID).SetPasswordHash(hash).Exec(ctx)
	if ent.IsNotFound(err) {
		return errNoUser
	}
	if err != nil {
		return fmt.Errorf("set password: %w", err)
	}
	return nil
}

// SetPendingEmail implements auth.AccountEmails. Pending addresses are not
// unique: of two accounts that ask for one address, the first to verify
// it gets it.
func (s *Service) SetPendingEmail(ctx context.Context, userID int, email string) error {
	taken, err := s.store.db.Ent.User.Query().Where(lowerEQ(user.FieldEmail, email), user.IDNEQ(userID)).Exist(ctx)
	if err != nil {
		return fmt.Errorf("set pending email: %w", err)
	}
	if taken {
		return errEmailTaken
	}
	err = s.store.db.Ent.User.UpdateOneID(userID).SetPendingEmail(email).Exec(ctx)
	if ent.IsNotFound(err) {
		return errNoUser
	}
	if err != nil {
		return fmt.Errorf("set pending email: %w", err)
	}
	return nil
}

// ClearPendingEmail implements auth.AccountEmails.
func (s *Service) ClearPendingEmail(ctx context.Context, userID int) error {
	err := s.store.db.Ent.User.UpdateOneID(userID).ClearPendingEmail().Exec(ctx)
	if err != nil && !ent.IsNotFound(err) {
		return fmt.Errorf("clear pending email: %w", err)
	}
	return nil
}

// ConfirmEmail implements auth.AccountEmails.
func (s *Service) ConfirmEmail(ctx context.Context, userID int, email string) (bool, error) {
	ok := false
	err := s.store.withTx(ctx, func(tx *ent.Tx) error {
		if err := s.store.lockUser(ctx, tx, userID); err != nil {
			return err
		}
		u, err := tx.User.Get(ctx, userID)
		if ent.IsNotFound(err) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("confirm email: %w", err)
		}
		up := tx.User.UpdateOne(u)
		switch {
		case u.PendingEmail != nil && strings.EqualFold(*u.PendingEmail, email):
			// The unique index on lower(email) has the last word on a
			// race with another account's change or sign-up.
			up.SetEmail(*u.PendingEmail).ClearPendingEmail()
		case strings.EqualFold(u.Email, email):
		default:
			return nil
		}
		if err := up.SetEmailVerifiedAt(s.store.now()).Exec(ctx); err != nil {
			return uniqueViolation(err)
		}
		ok = true
		return nil
	})
	return ok, err
}
