package clustertest_test

import (
	"context"
	"errors"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

// signedIn is an account with a second session, the one the tests end or
// refresh.
type signedIn struct {
	cl      servertest.Clients
	acc     servertest.Account
	session *parleyv1.Tokens
}

func signIn(t *testing.T, p servertest.Protocol) signedIn {
	t.Helper()
	srv := servertest.New(t)
	cl := servertest.NewClients(srv, p)
	acc := servertest.Register(t, cl.Auth, servertest.UniqueName("failover"))
	res, err := cl.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: acc.Username, Password: servertest.Password}))
	if err != nil {
		t.Fatal(err)
	}
	return signedIn{cl: cl, acc: acc, session: res.Msg.GetTokens()}
}

// whoAmI calls GetMe with token: nil when the session is open.
func (s signedIn) whoAmI(token string) error {
	_, err := s.cl.User.GetMe(context.Background(), servertest.WithToken(&parleyv1.GetMeRequest{}, token))
	return err
}

// settled waits until the account's keys are served again after a
// failover, and returns what GetMe answers the session's access token.
func (s signedIn) settled(t *testing.T) error {
	t.Helper()
	var err error
	eventually(t, "GetMe after the failover", func() error {
		err = s.whoAmI(s.session.GetAccessToken())
		if connect.CodeOf(err) == connect.CodeUnavailable {
			return err
		}
		if err := s.whoAmI(s.acc.Token); err != nil {
			return err
		}
		return nil
	})
	return err
}

// A session revoked just before its Redis master dies stays revoked once
// the replica has taken over: the revocation was answered only once the
// replica had it (WAIT).
func TestFailover_RevokedSessionStaysRevoked(t *testing.T) {
	c := newCluster(t)
	s := signIn(t, servertest.Protocols[0])
	master := c.master(t, userKey(s.acc.ID))
	_, err := s.cl.Auth.RevokeSession(context.Background(), servertest.WithToken(
		&parleyv1.RevokeSessionRequest{SessionId: s.session.GetSessionId()}, s.acc.Token))
	if err != nil {
		t.Fatal(err)
	}
	c.kill(t, master)
	if err := s.settled(t); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("the revoked session after the failover: GetMe = %v, want UNAUTHENTICATED", err)
	}
	_, err = s.cl.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: s.session.GetRefreshToken()}))
	servertest.WantCode(t, err, connect.CodeUnauthenticated)
}

// A refresh token rotated just before the failover stays used: the new
// one refreshes, which it could not if the old generation had come back
// (that would count as the reuse of a spent token, and end the session).
func TestFailover_RotatedRefreshTokenStaysRotated(t *testing.T) {
	c := newCluster(t)
	s := signIn(t, servertest.Protocols[1])
	master := c.master(t, userKey(s.acc.ID))
	res, err := s.cl.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: s.session.GetRefreshToken()}))
	if err != nil {
		t.Fatal(err)
	}
	s.session = res.Msg.GetTokens()
	c.kill(t, master)
	if err := s.settled(t); err != nil {
		t.Fatalf("the refreshed session after the failover: GetMe = %v", err)
	}
	if _, err := s.cl.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: s.session.GetRefreshToken()})); err != nil {
		t.Fatalf("Refresh with the rotated token after the failover: %v", err)
	}
}

// When the replica cannot confirm a refresh token's rotation (it is
// stopped), the client hears UNAVAILABLE; the master made the rotation
// all the same, and the client's retry with the same token, once the
// replica is back, gets the new pair rather than being taken for a reuse
// (which would end the session). The retry was answered: a use of the
// token once the session moved on is a reuse, and ends it.
func TestFailover_UnconfirmedRotationIsRetried(t *testing.T) {
	c := newCluster(t)
	s := signIn(t, servertest.Protocols[1])
	master := c.master(t, userKey(s.acc.ID))
	resume := c.pause(t, c.replica(t, master))
	refresh := func() (*parleyv1.Tokens, error) {
		res, err := s.cl.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: s.session.GetRefreshToken()}))
		if err != nil {
			return nil, err
		}
		return res.Msg.GetTokens(), nil
	}
	_, err := refresh()
	servertest.WantCode(t, err, connect.CodeUnavailable)
	resume()
	var tokens *parleyv1.Tokens
	eventually(t, "the retried refresh", func() error {
		tokens, err = refresh()
		if err != nil && connect.CodeOf(err) != connect.CodeUnavailable {
			t.Fatalf("the retried refresh: %v, want the new pair", err)
		}
		return err
	})
	if tokens.GetRefreshToken() == s.session.GetRefreshToken() {
		t.Fatalf("the retried refresh answered the token it was given")
	}
	if err := s.whoAmI(tokens.GetAccessToken()); err != nil {
		t.Fatalf("GetMe with the retried refresh's access token: %v", err)
	}
	// Once the session moved on past it (within auth.RefreshRetryGrace,
	// the token of the generation before still gets the current one).
	res, err := s.cl.Auth.Refresh(context.Background(), connect.NewRequest(&parleyv1.RefreshRequest{RefreshToken: tokens.GetRefreshToken()}))
	if err != nil {
		t.Fatalf("refreshing with the retried refresh's token: %v", err)
	}
	tokens = res.Msg.GetTokens()
	_, err = refresh()
	servertest.WantCode(t, err, connect.CodeUnauthenticated)
	if err := s.whoAmI(tokens.GetAccessToken()); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Fatalf("GetMe after the token's reuse = %v, want UNAUTHENTICATED", err)
	}
}

// When the replica cannot confirm the end of a user's other sessions
// after a password change, the client hears UNAVAILABLE, but every one of
// them is ended on the master all the same, not only those before the
// first that failed: a password changed after a theft leaves none of the
// thief's sessions open.
func TestFailover_UnconfirmedEndOfSessionsEndsThemAll(t *testing.T) {
	c := newCluster(t)
	s := signIn(t, servertest.Protocols[0])
	others := []*parleyv1.Tokens{s.session}
	for range 2 {
		res, err := s.cl.Auth.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: s.acc.Username, Password: servertest.Password}))
		if err != nil {
			t.Fatal(err)
		}
		others = append(others, res.Msg.GetTokens())
	}
	resume := c.pause(t, c.replica(t, c.master(t, userKey(s.acc.ID))))
	_, err := s.cl.Account.ChangePassword(context.Background(), servertest.WithToken(
		&parleyv1.ChangePasswordRequest{OldPassword: servertest.Password, NewPassword: servertest.Password + "-changed"}, s.acc.Token))
	servertest.WantCode(t, err, connect.CodeUnavailable)
	resume()
	for i, tok := range others {
		if err := s.whoAmI(tok.GetAccessToken()); connect.CodeOf(err) != connect.CodeUnauthenticated {
			t.Errorf("other session %d after the password change: GetMe = %v, want UNAUTHENTICATED", i, err)
		}
	}
	if err := s.whoAmI(s.acc.Token); err != nil {
		t.Errorf("the session that changed the password: GetMe = %v", err)
	}
}

// When the replica cannot confirm a revocation (it is stopped), the
// revocation is not acknowledged: the client hears UNAVAILABLE, never an
// OK that a failover could undo; and its retry, once the cluster has
// failed over, ends the session for good.
func TestFailover_UnconfirmedRevocationIsNotAcknowledged(t *testing.T) {
	c := newCluster(t)
	s := signIn(t, servertest.Protocols[0])
	master := c.master(t, userKey(s.acc.ID))
	replica := c.replica(t, master)
	resume := c.pause(t, replica)
	revoke := func() error {
		_, err := s.cl.Auth.RevokeSession(context.Background(), servertest.WithToken(
			&parleyv1.RevokeSessionRequest{SessionId: s.session.GetSessionId()}, s.acc.Token))
		return err
	}
	err := revoke()
	servertest.WantCode(t, err, connect.CodeUnavailable)
	// The master dies with the revocation that its replica never got;
	// the replica takes over without it.
	c.kill(t, master)
	resume()
	eventually(t, "the retried revocation", func() error {
		switch err := revoke(); connect.CodeOf(err) {
		case connect.CodeNotFound:
			// Revoked already: the master had passed it on after all.
			return nil
		default:
			return err
		}
	})
	var cerr *connect.Error
	if err := s.whoAmI(s.session.GetAccessToken()); !errors.As(err, &cerr) || cerr.Code() != connect.CodeUnauthenticated {
		t.Fatalf("the revoked session: GetMe = %v, want UNAUTHENTICATED", err)
	}
}
