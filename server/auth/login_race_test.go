package auth_test

import (
	"context"
	"net/http"
	"net/http/httptest"
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

// TestLogin_PasswordChangedMeanwhile: a Login with the old password that
// read the account's hash before a change of the password, and opens its
// session after the change ended the sessions open then, keeps no
// session: the change is what ends an intruder's access.
func TestLogin_PasswordChangedMeanwhile(t *testing.T) {
	ctx := context.Background()
	name := servertest.UniqueName("changed")
	pause := &pausingLookup{login: name, looked: make(chan struct{}), resume: make(chan struct{})}
	a := newStandaloneAuth(t, func(users auth.Accounts) auth.Accounts { pause.Accounts = users; return pause })
	srv := httptest.NewServer(a.authn.Middleware(a.public, a.mux))
	t.Cleanup(srv.Close)
	client := parleyv1connect.NewAuthServiceClient(http.DefaultClient, srv.URL)
	acc := servertest.Register(t, client, name)

	type result struct {
		res *connect.Response[parleyv1.LoginResponse]
		err error
	}
	login := make(chan result, 1)
	go func() {
		res, err := client.Login(ctx, connect.NewRequest(&parleyv1.LoginRequest{Login: name, Password: servertest.Password}))
		login <- result{res, err}
	}()
	<-pause.looked
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
	close(pause.resume)
	got := <-login
	if got.err == nil {
		_, err := client.ListSessions(ctx, servertest.WithToken(&parleyv1.ListSessionsRequest{}, got.res.Msg.GetTokens().GetAccessToken()))
		t.Fatalf("a Login with the old password, racing the change, succeeded; its session then answers %v", err)
	}
	if connect.CodeOf(got.err) != connect.CodeUnauthenticated {
		t.Errorf("Login racing the change: %v; want unauthenticated", got.err)
	}
	if _, err := client.ListSessions(ctx, servertest.WithToken(&parleyv1.ListSessionsRequest{}, acc.Token)); connect.CodeOf(err) != connect.CodeUnauthenticated {
		t.Errorf("the session open before the change answers %v; want unauthenticated", err)
	}
}
