package auth

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"connectrpc.com/connect"
	"github.com/redis/go-redis/v9"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/keyring"
	"github.com/parley-chat/parley/server/mail"
	"github.com/parley-chat/parley/server/rpcerr"
)

// AccountEmail is an account's address as the account calls see it.
type AccountEmail struct {
	// Email is the account's address.
	Email string
	// Verified tells whether Email was verified.
	Verified bool
	// Pending is the new address a change asked for, "" for none.
	Pending string
}

// AccountEmails is what the account calls (AccountService) need of the
// user domain beyond Accounts: the account's addresses, and the changes
// to them and to its password.
type AccountEmails interface {
	// AccountEmail returns the account's addresses; a connect NOT_FOUND
	// error when there is no such account.
	AccountEmail(ctx context.Context, userID int) (AccountEmail, error)
	// LookupEmail finds the account whose address is email, in any case,
	// and tells whether that address is verified. It returns 0 when
	// there is none.
	LookupEmail(ctx context.Context, email string) (userID int, verified bool, err error)
	// SetPasswordHash replaces the account's password hash.
	SetPasswordHash(ctx context.Context, userID int, hash string) error
	// SetPendingEmail records email as the account's pending address; a
	// connect ALREADY_EXISTS error when it is another account's address.
	SetPendingEmail(ctx context.Context, userID int, email string) error
	// ClearPendingEmail forgets the account's pending address, if any.
	ClearPendingEmail(ctx context.Context, userID int) error
	// ConfirmEmail is told that email, an address a verification token
	// was mailed to, is verified. When it is the account's address (in
	// any case), it is marked verified; when it is its pending address,
	// it becomes the account's address, verified (a connect
	// ALREADY_EXISTS error when another account has it by now). ok is
	// false when it is neither any more.
	ConfirmEmail(ctx context.Context, userID int, email string) (ok bool, err error)
}

// Limits and lifetimes of the account calls.
const (
	// ResetCodeTTL is how long a password reset code works.
	ResetCodeTTL = 15 * time.Minute
	// ResetCodeTries is how many wrong codes end the current one, so
	// that a code (one of 10^8) gets at most that many guesses. Wrong
	// codes end it whoever sends them: a stranger can end someone's
	// code, and its owner then asks for another. That is bounded by
	// ResetTriesPerAddress (a client address ends at most 6 codes an
	// hour) and ResetsPerAccount, and costs no more than a delay: a
	// code that guesses could not end would be guessed more.
	ResetCodeTries = 5
	// ResetTriesPerAddress bounds ResetPassword per ResetWindow (a
	// sliding window) for one client address, right codes or wrong, for
	// addresses with an account or without.
	ResetTriesPerAddress = 30
	// ResetsPerAccount and ResetsPerAddress bound RequestPasswordReset
	// in any ResetWindow (a sliding window), for one account and one
	// client address.
	ResetsPerAccount = 3
	ResetsPerAddress = 10
	ResetWindow      = time.Hour
	// VerifyTokenTTL is how long an email verification token works.
	VerifyTokenTTL = 24 * time.Hour
	// VerifyMailsPerAccount bounds the verification mails (from
	// SendEmailVerification and ChangeEmail) one account may have sent
	// in any VerifyMailWindow, so that nobody mails strangers through it.
	VerifyMailsPerAccount = 5
	VerifyMailWindow      = time.Hour
)

// AccountService implements parley.v1.AccountService: password change
// and reset, email verification and change. It shares the
// authentication service's passwords, sessions, keys and rate limits.
type AccountService struct {
	auth     *Service
	accounts AccountEmails
	mail     mail.Sender
	rdb      redis.UniversalClient
	verify   *keyring.MACs
	resets   *keyring.MACs
}

var _ parleyv1connect.AccountServiceHandler = (*AccountService)(nil)

// NewAccountService returns the account calls of the authentication
// service a, over the accounts of the user domain, sending mail through
// sender.
func NewAccountService(a *Service, accounts AccountEmails, sender mail.Sender) (*AccountService, error) {
	verify, err := a.cfg.Keys.MACs("parley email verification token")
	if err != nil {
		return nil, err
	}
	resets, err := a.cfg.Keys.MACs("parley password reset code")
	if err != nil {
		return nil, err
	}
	return &AccountService{auth: a, accounts: accounts, mail: sender, rdb: a.sessions.rdb, verify: verify, resets: resets}, nil
}

// ChangePassword sets a new password after checking the old one, and ends
// the account's other sessions.
func (s *AccountService) ChangePassword(
	ctx context.Context, req *connect.Request[parleyv1.ChangePasswordRequest],
) (*connect.Response[parleyv1.ChangePasswordResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.auth.Reauthenticate(ctx, id.UserID, req.Msg.GetOldPassword()); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change password", err)
	}
	if err := s.setPassword(ctx, id.UserID, req.Msg.GetNewPassword(), id.SessionID); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change password", err)
	}
	// The caller's network is the one the new password knows.
	if err := s.auth.limiter.remember(ctx, userAccount(id.UserID), s.auth.clientAddr(req.Peer().Addr, req.Header())); err != nil {
		s.auth.log.WarnContext(ctx, "change password: remember the network", "user", id.UserID, "err", err)
	}
	return connect.NewResponse(&parleyv1.ChangePasswordResponse{}), nil
}

// setPassword hashes and stores password, then ends every session of the
// user but keep ("" for all), and forgets the networks it signed in from
// (see LoginFailuresPerAccountTotal): the password first, so that a session
// opened meanwhile with the old one cannot outlive the change (a Login
// that read the old hash reads it again once its session is open).
//
// A change of address under way is cancelled, before and after: it may be
// the work of whoever had the old password (the notice of a change tells
// the owner to change the password), whose verification token would
// otherwise still make its address the account's, and with it the
// account's password resets.
func (s *AccountService) setPassword(ctx context.Context, userID int, password, keep string) error {
	hash, err := s.auth.HashPassword(ctx, password)
	if err != nil {
		return err
	}
	if err := s.cancelEmailChange(ctx, userID); err != nil {
		return err
	}
	if err := s.accounts.SetPasswordHash(ctx, userID, hash); err != nil {
		return err
	}
	if err := s.auth.EndSessions(ctx, userID, keep); err != nil {
		return err
	}
	// Again, for a ChangeEmail that checked the old password before the
	// change and recorded its address after the first cancellation.
	if err := s.cancelEmailChange(ctx, userID); err != nil {
		s.auth.log.WarnContext(ctx, "set password: cancel the change of address", "user", userID, "err", err)
	}
	// The password is changed: should this fail, the networks stay known
	// (they let their logins past the account's total, no more).
	if err := s.auth.limiter.forgetNetworks(ctx, userAccount(userID)); err != nil {
		s.auth.log.WarnContext(ctx, "set password: forget the networks", "user", userID, "err", err)
	}
	return nil
}

// allow takes one attempt from the budget under key, and refuses it
// when n were taken in the last window (see limiter.inWindow).
func (s *AccountService) allow(ctx context.Context, name, key string, n int, window time.Duration, msg string) error {
	return s.auth.limiter.inWindow(ctx, name, key, n, window, msg)
}

// RequestPasswordReset mails a reset code to a verified address, and
// answers the same in every case.
func (s *AccountService) RequestPasswordReset(
	ctx context.Context, req *connect.Request[parleyv1.RequestPasswordResetRequest],
) (*connect.Response[parleyv1.RequestPasswordResetResponse], error) {
	email := req.Msg.GetEmail()
	addr := s.auth.clientAddr(req.Peer().Addr, req.Header())
	// The address's budget first, and whether or not the account exists,
	// so that running out of it says nothing about any account.
	if err := s.allow(ctx, "reset_address", "reset-address:"+clientNet(addr), ResetsPerAddress, ResetWindow, "too many password resets from this address"); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "request password reset", err)
	}
	userID, verified, err := s.accounts.LookupEmail(ctx, email)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "request password reset", err)
	}
	// An unknown address has a budget of its own, as an account does.
	account := "email:" + strings.ToLower(email)
	if userID != 0 {
		account = userAccount(userID)
	}
	if err := s.allow(ctx, "reset_account", "reset-account:"+account, ResetsPerAccount, ResetWindow, "too many password resets for this account"); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "request password reset", err)
	}
	res := connect.NewResponse(&parleyv1.RequestPasswordResetResponse{})
	if userID == 0 || !verified {
		return res, nil
	}
	// The code is made and mailed in the background: an answer that
	// waited for either would tell, by its delay, that the address has
	// an account. The work is tracked (Config.Background) so that a
	// server that stops waits for it.
	s.auth.cfg.Background.Go(func() {
		ctx, cancel := context.WithTimeout(detach(ctx), 2*mail.Timeout)
		defer cancel()
		code, err := s.newResetCode(ctx, userID)
		if err != nil {
			s.auth.log.ErrorContext(ctx, "request password reset: make the code", "user", userID, "err", err)
			return
		}
		if err := s.mail.Send(ctx, resetMail(email, code)); err != nil {
			s.auth.log.ErrorContext(ctx, "request password reset: mail the code", "user", userID, "err", err)
		}
	})
	return res, nil
}

// errBadResetCode is the one answer to a wrong, used or expired code, and
// to an address without an account.
var errBadResetCode = connect.NewError(connect.CodeInvalidArgument, errors.New("wrong or expired code; ask for a new one"))

// ResetPassword sets a new password with a mailed code and ends every
// session of the account.
func (s *AccountService) ResetPassword(
	ctx context.Context, req *connect.Request[parleyv1.ResetPasswordRequest],
) (*connect.Response[parleyv1.ResetPasswordResponse], error) {
	// The address's budget first, whether or not the account exists.
	addr := s.auth.clientAddr(req.Peer().Addr, req.Header())
	if err := s.allow(ctx, "reset_try_address", "reset-try-address:"+clientNet(addr), ResetTriesPerAddress, ResetWindow, "too many password reset attempts from this address"); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "reset password", err)
	}
	userID, _, err := s.accounts.LookupEmail(ctx, req.Msg.GetEmail())
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "reset password", err)
	}
	// An address without an account has its code checked all the same,
	// against the key of user 0, which never holds one: the answer then
	// takes as long as a wrong code's for an account.
	claim, ok, err := s.claimResetCode(ctx, userID, req.Msg.GetCode())
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "reset password", err)
	}
	if !ok || userID == 0 {
		return nil, errBadResetCode
	}
	// The owner proved it holds the address: failed logins are forgiven.
	err = s.setPassword(ctx, userID, req.Msg.GetNewPassword(), "")
	if err == nil {
		err = s.auth.limiter.forgive(ctx, userAccount(userID), addr)
	}
	settle := context.WithoutCancel(ctx)
	if err != nil {
		// The code works again, for a retry: until the sessions are
		// ended, the reset is not done.
		if err := s.settleResetCode(settle, claim, false); err != nil {
			s.auth.log.WarnContext(ctx, "reset password: give the code back", "user", userID, "err", err)
		}
		return nil, rpcerr.From(ctx, s.auth.log, "reset password", err)
	}
	if err := s.settleResetCode(settle, claim, true); err != nil {
		// The password is reset and the sessions ended: the code, still
		// claimed, works again after resetClaimTTL, until it expires.
		s.auth.log.WarnContext(ctx, "reset password: use the code up", "user", userID, "err", err)
	}
	return connect.NewResponse(&parleyv1.ResetPasswordResponse{}), nil
}

// SendEmailVerification mails a verification token to the caller's
// pending or unverified address.
func (s *AccountService) SendEmailVerification(
	ctx context.Context, _ *connect.Request[parleyv1.SendEmailVerificationRequest],
) (*connect.Response[parleyv1.SendEmailVerificationResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	a, err := s.accounts.AccountEmail(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "send email verification", err)
	}
	to := a.Pending
	if to == "" {
		if a.Verified {
			return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("the email address is verified already"))
		}
		to = a.Email
	}
	if err := s.allowVerifyMail(ctx, id.UserID); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "send email verification", err)
	}
	if err := s.mailVerification(ctx, id.UserID, to); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "send email verification", err)
	}
	return connect.NewResponse(&parleyv1.SendEmailVerificationResponse{Email: to}), nil
}

// allowVerifyMail takes one from the user's budget of verification
// mails.
func (s *AccountService) allowVerifyMail(ctx context.Context, userID int) error {
	return s.allow(ctx, "verify_mail", "verify-mail:user:"+strconv.Itoa(userID), VerifyMailsPerAccount, VerifyMailWindow, "too many verification mails for this account")
}

// mailVerification mails a new verification token for the address to,
// which replaces the user's earlier ones.
func (s *AccountService) mailVerification(ctx context.Context, userID int, to string) error {
	token, err := s.newVerifyToken(ctx, userID, to)
	if err != nil {
		return err
	}
	if err := s.mail.Send(ctx, verifyMail(to, token)); err != nil {
		return fmt.Errorf("mail the token: %w", err)
	}
	return nil
}

// errBadVerifyToken is the one answer to a token that does not verify.
var errBadVerifyToken = connect.NewError(connect.CodeInvalidArgument, errors.New("invalid, used or expired verification token; ask for a new one"))

// VerifyEmail marks the address a token was mailed to as verified, and
// makes a pending address the account's.
func (s *AccountService) VerifyEmail(
	ctx context.Context, req *connect.Request[parleyv1.VerifyEmailRequest],
) (*connect.Response[parleyv1.VerifyEmailResponse], error) {
	t, ok := parseVerifyToken(req.Msg.GetToken())
	if !ok {
		return nil, errBadVerifyToken
	}
	a, err := s.accounts.AccountEmail(ctx, t.userID)
	if connect.CodeOf(err) == connect.CodeNotFound {
		return nil, errBadVerifyToken
	}
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "verify email", err)
	}
	// The token names no address: it is the pending one's or the
	// current one's, whichever its MAC covers.
	var email string
	for _, e := range []string{a.Pending, a.Email} {
		if e != "" && s.verify.Verify(t.keyID, verifyPayload(t, e), t.mac) {
			email = e
			break
		}
	}
	if email == "" || !s.auth.cfg.Now().Before(time.Unix(t.expires, 0)) {
		return nil, errBadVerifyToken
	}
	used, err := s.useVerifyToken(ctx, t)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "verify email", err)
	}
	if !used {
		return nil, errBadVerifyToken
	}
	confirmed, err := s.accounts.ConfirmEmail(ctx, t.userID, email)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "verify email", err)
	}
	if !confirmed {
		return nil, errBadVerifyToken
	}
	return connect.NewResponse(&parleyv1.VerifyEmailResponse{Email: email}), nil
}

// ChangeEmail records a new, pending address after checking the password,
// and mails it a verification token.
func (s *AccountService) ChangeEmail(
	ctx context.Context, req *connect.Request[parleyv1.ChangeEmailRequest],
) (*connect.Response[parleyv1.ChangeEmailResponse], error) {
	id, err := Caller(ctx)
	if err != nil {
		return nil, err
	}
	// The hash the password is checked against, read again once the
	// change is recorded: a new password set meanwhile (its owner taking
	// the account back) cancels changes under way, and this one may come
	// after the cancellation.
	hash, err := s.auth.accounts.PasswordHash(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	if err := s.auth.Reauthenticate(ctx, id.UserID, req.Msg.GetPassword()); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	a, err := s.accounts.AccountEmail(ctx, id.UserID)
	if err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	to := req.Msg.GetNewEmail()
	if strings.EqualFold(to, a.Email) {
		return nil, connect.NewError(connect.CodeFailedPrecondition, errors.New("new_email is the account's address already"))
	}
	if err := s.allowVerifyMail(ctx, id.UserID); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	if err := s.accounts.SetPendingEmail(ctx, id.UserID, to); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	if now, err := s.auth.accounts.PasswordHash(ctx, id.UserID); err != nil || now != hash {
		if cerr := s.cancelEmailChange(ctx, id.UserID); cerr != nil {
			s.auth.log.ErrorContext(ctx, "change email: cancel after a new password", "user", id.UserID, "err", cerr)
		}
		if err != nil {
			return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
		}
		return nil, connect.NewError(connect.CodeUnauthenticated, errors.New("the password changed meanwhile"))
	}
	if err := s.mailVerification(ctx, id.UserID, to); err != nil {
		return nil, rpcerr.From(ctx, s.auth.log, "change email", err)
	}
	// The current address hears of it, in case the session was stolen.
	if err := s.mail.Send(ctx, changeNoticeMail(a.Email, to)); err != nil {
		s.auth.log.ErrorContext(ctx, "change email: notify the current address", "user", id.UserID, "err", err)
	}
	return connect.NewResponse(&parleyv1.ChangeEmailResponse{}), nil
}
