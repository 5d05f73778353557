package servertest

import (
	"testing"

	"connectrpc.com/connect"

	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
)

// Clients holds a generated client of every Parley service, for one server
// over one protocol.
type Clients struct {
	Server  parleyv1connect.ServerServiceClient
	Auth    parleyv1connect.AuthServiceClient
	Account parleyv1connect.AccountServiceClient
	User    parleyv1connect.UserServiceClient
	Avatar  parleyv1connect.AvatarServiceClient
	Chat    parleyv1connect.ChatServiceClient
	Message parleyv1connect.MessageServiceClient
	Media   parleyv1connect.MediaServiceClient
	Live    parleyv1connect.LiveServiceClient
	Privacy parleyv1connect.PrivacyServiceClient
}

// NewClients returns the clients of s over p.
func NewClients(s *Server, p Protocol) Clients {
	return Clients{
		Server:  Client(s, p, parleyv1connect.NewServerServiceClient),
		Auth:    Client(s, p, parleyv1connect.NewAuthServiceClient),
		Account: Client(s, p, parleyv1connect.NewAccountServiceClient),
		User:    Client(s, p, parleyv1connect.NewUserServiceClient),
		Avatar:  Client(s, p, parleyv1connect.NewAvatarServiceClient),
		Chat:    Client(s, p, parleyv1connect.NewChatServiceClient),
		Message: Client(s, p, parleyv1connect.NewMessageServiceClient),
		Media:   Client(s, p, parleyv1connect.NewMediaServiceClient),
		Live:    Client(s, p, parleyv1connect.NewLiveServiceClient),
		Privacy: Client(s, p, parleyv1connect.NewPrivacyServiceClient),
	}
}

// WithToken returns a request for msg that carries the access token, or
// no Authorization header at all when token is "".
func WithToken[T any](msg *T, token string) *connect.Request[T] {
	req := connect.NewRequest(msg)
	if token != "" {
		req.Header().Set("Authorization", "Bearer "+token)
	}
	return req
}

// WantCode fails the test unless err is an error with the code want.
func WantCode(tb testing.TB, err error, want connect.Code) {
	tb.Helper()
	if got := connect.CodeOf(err); err == nil || got != want {
		tb.Fatalf("err = %v (code %v), want code %v", err, got, want)
	}
}
