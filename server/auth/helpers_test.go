package auth_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// clients are the generated clients of one server over one protocol.
type clients struct {
	auth   parleyv1connect.AuthServiceClient
	users  parleyv1connect.UserServiceClient
	avatar parleyv1connect.AvatarServiceClient
}

func newClients(srv *servertest.Server, p servertest.Protocol) clients {
	return clients{
		auth:   servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient),
		users:  servertest.Client(srv, p, parleyv1connect.NewUserServiceClient),
		avatar: servertest.Client(srv, p, parleyv1connect.NewAvatarServiceClient),
	}
}

// withToken returns a request carrying the access token.
func withToken[T any](msg *T, token string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	return req
}

var seq atomic.Int64

// uniqueName returns a username no other test uses.
func uniqueName(prefix string) string {
	return fmt.Sprintf("%s%d", prefix, seq.Add(1))
}

const password = "correct horse battery staple"

// register creates an account and returns its tokens and id.
func register(t *testing.T, c clients, username string) (*parleyv1.Tokens, int32) {
	t.Helper()
	res, err := c.auth.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
		Username: username, Email: username + "@example.com", Password: password,
	}))
	if err != nil {
		t.Fatalf("Register(%q): %v", username, err)
	}
	return res.Msg.GetTokens(), res.Msg.GetMe().GetUser().GetId()
}

// wantCode fails the test unless err carries the code.
func wantCode(t *testing.T, err error, want connect.Code) {
	t.Helper()
	if got := connect.CodeOf(err); err == nil || got != want {
		t.Fatalf("err = %v (code %v), want code %v", err, got, want)
	}
}

// countUsers returns how many users the database holds.
func countUsers(t *testing.T, srv *servertest.Server) int {
	t.Helper()
	n, err := srv.App.DB().Ent.User.Query().Count(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
