package chat_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/gen/parley/v1/parleyv1connect"
	"github.com/parley-chat/parley/server/servertest"
)

// sendReq sends the request as u with a fresh client message id.
func sendReq(u *user, r *parleyv1.SendMessageRequest) (*parleyv1.Message, error) {
	r.ClientMessageId = servertest.UniqueName("m")
	res, err := u.msgs.SendMessage(context.Background(), req(u, r))
	if err != nil {
		return nil, err
	}
	return res.Msg.GetMessage(), nil
}

// messageAt returns the message with the seq as u lists it.
func messageAt(t *testing.T, u *user, chatID string, seq int64) *parleyv1.Message {
	t.Helper()
	for _, m := range listAll(t, u, chatID) {
		if m.GetSeq() == seq {
			return m
		}
	}
	t.Fatalf("no message with seq %d in chat %s", seq, chatID)
	return nil
}

// subscribe opens u's live stream on srv and waits for its ready event.
func subscribe(t *testing.T, srv *servertest.Server, p servertest.Protocol, u *user) *connect.ServerStreamForClient[parleyv1.SubscribeResponse] {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	stream, err := servertest.Client(srv, p, parleyv1connect.NewLiveServiceClient).Subscribe(ctx, req(u, &parleyv1.SubscribeRequest{}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stream.Close() })
	for stream.Receive() {
		if stream.Msg().GetEvent().GetReady() != nil {
			return stream
		}
	}
	t.Fatalf("stream ended before ready: %v", stream.Err())
	return nil
}

// nextEvent returns the stream's next event that match picks.
func nextEvent(t *testing.T, stream *connect.ServerStreamForClient[parleyv1.SubscribeResponse], match func(*parleyv1.Event) bool) *parleyv1.Event {
	t.Helper()
	for stream.Receive() {
		if ev := stream.Msg().GetEvent(); match(ev) {
			return ev
		}
	}
	t.Fatalf("stream ended: %v", stream.Err())
	return nil
}

func TestReplies(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			a, b, outsider := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			c := group(t, a, "g", b)
			other := group(t, a, "other")
			bLive := subscribe(t, srv, p, b)
			orig := send(t, a, c.GetId(), "what time is it?")
			elsewhere := send(t, a, other.GetId(), "elsewhere")

			reply, err := sendReq(b, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "noon", ReplyToMessageId: orig.GetId()})
			if err != nil {
				t.Fatalf("reply: %v", err)
			}
			want := &parleyv1.ReplyQuote{MessageId: orig.GetId(), Seq: orig.GetSeq(), SenderId: a.id, Preview: "what time is it?"}
			checkQuote(t, "the reply as sent", reply.GetReplyTo(), want)
			checkQuote(t, "the reply as listed", messageAt(t, a, c.GetId(), reply.GetSeq()).GetReplyTo(), want)
			ev := nextEvent(t, bLive, func(ev *parleyv1.Event) bool {
				return ev.GetMessageCreated().GetMessage().GetId() == reply.GetId()
			})
			checkQuote(t, "the reply's event", ev.GetMessageCreated().GetMessage().GetReplyTo(), want)

			// The quote follows the original's edit, then its deletion.
			if _, err := a.msgs.EditMessage(context.Background(), req(a, &parleyv1.EditMessageRequest{
				ChatId: c.GetId(), MessageId: orig.GetId(), Text: "what time is it now?",
			})); err != nil {
				t.Fatal(err)
			}
			want.Preview = "what time is it now?"
			checkQuote(t, "after the original's edit", messageAt(t, b, c.GetId(), reply.GetSeq()).GetReplyTo(), want)
			if _, err := a.msgs.DeleteMessage(context.Background(), req(a, &parleyv1.DeleteMessageRequest{
				ChatId: c.GetId(), MessageId: orig.GetId(),
			})); err != nil {
				t.Fatal(err)
			}
			want.Preview, want.Deleted = "", true
			checkQuote(t, "after the original's deletion", messageAt(t, b, c.GetId(), reply.GetSeq()).GetReplyTo(), want)

			// A retry of the reply, after its original was deleted, gets
			// the stored reply.
			again, err := b.msgs.SendMessage(context.Background(), req(b, &parleyv1.SendMessageRequest{
				ChatId: c.GetId(), ClientMessageId: reply.GetClientMessageId(), Text: "noon", ReplyToMessageId: orig.GetId(),
			}))
			if err != nil || again.Msg.GetMessage().GetId() != reply.GetId() {
				t.Errorf("retry of a reply whose original is gone: %v, %v; want the stored reply", again, err)
			}

			// Refusals change nothing.
			before := len(listAll(t, a, c.GetId()))
			for _, tc := range []struct {
				name string
				u    *user
				r    *parleyv1.SendMessageRequest
				code connect.Code
			}{
				{"to a deleted message", b, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "x", ReplyToMessageId: orig.GetId()}, connect.CodeFailedPrecondition},
				{"to a message of another chat", a, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "x", ReplyToMessageId: elsewhere.GetId()}, connect.CodeNotFound},
				{"to no message", a, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "x", ReplyToMessageId: "0123456789abcdef01234567"}, connect.CodeNotFound},
				{"not an id", a, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "x", ReplyToMessageId: "nope"}, connect.CodeInvalidArgument},
				{"by an outsider", outsider, &parleyv1.SendMessageRequest{ChatId: c.GetId(), Text: "x", ReplyToMessageId: reply.GetId()}, connect.CodeNotFound},
			} {
				_, err := sendReq(tc.u, tc.r)
				if connect.CodeOf(err) != tc.code {
					t.Errorf("reply %s: %v, want %v", tc.name, err, tc.code)
				}
			}
			if after := len(listAll(t, a, c.GetId())); after != before {
				t.Errorf("refused replies changed the chat: %d messages, then %d", before, after)
			}
		})
	}
}

func checkQuote(t *testing.T, what string, got, want *parleyv1.ReplyQuote) {
	t.Helper()
	if got.GetMessageId() != want.GetMessageId() || got.GetSeq() != want.GetSeq() || got.GetSenderId() != want.GetSenderId() ||
		got.GetPreview() != want.GetPreview() || got.GetDeleted() != want.GetDeleted() ||
		!slices.Equal(got.GetAttachmentTypes(), want.GetAttachmentTypes()) {
		t.Errorf("%s: quote = %v, want %v", what, got, want)
	}
}

// mentionCount returns the chat's unread mentions as u's chat list and
// GetChat tell them, failing when the two disagree.
func mentionCount(t *testing.T, u *user, chatID string) int64 {
	t.Helper()
	res, err := u.chats.ListChats(context.Background(), req(u, &parleyv1.ListChatsRequest{PageSize: 200}))
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(res.Msg.GetChats(), func(c *parleyv1.Chat) bool { return c.GetId() == chatID })
	if i < 0 {
		t.Fatalf("chat %s not listed", chatID)
	}
	listed := res.Msg.GetChats()[i].GetUnreadMentionCount()
	if got := getChat(t, u, chatID).GetUnreadMentionCount(); got != listed {
		t.Fatalf("GetChat says %d unread mentions, ListChats %d", got, listed)
	}
	return listed
}

func TestMentions(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, b, c, d := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			g := group(t, admin, "g", b, c, d)
			stranger := newUser(t, srv, p)

			m, err := sendReq(b, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "@c look", MentionUserIds: []int32{c.id}})
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(m.GetMentionedUserIds(), []int32{c.id}) || m.GetMentionsAll() {
				t.Errorf("sent message mentions %v (all: %v), want [%d]", m.GetMentionedUserIds(), m.GetMentionsAll(), c.id)
			}
			all, err := sendReq(admin, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "@all meeting", MentionAll: true})
			if err != nil {
				t.Fatal(err)
			}
			if listed := messageAt(t, d, g.GetId(), all.GetSeq()); !listed.GetMentionsAll() {
				t.Errorf("listed @all message: mentions_all = false")
			}
			send(t, admin, g.GetId(), "no mention")
			for _, tc := range []struct {
				u    *user
				name string
				want int64
			}{{c, "c", 2}, {d, "d", 1}, {b, "b (mentioned by @all only)", 1}, {admin, "the admin (its own @all)", 0}} {
				if got := mentionCount(t, tc.u, g.GetId()); got != tc.want {
					t.Errorf("%s: %d unread mentions, want %d", tc.name, got, tc.want)
				}
			}

			// Reading the first mention leaves the @all one; deleting
			// that one leaves none.
			if _, err := c.msgs.MarkRead(context.Background(), req(c, &parleyv1.MarkReadRequest{ChatId: g.GetId(), UpToSeq: m.GetSeq()})); err != nil {
				t.Fatal(err)
			}
			if got := mentionCount(t, c, g.GetId()); got != 1 {
				t.Errorf("c after reading the first mention: %d unread mentions, want 1", got)
			}
			if _, err := admin.msgs.DeleteMessage(context.Background(), req(admin, &parleyv1.DeleteMessageRequest{ChatId: g.GetId(), MessageId: all.GetId()})); err != nil {
				t.Fatal(err)
			}
			if got := mentionCount(t, c, g.GetId()); got != 0 {
				t.Errorf("c after the @all message was deleted: %d unread mentions, want 0", got)
			}
			if got := messageAt(t, c, g.GetId(), all.GetSeq()); got.GetMentionsAll() || len(got.GetMentionedUserIds()) > 0 {
				t.Errorf("a tombstone still mentions: %v", got)
			}

			// Refusals change nothing.
			priv := servertest.PrivateChat(t, b.chats, b.token, c.id)
			before := len(listAll(t, admin, g.GetId()))
			for _, tc := range []struct {
				name string
				u    *user
				r    *parleyv1.SendMessageRequest
				code connect.Code
			}{
				{"a non-member", b, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "x", MentionUserIds: []int32{stranger.id}}, connect.CodeInvalidArgument},
				{"@all by a member", b, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "x", MentionAll: true}, connect.CodePermissionDenied},
				{"@all in a private chat", b, &parleyv1.SendMessageRequest{ChatId: priv.GetId(), Text: "x", MentionAll: true}, connect.CodeInvalidArgument},
				{"a user twice", b, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "x", MentionUserIds: []int32{c.id, c.id}}, connect.CodeInvalidArgument},
			} {
				if _, err := sendReq(tc.u, tc.r); connect.CodeOf(err) != tc.code {
					t.Errorf("mention of %s: %v, want %v", tc.name, err, tc.code)
				}
			}
			if after := len(listAll(t, admin, g.GetId())); after != before {
				t.Errorf("refused mentions changed the chat: %d messages, then %d", before, after)
			}
		})
	}
}

// TestMentions_ChecksOnEveryInstance: the mention checks use what the
// instance cached of the chat only as far as it is current, as the
// membership checks do: a member removed, or made admin, through another
// instance counts at once.
func TestMentions_ChecksOnEveryInstance(t *testing.T) {
	a, b := servertest.New(t), servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member, other := newUser(t, a, p), newUser(t, a, p), newUser(t, a, p)
			g := group(t, admin, "g", member, other)
			adminB := &user{id: admin.id, token: admin.token,
				chats: servertest.Client(b, p, parleyv1connect.NewChatServiceClient),
				msgs:  servertest.Client(b, p, parleyv1connect.NewMessageServiceClient)}
			// Instance a caches the chat as it is now.
			if _, err := sendReq(member, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "hi", MentionUserIds: []int32{other.id}}); err != nil {
				t.Fatal(err)
			}
			if _, err := adminB.chats.RemoveParticipant(context.Background(), req(adminB, &parleyv1.RemoveParticipantRequest{ChatId: g.GetId(), UserId: other.id})); err != nil {
				t.Fatal(err)
			}
			if _, err := sendReq(member, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "hi", MentionUserIds: []int32{other.id}}); connect.CodeOf(err) != connect.CodeInvalidArgument {
				t.Errorf("mention of a member removed through another instance: %v, want invalid_argument", err)
			}
			if _, err := sendReq(member, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "all?", MentionAll: true}); connect.CodeOf(err) != connect.CodePermissionDenied {
				t.Fatalf("@all by a member: %v, want permission_denied", err)
			}
			if _, err := adminB.chats.SetParticipantRole(context.Background(), req(adminB, &parleyv1.SetParticipantRoleRequest{
				ChatId: g.GetId(), UserId: member.id, Role: parleyv1.Role_ROLE_ADMIN,
			})); err != nil {
				t.Fatal(err)
			}
			if _, err := sendReq(member, &parleyv1.SendMessageRequest{ChatId: g.GetId(), Text: "all!", MentionAll: true}); err != nil {
				t.Errorf("@all by a member made admin through another instance: %v", err)
			}
		})
	}
}
