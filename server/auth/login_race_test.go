package auth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/auth"
	"github.com/parley-chat/parley/server/servertest"
)

// pausingLookup holds a Login of one login text after it has read the
// account's password hash, until the test lets it go on.
type pausingLookup struct {
	auth.Accounts
	login          string
	looked, resume chan struct{}
}

func (p *pausingLookup) LookupLogin(ctx context.Context, login string) (int, string, error) {
	id, hash, err := p.Accounts.LookupLogin(ctx, login)
	if login == p.login {
		close(p.looked)
		<-p.resume
	}
	return id, hash, err
}

// pausedLogin registers an account on a standalone authentication
// service and starts its Login with the right password, held once it has
// read the account's password hash: the test changes the account, then
// calls resume for the Login's answer.
func pausedLogin(t *testing.T) (a *standaloneAuth, client parleyv1connect.AuthServiceClient, acc servertest.Account, resume func() (*connect.Response[parleyv1.LoginResponse], error)) {
	t.Helper()
	name := servertest.UniqueName("paused")
	pause := &pausingLookup{login: name, looked: make(chan struct{}), resume: make(chan struct{})}
	a = newStandaloneAuth(t, func(users auth.Accounts) auth.Accounts { pause.Accounts = users; return pause })
	srv := httptest.NewServer(a.authn.Middleware(a.public, a.mux))
	t.Cleanup(srv.Close)
	client = parleyv1connect.NewAuthServiceClient(http.DefaultClient, srv.URL)
	acc = servertest.Register(t, client, name)
	type result struct {
		res *connect.Response[parleyv1.LoginResponse]
		err error
	}
	login := make(chan result, 1)
	go func() {
		res, err := client.Login(context.Background(), connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: servertest.Password}))
		login <- result{res, err}
	}()
	<-pause.looked
	// A test that fails before resuming lets the Login go on, so that the
	// server can close.
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(pause.resume) }) })
	return a, client, acc, func() (*connect.Response[parleyv1.LoginResponse], error) {
		once.Do(func() { close(pause.resume) })
		r := <-login
		return r.res, r.err
	}
}

// TestLogin_PasswordChangedMeanwhile: a Login with the old password that
// read the account's hash before a change of the password, and opens its
// session after the change ended the sessions open then, keeps no
// session: the change is what ends an intruder's access.
func TestLogin_PasswordChangedMeanwhile(t *testing.T) {
	ctx := context.Background()
	a, client, acc, resume := pausedLogin(t)
	// The change of the password, as AccountService makes it: the new
	// hash, then the end of every session.
	hash, err := a.authn.HashPassword(ctx, "another horse battery staple")
	if err != nil {
		t.Fatal(err)
	}
	if err := a.users.SetPasswordHash(ctx, int(acc.ID), hash); err != nil {
		t.Fatal(err)
	}
	if err := a.authn.EndSessions(ctx, int(acc.ID), ""); err != nil {
		t.Fatal(err)
	}
	res, err := resume()
	if err == nil {
		_, err := client.ListSessions(ctx, servertest.WithToken(&parleyv1.ListSessionsRequest{}, res.Msg.GetTokens().GetAccessToken()))
		t.Fatalf("a Login with the old password, racing the change, succeeded; its session then answers %v", err)
	}
	if connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("Login racing the change: %v; want unauthenticated", err)
	}
	if _, err := client.ListSessions(ctx, servertest.WithToken(&parleyv1.ListSessionsRequest{}, acc.Token)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("the session open before the change answers %v; want unauthenticated", err)
	}
}

// TestLogin_AccountDeletedMeanwhile: a Login of an account whose deletion
// ends while it checks the password gets the answer of an unknown login.
func TestLogin_AccountDeletedMeanwhile(t *testing.T) {
	ctx := context.Background()
	a, _, acc, resume := pausedLogin(t)
	if err := a.users.MarkDeleted(ctx, int(acc.ID)); err != nil {
		t.Fatal(err)
	}
	if err := a.users.DeleteRows(ctx, int(acc.ID)); err != nil {
		t.Fatal(err)
	}
	if _, err := resume(); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("Login of an account deleted meanwhile: %v; want unauthenticated", err)
	}
}
