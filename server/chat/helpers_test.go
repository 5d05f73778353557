package chat_test

import (
	"context"
	"fmt"
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
	name := fmt.Sprintf("chatter%d", seq.Add(1))
	authc := servertest.Client(srv, p, parleyv1connect.NewAuthServiceClient)
	res, err := authc.Register(context.Background(), connect.NewRequest(&parleyv1.RegisterRequest{
		Username: name, Email: name + "@example.com", Password: "correct horse battery staple",
	}))
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	return &user{
		id:    res.Msg.GetMe().GetUser().GetId(),
		token: res.Msg.GetTokens().GetAccessToken(),
		chats: servertest.Client(srv, p, parleyv1connect.NewChatServiceClient),
		msgs:  servertest.Client(srv, p, parleyv1connect.NewMessageServiceClient),
	}
}

// req wraps msg in a request signed by u.
func req[T any](u *user, msg *T) *connect.Request[T] {
	r := connect.NewRequest(msg)
	r.Header().Set("Authorization", "Bearer "+u.token)
	return r
}

func wantCode(t testing.TB, err error, want connect.Code) {
	t.Helper()
	if got := connect.CodeOf(err); err == nil || got != want {
		t.Fatalf("err = %v (code %v), want code %v", err, got, want)
	}
}

func group(t testing.TB, admin *user, name string, members ...*user) *parleyv1.Chat {
	t.Helper()
	var ids []int32
	for _, m := range members {
		ids = append(ids, m.id)
	}
	res, err := admin.chats.CreateGroupChat(context.Background(), req(admin, &parleyv1.CreateGroupChatRequest{Name: name, MemberIds: ids}))
	if err != nil {
		t.Fatalf("CreateGroupChat: %v", err)
	}
	return res.Msg.GetChat()
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
	res, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: fmt.Sprintf("c%d", seq.Add(1)), Text: text,
	}))
	if err != nil {
		t.Fatalf("SendMessage: %v", err)
	}
	return res.Msg.GetMessage()
}

// listAll pages through the whole chat from the start, 100 at a time.
func listAll(t *testing.T, u *user, chatID string) []*parleyv1.Message {
	t.Helper()
	var out []*parleyv1.Message
	after := int64(0)
	for {
		res, err := u.msgs.ListMessages(context.Background(), req(u, &parleyv1.ListMessagesRequest{
			ChatId: chatID, Cursor: &parleyv1.ListMessagesRequest_AfterSeq{AfterSeq: after}, Limit: 100,
		}))
		if err != nil {
			t.Fatalf("ListMessages: %v", err)
		}
		out = append(out, res.Msg.GetMessages()...)
		if !res.Msg.GetHasMore() {
			return out
		}
		after = res.Msg.GetMessages()[len(res.Msg.GetMessages())-1].GetSeq()
	}
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
