package auth

import (
	"context"
	"errors"
	"fmt"

	"connectrpc.com/connect"
)

// errWrongPassword is the answer to a re-authentication whose password is
// not the account's.
var errWrongPassword = connect.NewError(connect.CodePermissionDenied, errors.New("wrong password"))

// Reauthenticate checks that password is the signed-in user's, for the
// calls that need more than a session (changing the password or the email,
// deleting the account). A wrong password is PERMISSION_DENIED; failures
// count towards a limit of their own, as large as the account's logins'
// from one address (a stolen session guesses through it no faster than
// through a login), and a success resets it.
func (s *Service) Reauthenticate(ctx context.Context, userID int, password string) error {
	hash, err := s.accounts.PasswordHash(ctx, userID)
	if err != nil {
		return err
	}
	account := userAccount(userID)
	if err := s.limiter.attemptReauth(ctx, account); err != nil {
		return err
	}
	ok, err := s.passwords.verify(ctx, password, hash)
	if err != nil {
		return err
	}
	if !ok {
		return errWrongPassword
	}
	return s.limiter.reauthSucceeded(ctx, account)
}

// HashPassword hashes a new password as Register does (Argon2id).
func (s *Service) HashPassword(ctx context.Context, password string) (string, error) {
	return s.passwords.hash(ctx, password)
}

// EndSessions ends every session of the user except keep ("" ends them
// all), on every instance, and tells SessionEnds of each, so that their
// live streams (and whatever else hangs on a session) end too. A session
// created while it runs may survive it: callers change what a new session
// needs (the password, the account) first.
func (s *Service) EndSessions(ctx context.Context, userID int, keep string) error {
	return endSessions(ctx, s.sessions, s.cfg.SessionEnds, userID, keep)
}

// endSessions is EndSessions over sessions, telling ends (if any).
func endSessions(ctx context.Context, sessions *sessionStore, ends SessionEnds, userID int, keep string) error {
	ids, err := sessions.rdb.ZRange(ctx, sessions.userKey(userID), 0, -1).Result()
	if err != nil {
		return fmt.Errorf("end sessions: %w", err)
	}
	// Every session is ended even when one's revocation fails: one that
	// its replicas did not confirm in time is ended on the master all the
	// same, and an error half-way must not leave the rest open (after a
	// password reset, say). Their streams are told in every case.
	var errs []error
	for _, id := range ids {
		if id == keep {
			continue
		}
		if err := sessions.revoke(ctx, userID, id); err != nil && !errors.Is(err, errNoSession) {
			errs = append(errs, err)
		}
		if ends != nil {
			ends.SessionEnded(ctx, userID, id)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("end sessions: %w", err)
	}
	return nil
}
