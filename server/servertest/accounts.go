package servertest

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// Password is the password Register gives every account.
const Password = "correct horse battery staple"

var unique atomic.Int64

// UniqueName returns prefix followed by a number no other call in the test
// binary returns, for usernames and client message ids that must not
// collide with those of other tests on the package's stores.
func UniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, unique.Add(1))
}

// Account is a user that Register signed up, with its first session.
type Account struct {
	ID       int32
	Username string
	Email    string
	// Token is the session's access token, for WithToken.
	Token string
	// Tokens is the whole session: access and refresh tokens, session id.
	Tokens *parleyv1.Tokens
}

// Register signs up username, with the email username@example.com and
// Password, and fails the test if the server refuses.
func Register(tb testing.TB, c parleyv1connect.AuthServiceClient, username string) Account {
	tb.Helper()
	return RegisterWith(tb, c, &parleyv1.RegisterRequest{
		Username: username, Email: username + "@example.com", Password: Password,
	})
}

// RegisterWith signs up the account req describes and fails the test if
// the server refuses.
func RegisterWith(tb testing.TB, c parleyv1connect.AuthServiceClient, req *parleyv1.RegisterRequest) Account {
	tb.Helper()
	res, err := c.Register(context.Background(), connect.NewRequest(req))
	if err != nil {
		tb.Fatalf("Register(%q): %v", req.GetUsername(), err)
	}
	return Account{
		ID:       res.Msg.GetMe().GetUser().GetId(),
		Username: req.GetUsername(),
		Email:    req.GetEmail(),
		Token:    res.Msg.GetTokens().GetAccessToken(),
		Tokens:   res.Msg.GetTokens(),
	}
}
