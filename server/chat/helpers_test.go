package chat_test

import (
	"context"
	"sync/atomic"
	"testing"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

func TestMain(m *testing.M) { servertest.Main(m) }

// user is a signed-in test user with its clients.
type user struct {
	id    int32
	token string
	chats parleyv1connect.ChatServiceClient
	msgs  parleyv1connect.MessageServiceClient
}

var seq atomic.Int64

// newUser registers a user and returns it with a chat client over p.
func newUser(t testing.TB, srv *servertest.Server, p servertest.Protocol) *user {
	t.Helper()
	acc := servertest.Register(t, servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient), servertest.UniqueName("chatter"))
	return &user{
		id:    acc.ID,
		token: acc.Token,
		chats: servertest.Client(srv, p, parleyv1connect.NewChatServiceClient),
		msgs:  servertest.Client(srv, p, parleyv1connect.NewMessageServiceClient),
	}
}

// req wraps msg in a request signed by u.
func req[T any](u *user, msg *T) *connect.Request[T] { return servertest.WithToken(msg, u.token) }

// wantCode fails the test unless err carries the code.
func wantCode(t testing.TB, err error, want connect.Code) {
	t.Helper()
	servertest.WantCode(t, err, want)
}

func group(t testing.TB, admin *user, name string, members ...*user) *parleyv1.Chat {
	t.Helper()
	var ids []int32
	for _, m := range members {
		ids = append(ids, m.id)
	}
	return servertest.GroupChat(t, admin.chats, admin.token, name, ids...)
}

// roles maps user ids to roles as the chat lists them.
func roles(c *parleyv1.Chat) map[int32]parleyv1.Role {
	m := make(map[int32]parleyv1.Role)
	for _, p := range c.GetParticipants() {
		m[p.GetUserId()] = p.GetRole()
	}
	return m
}

// chatCount returns how many chats the user can list.
func chatCount(t *testing.T, u *user) int {
	t.Helper()
	res, err := u.chats.ListChats(context.Background(), req(u, &parleyv1.ListChatsRequest{PageSize: 200}))
	if err != nil {
		t.Fatalf("ListChats: %v", err)
	}
	return len(res.Msg.GetChats())
}

// send sends a text message with a fresh client id.
func send(t testing.TB, u *user, chatID, text string) *parleyv1.Message {
	t.Helper()
	return servertest.Send(t, u.msgs, u.token, chatID, text)
}

// listAll pages through the whole chat from the start, 100 at a time.
func listAll(t *testing.T, u *user, chatID string) []*parleyv1.Message {
	t.Helper()
	out, err := servertest.ListMessagesAfter(u.msgs, u.token, chatID, 0)
	if err != nil {
		t.Fatalf("ListMessages: %v", err)
	}
	return out
}

// getChat returns the chat as u sees it.
func getChat(t *testing.T, u *user, chatID string) *parleyv1.Chat {
	t.Helper()
	res, err := u.chats.GetChat(context.Background(), req(u, &parleyv1.GetChatRequest{ChatId: chatID}))
	if err != nil {
		t.Fatalf("GetChat: %v", err)
	}
	return res.Msg.GetChat()
}
