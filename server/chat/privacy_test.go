package chat_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"connectrpc.com/connect"
	"go.mongodb.org/mongo-driver/v2/bson"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/chat"
	"github.com/parley-chat/parley/server/servertest"
)

// person is a signed-in user with a client of every service.
type person struct {
	id    int32
	token string
	c     servertest.Clients
}

func newPerson(t testing.TB, srv *servertest.Server, p servertest.Protocol) *person {
	t.Helper()
	c := servertest.NewClients(srv, p)
	acc := servertest.Register(t, c.Auth, servertest.UniqueName("priv"))
	return &person{id: acc.ID, token: acc.Token, c: c}
}

func tok[T any](u *person, msg *T) *connect.Request[T] { return servertest.WithToken(msg, u.token) }

func (u *person) block(t testing.TB, other *person) {
	t.Helper()
	if _, err := u.c.Privacy.BlockUser(context.Background(), tok(u, &parleyv1.BlockUserRequest{UserId: other.id})); err != nil {
		t.Fatalf("BlockUser: %v", err)
	}
}

func (u *person) settings(t testing.TB, up *parleyv1.UpdatePrivacySettingsRequest) {
	t.Helper()
	if _, err := u.c.Privacy.UpdatePrivacySettings(context.Background(), tok(u, up)); err != nil {
		t.Fatalf("UpdatePrivacySettings: %v", err)
	}
}

func (u *person) startChat(t testing.TB, peer *person) *parleyv1.Chat {
	t.Helper()
	return servertest.PrivateChat(t, u.c.Chat, u.token, peer.id)
}

func (u *person) send(t testing.TB, chatID, text string) *parleyv1.Message {
	t.Helper()
	return servertest.Send(t, u.c.Message, u.token, chatID, text)
}

func (u *person) trySend(chatID, text string) error {
	_, err := u.c.Message.SendMessage(context.Background(), tok(u, &parleyv1.SendMessageRequest{
		ChatId: chatID, ClientMessageId: servertest.UniqueName("c"), Text: text,
	}))
	return err
}

func (u *person) chatIDs(t testing.TB) []string {
	t.Helper()
	res, err := u.c.Chat.ListChats(context.Background(), tok(u, &parleyv1.ListChatsRequest{PageSize: 200}))
	if err != nil {
		t.Fatalf("ListChats: %v", err)
	}
	var out []string
	for _, c := range res.Msg.GetChats() {
		out = append(out, c.GetId())
	}
	return out
}

func (u *person) messages(t testing.TB, chatID string) []*parleyv1.Message {
	t.Helper()
	out, err := servertest.ListMessagesAfter(u.c.Message, u.token, chatID, 0)
	if err != nil {
		t.Fatalf("ListMessages: %v", err)
	}
	return out
}

// presence returns the presences u may see of others.
func (u *person) presence(t testing.TB, others ...*person) map[int32]*parleyv1.Presence {
	t.Helper()
	var ids []int32
	for _, o := range others {
		ids = append(ids, o.id)
	}
	res, err := u.c.Live.GetPresence(context.Background(), tok(u, &parleyv1.GetPresenceRequest{UserIds: ids}))
	if err != nil {
		t.Fatalf("GetPresence: %v", err)
	}
	out := map[int32]*parleyv1.Presence{}
	for _, p := range res.Msg.GetPresences() {
		out[p.GetUserId()] = p
	}
	return out
}

// online opens a live stream of u, waits until it is ready, and returns
// its events (presence included) and a function that closes it.
func (u *person) online(t testing.TB) (<-chan *parleyv1.Event, func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s, err := u.c.Live.Subscribe(ctx, tok(u, &parleyv1.SubscribeRequest{}))
	if err != nil {
		cancel()
		t.Fatalf("Subscribe: %v", err)
	}
	events := make(chan *parleyv1.Event, 100)
	ready := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s.Receive() {
			ev := s.Msg().GetEvent()
			if ev.GetReady() != nil {
				close(ready)
				continue
			}
			select {
			case events <- ev:
			default:
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		cancel()
		t.Fatal("the stream did not become ready")
	}
	return events, func() { cancel(); <-done; s.Close() }
}

// nextPresence returns the next presence event of userID.
func nextPresence(t testing.TB, events <-chan *parleyv1.Event, userID int32) *parleyv1.Presence {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if p := ev.GetPresence(); p != nil && p.GetUserId() == userID {
				return p
			}
		case <-timeout:
			t.Fatalf("no presence event of user %d", userID)
			return nil
		}
	}
}

// sameRefusal fails unless both errors are the same refusal (code and
// message), so that a block cannot be told from its twin.
func sameRefusal(t testing.TB, what string, blocked, twin error) {
	t.Helper()
	if blocked == nil || twin == nil {
		t.Fatalf("%s: blocked %v, twin %v; want both refused", what, blocked, twin)
	}
	if connect.CodeOf(blocked) != connect.CodeOf(twin) || blocked.Error() != twin.Error() {
		t.Errorf("%s: blocked user got %q (%v), the settings' twin %q (%v); want the same", what,
			blocked, connect.CodeOf(blocked), twin, connect.CodeOf(twin))
	}
	if connect.CodeOf(blocked) != connect.CodePermissionDenied {
		t.Errorf("%s: code %v, want %v", what, connect.CodeOf(blocked), connect.CodePermissionDenied)
	}
}

func ids32(us ...*person) []int32 {
	var out []int32
	for _, u := range us {
		out = append(out, u.id)
	}
	return out
}

func memberIDs(c *parleyv1.Chat) []int32 {
	var out []int32
	for _, p := range c.GetParticipants() {
		out = append(out, p.GetUserId())
	}
	slices.Sort(out)
	return out
}

// A blocked user's attempts fail exactly like those the blocker's
// settings (or a declined request) refuse, and change nothing.
func TestPrivacy_BlockLooksLikeSettings(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice := newPerson(t, srv, p)
			blocker, nobody := newPerson(t, srv, p), newPerson(t, srv, p)
			blocker.block(t, alice)
			nobody.settings(t, &parleyv1.UpdatePrivacySettingsRequest{
				PrivateChats: parleyv1.PrivateChats_PRIVATE_CHATS_NOBODY.Enum(),
				GroupAdds:    parleyv1.GroupAdds_GROUP_ADDS_NOBODY.Enum(),
			})

			t.Run("CreatePrivateChat", func(t *testing.T) {
				_, errBlocked := alice.c.Chat.CreatePrivateChat(ctx, tok(alice, &parleyv1.CreatePrivateChatRequest{PeerId: blocker.id}))
				_, errTwin := alice.c.Chat.CreatePrivateChat(ctx, tok(alice, &parleyv1.CreatePrivateChatRequest{PeerId: nobody.id}))
				sameRefusal(t, "CreatePrivateChat", errBlocked, errTwin)
				if n := len(alice.chatIDs(t)) + len(blocker.chatIDs(t)) + len(nobody.chatIDs(t)); n != 0 {
					t.Errorf("refused CreatePrivateChat left %d chats", n)
				}
			})

			t.Run("SendMessage", func(t *testing.T) {
				// Both chats exist before: one peer blocks alice, the
				// other declines her request.
				blocks, declines := newPerson(t, srv, p), newPerson(t, srv, p)
				toBlocker := alice.startChat(t, blocks).GetId()
				toDecliner := alice.startChat(t, declines).GetId()
				alice.send(t, toBlocker, "hi")
				alice.send(t, toDecliner, "hi")
				blocks.block(t, alice)
				if _, err := declines.c.Chat.DeclineChatRequest(ctx, tok(declines, &parleyv1.DeclineChatRequestRequest{ChatId: toDecliner})); err != nil {
					t.Fatalf("DeclineChatRequest: %v", err)
				}
				sameRefusal(t, "SendMessage", alice.trySend(toBlocker, "again"), alice.trySend(toDecliner, "again"))
				if got := len(blocks.messages(t, toBlocker)); got != 1 {
					t.Errorf("the blocker's chat has %d messages after the refused send, want 1", got)
				}
				if got := len(alice.messages(t, toDecliner)); got != 1 {
					t.Errorf("the declined chat has %d messages after the refused send, want 1", got)
				}
				// The blocker itself may still write.
				blocks.send(t, toBlocker, "from the blocker")
			})

			t.Run("reactions, edits, pins and typing", func(t *testing.T) {
				// As for SendMessage: one peer blocks alice, the other
				// declines her request; the blocker hears nothing.
				blocks, declines := newPerson(t, srv, p), newPerson(t, srv, p)
				toBlocker, toDecliner := alice.startChat(t, blocks).GetId(), alice.startChat(t, declines).GetId()
				inBlocked, inDeclined := alice.send(t, toBlocker, "hi"), alice.send(t, toDecliner, "hi")
				// The blocker's pin, which alice may not take away.
				if _, err := blocks.c.Message.PinMessage(ctx, tok(blocks, &parleyv1.PinMessageRequest{ChatId: toBlocker, MessageId: inBlocked.GetId()})); err != nil {
					t.Fatalf("PinMessage: %v", err)
				}
				events, stop := blocks.online(t)
				defer stop()
				blocks.block(t, alice)
				if _, err := declines.c.Chat.DeclineChatRequest(ctx, tok(declines, &parleyv1.DeclineChatRequestRequest{ChatId: toDecliner})); err != nil {
					t.Fatalf("DeclineChatRequest: %v", err)
				}
				react := func(chatID string, m *parleyv1.Message) error {
					_, err := alice.c.Message.AddReaction(ctx, tok(alice, &parleyv1.AddReactionRequest{ChatId: chatID, MessageId: m.GetId(), Emoji: "👍"}))
					return err
				}
				edit := func(chatID string, m *parleyv1.Message) error {
					_, err := alice.c.Message.EditMessage(ctx, tok(alice, &parleyv1.EditMessageRequest{ChatId: chatID, MessageId: m.GetId(), Text: "edited"}))
					return err
				}
				pin := func(chatID string, m *parleyv1.Message) error {
					_, err := alice.c.Message.PinMessage(ctx, tok(alice, &parleyv1.PinMessageRequest{ChatId: chatID, MessageId: m.GetId()}))
					return err
				}
				unreact := func(chatID string, m *parleyv1.Message) error {
					_, err := alice.c.Message.RemoveReaction(ctx, tok(alice, &parleyv1.RemoveReactionRequest{ChatId: chatID, MessageId: m.GetId(), Emoji: "👍"}))
					return err
				}
				unpin := func(chatID string, m *parleyv1.Message) error {
					_, err := alice.c.Message.UnpinMessage(ctx, tok(alice, &parleyv1.UnpinMessageRequest{ChatId: chatID, MessageId: m.GetId()}))
					return err
				}
				for name, try := range map[string]func(string, *parleyv1.Message) error{
					"AddReaction": react, "RemoveReaction": unreact, "EditMessage": edit, "PinMessage": pin, "UnpinMessage": unpin,
				} {
					sameRefusal(t, name, try(toBlocker, inBlocked), try(toDecliner, inDeclined))
				}
				if _, err := alice.c.Message.SendTyping(ctx, tok(alice, &parleyv1.SendTypingRequest{ChatId: toBlocker, Typing: true})); err != nil {
					t.Fatalf("SendTyping: %v", err)
				}
				got := blocks.messages(t, toBlocker)
				if len(got) != 1 || got[0].GetText() != "hi" || len(got[0].GetReactions()) != 0 || got[0].GetPin().GetPinnedBy() != blocks.id {
					t.Errorf("the blocker's chat after the refused changes: %v", got)
				}
				// The blocker's own message comes after anything alice's
				// calls announced.
				mine := blocks.send(t, toBlocker, "from the blocker")
				for ev := range events {
					if m := ev.GetMessageCreated().GetMessage(); m.GetId() == mine.GetId() {
						break
					}
					if ev.GetReactionsChanged() != nil || ev.GetMessageEdited() != nil || ev.GetPinsChanged() != nil || ev.GetTyping() != nil {
						t.Errorf("the blocker heard %v", ev)
					}
				}
			})

			t.Run("add to a group", func(t *testing.T) {
				welcome := newPerson(t, srv, p)
				res, err := alice.c.Chat.CreateGroupChat(ctx, tok(alice, &parleyv1.CreateGroupChatRequest{
					Name: "g", MemberIds: ids32(blocker, nobody, welcome),
				}))
				if err != nil {
					t.Fatalf("CreateGroupChat: %v", err)
				}
				got := slices.Sorted(slices.Values(res.Msg.GetNotAddedUserIds()))
				if want := slices.Sorted(slices.Values(ids32(blocker, nobody))); !slices.Equal(got, want) {
					t.Errorf("CreateGroupChat not added %v, want %v (blocked and nobody alike)", got, want)
				}
				g := res.Msg.GetChat()
				if got, want := memberIDs(g), slices.Sorted(slices.Values(ids32(alice, welcome))); !slices.Equal(got, want) {
					t.Errorf("members %v, want %v", got, want)
				}
				add, err := alice.c.Chat.AddParticipants(ctx, tok(alice, &parleyv1.AddParticipantsRequest{ChatId: g.GetId(), UserIds: ids32(blocker, nobody)}))
				if err != nil {
					t.Fatalf("AddParticipants: %v", err)
				}
				if got := add.Msg.GetNotAddedUserIds(); len(got) != 2 {
					t.Errorf("AddParticipants not added %v, want both", got)
				}
				if got := memberIDs(add.Msg.GetChat()); len(got) != 2 {
					t.Errorf("members after the refused adds: %v", got)
				}
				if n := len(blocker.chatIDs(t)) + len(nobody.chatIDs(t)); n != 0 {
					t.Errorf("the refused users see %d chats", n)
				}
			})

			t.Run("presence", func(t *testing.T) {
				// The blocker adds alice to a group: she is in it, yet
				// sees the blocker's presence no more than a stranger's.
				stranger := newPerson(t, srv, p)
				g := servertest.GroupChat(t, blocker.c.Chat, blocker.token, "mine", alice.id)
				if !slices.Contains(memberIDs(g), alice.id) {
					t.Fatal("the blocker could not add alice")
				}
				got := alice.presence(t, blocker, stranger)
				if len(got) != 0 {
					t.Errorf("alice sees %v, want neither the blocker nor a stranger", got)
				}
				// The blocker still sees alice.
				if _, ok := blocker.presence(t, alice)[alice.id]; !ok {
					t.Error("the blocker does not see alice's presence")
				}
			})
		})
	}
}

// A private chat is a request until its recipient replies or accepts:
// until then its starter sees no presence, last-seen or ticks.
func TestPrivacy_Requests(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		for _, how := range []string{"reply", "accept"} {
			t.Run(p.Name+"/"+how, func(t *testing.T) {
				alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
				_, closeBob := bob.online(t)
				defer closeBob()
				aliceEvents, closeAlice := alice.online(t)
				defer closeAlice()

				c := alice.startChat(t, bob)
				if c.GetRequest().GetStarterId() != alice.id {
					t.Fatalf("new chat's request = %v, want started by alice", c.GetRequest())
				}
				if got := getChatOf(t, bob, c.GetId()).GetRequest().GetStarterId(); got != alice.id {
					t.Fatalf("bob sees request by %d, want alice", got)
				}
				m := alice.send(t, c.GetId(), "hello, stranger")
				if _, err := bob.c.Message.MarkRead(ctx, tok(bob, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: m.GetSeq()})); err != nil {
					t.Fatalf("MarkRead: %v", err)
				}
				if got := alice.messages(t, c.GetId())[0].GetStatus(); got != parleyv1.MessageStatus_MESSAGE_STATUS_SENT {
					t.Errorf("alice sees %v on her request, want SENT", got)
				}
				if got := alice.presence(t, bob); len(got) != 0 {
					t.Errorf("alice sees bob's presence %v during the request", got)
				}
				_, err := alice.c.Chat.AcceptChatRequest(ctx, tok(alice, &parleyv1.AcceptChatRequestRequest{ChatId: c.GetId()}))
				servertest.WantCode(t, err, connect.CodeFailedPrecondition)
				if getChatOf(t, alice, c.GetId()).GetRequest() == nil {
					t.Fatal("the starter's refused accept accepted the request")
				}

				if how == "reply" {
					bob.send(t, c.GetId(), "hello")
				} else {
					servertest.AcceptRequest(t, bob.c.Chat, bob.token, c.GetId())
				}
				if got := getChatOf(t, alice, c.GetId()).GetRequest(); got != nil {
					t.Fatalf("after the %s the chat is still a request: %v", how, got)
				}
				if got := alice.messages(t, c.GetId())[0].GetStatus(); got != parleyv1.MessageStatus_MESSAGE_STATUS_READ {
					t.Errorf("after the %s alice sees %v, want READ", how, got)
				}
				if got := alice.presence(t, bob)[bob.id]; !got.GetOnline() || got.GetLastSeen() == nil {
					t.Errorf("after the %s alice sees bob's presence %v, want online with a last-seen", how, got)
				}
				// Bob's presence changes now reach alice.
				closeBob()
				if ev := nextPresence(t, aliceEvents, bob.id); ev.GetOnline() || ev.GetLastSeen() == nil {
					t.Errorf("alice got %v, want bob offline with a last-seen", ev)
				}
			})
		}
	}
}

func getChatOf(t testing.TB, u *person, chatID string) *parleyv1.Chat {
	t.Helper()
	res, err := u.c.Chat.GetChat(context.Background(), tok(u, &parleyv1.GetChatRequest{ChatId: chatID}))
	if err != nil {
		t.Fatalf("GetChat: %v", err)
	}
	return res.Msg.GetChat()
}

// During a request, neither its position events nor presence events
// reach the starter.
func TestPrivacy_RequestEvents(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[1]
	alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
	c := alice.startChat(t, bob)
	m := alice.send(t, c.GetId(), "hi")
	aliceEvents, closeAlice := alice.online(t)
	defer closeAlice()
	_, closeBob := bob.online(t)
	if _, err := bob.c.Message.MarkRead(ctx, tok(bob, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: m.GetSeq()})); err != nil {
		t.Fatalf("MarkRead: %v", err)
	}
	if _, err := bob.c.Message.SendTyping(ctx, tok(bob, &parleyv1.SendTypingRequest{ChatId: c.GetId(), Typing: true})); err != nil {
		t.Fatalf("SendTyping: %v", err)
	}
	closeBob()
	// A marker: once alice has her own message's event, anything bob's
	// stream and reading caused before it would have arrived.
	marker := alice.send(t, c.GetId(), "marker")
	for _, ev := range eventsUntil(t, aliceEvents, marker.GetId()) {
		if ev.GetPresence() != nil || ev.GetPositionsChanged() != nil || ev.GetTyping() != nil {
			t.Fatalf("the starter of a request got %v", ev)
		}
	}
}

// eventsUntil returns the events of a stream (from online) that come
// before the one of the message created with id, which a test sends as a
// marker: what was published before it has arrived by then.
func eventsUntil(t *testing.T, events <-chan *parleyv1.Event, id string) []*parleyv1.Event {
	t.Helper()
	var out []*parleyv1.Event
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.GetMessageCreated().GetMessage().GetId() == id {
				return out
			}
			out = append(out, ev)
		case <-timeout:
			t.Fatal("no event of the marker message")
		}
	}
}

// A declined request disappears for the decliner; the starter's sends
// then fail; the decliner may reopen it by starting a chat.
func TestPrivacy_Decline(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
			c := alice.startChat(t, bob)
			alice.send(t, c.GetId(), "buy my stuff")
			file := servertest.Upload(t, srv, alice.c.Media, alice.token, c.GetId(), "offer.txt", "text/plain", []byte("cheap"))
			if _, err := alice.c.Message.SendMessage(ctx, tok(alice, &parleyv1.SendMessageRequest{
				ChatId: c.GetId(), ClientMessageId: servertest.UniqueName("f"), MediaIds: []string{file.GetId()},
			})); err != nil {
				t.Fatalf("SendMessage with a file: %v", err)
			}
			if _, err := bob.c.Media.GetMedia(ctx, tok(bob, &parleyv1.GetMediaRequest{MediaId: file.GetId()})); err != nil {
				t.Fatalf("GetMedia of the request's file, before declining: %v", err)
			}

			// Only the recipient declines.
			_, err := alice.c.Chat.DeclineChatRequest(ctx, tok(alice, &parleyv1.DeclineChatRequestRequest{ChatId: c.GetId()}))
			servertest.WantCode(t, err, connect.CodeFailedPrecondition)
			stranger := newPerson(t, srv, p)
			_, err = stranger.c.Chat.DeclineChatRequest(ctx, tok(stranger, &parleyv1.DeclineChatRequestRequest{ChatId: c.GetId(), Block: true}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			if got := len(bob.chatIDs(t)); got != 1 {
				t.Fatalf("refused declines hid the chat from bob (%d chats)", got)
			}

			if _, err := bob.c.Chat.DeclineChatRequest(ctx, tok(bob, &parleyv1.DeclineChatRequestRequest{ChatId: c.GetId(), Block: true})); err != nil {
				t.Fatalf("DeclineChatRequest: %v", err)
			}
			if got := bob.chatIDs(t); len(got) != 0 {
				t.Errorf("bob still lists %v after declining", got)
			}
			_, err = bob.c.Chat.GetChat(ctx, tok(bob, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			// Nor are its files, nor may bob upload to it.
			_, err = bob.c.Media.GetMedia(ctx, tok(bob, &parleyv1.GetMediaRequest{MediaId: file.GetId()}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			_, err = bob.c.Media.CreateUpload(ctx, tok(bob, &parleyv1.CreateUploadRequest{
				Target:   &parleyv1.CreateUploadRequest_ChatId{ChatId: c.GetId()},
				FileName: "a.txt", ContentType: "text/plain", Size: 1, ClientUploadId: servertest.UniqueName("u"),
			}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			if got := getChatOf(t, alice, c.GetId()).GetRequest().GetStarterId(); got != alice.id {
				t.Errorf("alice sees request %d, want her pending request unchanged", got)
			}
			servertest.WantCode(t, alice.trySend(c.GetId(), "hello?"), connect.CodePermissionDenied)
			blocks, err := bob.c.Privacy.ListBlockedUsers(ctx, tok(bob, &parleyv1.ListBlockedUsersRequest{}))
			if err != nil {
				t.Fatal(err)
			}
			if got := blocks.Msg.GetUsers(); len(got) != 1 || got[0].GetUserId() != alice.id {
				t.Errorf("bob's blocks = %v, want alice (declined with block)", got)
			}

			// Bob thinks again: unblocks and starts a chat with alice,
			// which reopens the one she started, accepted.
			if _, err := bob.c.Privacy.UnblockUser(ctx, tok(bob, &parleyv1.UnblockUserRequest{UserId: alice.id})); err != nil {
				t.Fatal(err)
			}
			again := bob.startChat(t, alice)
			if again.GetId() != c.GetId() || again.GetRequest() != nil {
				t.Fatalf("bob's CreatePrivateChat gave %v, want the same chat, accepted", again)
			}
			alice.send(t, c.GetId(), "thanks")
			if got := len(bob.messages(t, c.GetId())); got != 3 {
				t.Errorf("bob sees %d messages, want 3", got)
			}
			if _, err := bob.c.Media.GetMedia(ctx, tok(bob, &parleyv1.GetMediaRequest{MediaId: file.GetId()})); err != nil {
				t.Errorf("GetMedia of the chat's file, accepted again: %v", err)
			}
		})
	}
}

// "Who can add me to groups": everyone, users I have chatted with (an
// accepted private chat), nobody.
func TestPrivacy_GroupAdds(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			admin := newPerson(t, srv, p)
			anyone, chatted, nobody := newPerson(t, srv, p), newPerson(t, srv, p), newPerson(t, srv, p)
			chatted.settings(t, &parleyv1.UpdatePrivacySettingsRequest{GroupAdds: parleyv1.GroupAdds_GROUP_ADDS_CHATTED.Enum()})
			nobody.settings(t, &parleyv1.UpdatePrivacySettingsRequest{GroupAdds: parleyv1.GroupAdds_GROUP_ADDS_NOBODY.Enum()})
			g := servertest.GroupChat(t, admin.c.Chat, admin.token, "g")

			add := func(us ...*person) *parleyv1.AddParticipantsResponse {
				t.Helper()
				res, err := admin.c.Chat.AddParticipants(ctx, tok(admin, &parleyv1.AddParticipantsRequest{ChatId: g.GetId(), UserIds: ids32(us...)}))
				if err != nil {
					t.Fatalf("AddParticipants: %v", err)
				}
				return res.Msg
			}
			res := add(anyone, chatted, nobody)
			got := slices.Sorted(slices.Values(res.GetNotAddedUserIds()))
			if want := slices.Sorted(slices.Values(ids32(chatted, nobody))); !slices.Equal(got, want) {
				t.Errorf("not added %v, want %v", got, want)
			}
			if got, want := memberIDs(res.GetChat()), slices.Sorted(slices.Values(ids32(admin, anyone))); !slices.Equal(got, want) {
				t.Errorf("members %v, want %v", got, want)
			}

			// A pending request is not having chatted.
			dm := admin.startChat(t, chatted)
			if got := add(chatted).GetNotAddedUserIds(); !slices.Equal(got, ids32(chatted)) {
				t.Errorf("during a request: not added %v, want %v", got, ids32(chatted))
			}
			chatted.send(t, dm.GetId(), "hi admin")
			res = add(chatted, nobody)
			if got := res.GetNotAddedUserIds(); !slices.Equal(got, ids32(nobody)) {
				t.Errorf("after chatting: not added %v, want only %v", got, ids32(nobody))
			}
			if !slices.Contains(memberIDs(res.GetChat()), chatted.id) {
				t.Error("a user who chatted with the admin was not added")
			}
			if got := len(nobody.chatIDs(t)); got != 0 {
				t.Errorf("nobody is in %d chats", got)
			}
		})
	}
}

// hide_last_seen drops last_seen from others' answers and events, not
// from the user's own.
func TestPrivacy_HideLastSeen(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
	servertest.GroupChat(t, alice.c.Chat, alice.token, "g", bob.id)
	aliceEvents, closeAlice := alice.online(t)
	defer closeAlice()
	_, closeBob := bob.online(t)
	if ev := nextPresence(t, aliceEvents, bob.id); !ev.GetOnline() || ev.GetLastSeen() == nil {
		t.Fatalf("before hiding alice got %v, want bob online with a time", ev)
	}
	closeBob()
	if ev := nextPresence(t, aliceEvents, bob.id); ev.GetOnline() || ev.GetLastSeen() == nil {
		t.Fatalf("before hiding alice got %v, want bob offline with a last-seen", ev)
	}
	bob.settings(t, &parleyv1.UpdatePrivacySettingsRequest{HideLastSeen: new(true)})
	if got := alice.presence(t, bob)[bob.id]; got == nil || got.GetLastSeen() != nil {
		t.Errorf("alice's GetPresence(bob) = %v, want bob without last_seen", got)
	}
	if got := bob.presence(t, bob)[bob.id]; got.GetLastSeen() == nil {
		t.Errorf("bob's own presence %v lost its last_seen", got)
	}
	_, closeBob = bob.online(t)
	if ev := nextPresence(t, aliceEvents, bob.id); !ev.GetOnline() || ev.GetLastSeen() != nil {
		t.Errorf("alice got %v, want bob online without a time", ev)
	}
	closeBob()
	if ev := nextPresence(t, aliceEvents, bob.id); ev.GetOnline() || ev.GetLastSeen() != nil {
		t.Errorf("alice got %v, want bob offline without a last-seen", ev)
	}
}

// Each user manages its own blocks and settings only; refusals change
// nothing.
func TestPrivacyService(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
			others := []*person{newPerson(t, srv, p), newPerson(t, srv, p), newPerson(t, srv, p)}
			for _, o := range others {
				alice.block(t, o)
			}
			alice.block(t, others[0]) // twice is once

			list := func(u *person, size int32, token string) *parleyv1.ListBlockedUsersResponse {
				t.Helper()
				res, err := u.c.Privacy.ListBlockedUsers(ctx, tok(u, &parleyv1.ListBlockedUsersRequest{PageSize: size, PageToken: token}))
				if err != nil {
					t.Fatalf("ListBlockedUsers: %v", err)
				}
				return res.Msg
			}
			first := list(alice, 2, "")
			if len(first.GetUsers()) != 2 || first.GetNextPageToken() == "" {
				t.Fatalf("first page %v, want 2 users and a token", first)
			}
			second := list(alice, 2, first.GetNextPageToken())
			var got []int32
			for _, b := range append(first.GetUsers(), second.GetUsers()...) {
				got = append(got, b.GetUserId())
				if b.GetBlockedAt() == nil {
					t.Errorf("block of %d has no time", b.GetUserId())
				}
			}
			if want := []int32{others[2].id, others[1].id, others[0].id}; !slices.Equal(got, want) || second.GetNextPageToken() != "" {
				t.Errorf("blocks %v (next %q), want %v newest first on two pages", got, second.GetNextPageToken(), want)
			}
			if got := list(bob, 0, "").GetUsers(); len(got) != 0 {
				t.Errorf("bob lists %v: another user's blocks", got)
			}
			// Bob's unblock of alice's block is of bob's own: nothing.
			if _, err := bob.c.Privacy.UnblockUser(ctx, tok(bob, &parleyv1.UnblockUserRequest{UserId: others[0].id})); err != nil {
				t.Fatal(err)
			}
			if got := len(list(alice, 0, "").GetUsers()); got != 3 {
				t.Errorf("alice has %d blocks after bob's unblock, want 3", got)
			}
			if _, err := alice.c.Privacy.UnblockUser(ctx, tok(alice, &parleyv1.UnblockUserRequest{UserId: others[1].id})); err != nil {
				t.Fatal(err)
			}
			if got := len(list(alice, 0, "").GetUsers()); got != 2 {
				t.Errorf("alice has %d blocks after unblocking one, want 2", got)
			}

			_, err := alice.c.Privacy.BlockUser(ctx, tok(alice, &parleyv1.BlockUserRequest{UserId: alice.id}))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			_, err = alice.c.Privacy.BlockUser(ctx, tok(alice, &parleyv1.BlockUserRequest{UserId: 1 << 30}))
			servertest.WantCode(t, err, connect.CodeNotFound)
			_, err = alice.c.Privacy.BlockUser(ctx, servertest.WithToken(&parleyv1.BlockUserRequest{UserId: bob.id}, ""))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			_, err = alice.c.Privacy.ListBlockedUsers(ctx, tok(alice, &parleyv1.ListBlockedUsersRequest{PageToken: "nope!"}))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			if got := len(list(alice, 0, "").GetUsers()); got != 2 {
				t.Errorf("alice has %d blocks after refused calls, want 2", got)
			}

			// Settings: defaults, partial updates, validation.
			get := func(u *person) *parleyv1.PrivacySettings {
				t.Helper()
				res, err := u.c.Privacy.GetPrivacySettings(ctx, tok(u, &parleyv1.GetPrivacySettingsRequest{}))
				if err != nil {
					t.Fatalf("GetPrivacySettings: %v", err)
				}
				return res.Msg.GetSettings()
			}
			if s := get(bob); s.GetGroupAdds() != parleyv1.GroupAdds_GROUP_ADDS_EVERYONE ||
				s.GetPrivateChats() != parleyv1.PrivateChats_PRIVATE_CHATS_EVERYONE || s.GetHideLastSeen() {
				t.Errorf("defaults = %v", s)
			}
			bob.settings(t, &parleyv1.UpdatePrivacySettingsRequest{HideLastSeen: new(true)})
			bob.settings(t, &parleyv1.UpdatePrivacySettingsRequest{PrivateChats: parleyv1.PrivateChats_PRIVATE_CHATS_GROUPS.Enum()})
			want := &parleyv1.PrivacySettings{
				GroupAdds: parleyv1.GroupAdds_GROUP_ADDS_EVERYONE, PrivateChats: parleyv1.PrivateChats_PRIVATE_CHATS_GROUPS, HideLastSeen: true,
			}
			if s := get(bob); s.String() != want.String() {
				t.Errorf("after two partial updates: %v, want %v", s, want)
			}
			_, err = bob.c.Privacy.UpdatePrivacySettings(ctx, tok(bob, &parleyv1.UpdatePrivacySettingsRequest{
				GroupAdds: parleyv1.GroupAdds_GROUP_ADDS_UNSPECIFIED.Enum(), HideLastSeen: new(false),
			}))
			servertest.WantCode(t, err, connect.CodeInvalidArgument)
			_, err = bob.c.Privacy.UpdatePrivacySettings(ctx, servertest.WithToken(&parleyv1.UpdatePrivacySettingsRequest{HideLastSeen: new(false)}, ""))
			servertest.WantCode(t, err, connect.CodeUnauthenticated)
			if s := get(bob); s.String() != want.String() {
				t.Errorf("after refused updates: %v, want %v", s, want)
			}
			if s := get(alice); s.GetHideLastSeen() {
				t.Error("bob's update changed alice's settings")
			}

			// PRIVATE_CHATS_GROUPS: only users sharing a group may start.
			_, err = alice.c.Chat.CreatePrivateChat(ctx, tok(alice, &parleyv1.CreatePrivateChatRequest{PeerId: bob.id}))
			servertest.WantCode(t, err, connect.CodePermissionDenied)
			servertest.GroupChat(t, bob.c.Chat, bob.token, "shared", alice.id)
			alice.startChat(t, bob)
		})
	}
}

// TestPrivacy_RetryAfterBlock: a send the server stored, whose answer was
// lost, is answered on its retry with the stored message, though the
// other member blocked the sender (or declined its request) since; a new
// send is refused.
func TestPrivacy_RetryAfterBlock(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, blocks, declines := newPerson(t, srv, p), newPerson(t, srv, p), newPerson(t, srv, p)
			toBlocker, toDecliner := alice.startChat(t, blocks).GetId(), alice.startChat(t, declines).GetId()
			sendAs := func(chatID, key string) (*parleyv1.Message, error) {
				res, err := alice.c.Message.SendMessage(ctx, tok(alice, &parleyv1.SendMessageRequest{ChatId: chatID, ClientMessageId: key, Text: "lost answer"}))
				if err != nil {
					return nil, err
				}
				return res.Msg.GetMessage(), nil
			}
			first, err := sendAs(toBlocker, "k1")
			if err != nil {
				t.Fatal(err)
			}
			firstDeclined, err := sendAs(toDecliner, "k1")
			if err != nil {
				t.Fatal(err)
			}
			blocks.block(t, alice)
			if _, err := declines.c.Chat.DeclineChatRequest(ctx, tok(declines, &parleyv1.DeclineChatRequestRequest{ChatId: toDecliner})); err != nil {
				t.Fatalf("DeclineChatRequest: %v", err)
			}
			for _, c := range []struct {
				chatID string
				first  *parleyv1.Message
			}{{toBlocker, first}, {toDecliner, firstDeclined}} {
				again, err := sendAs(c.chatID, "k1")
				if err != nil {
					t.Errorf("the retry: %v", err)
				} else if again.GetId() != c.first.GetId() || again.GetSeq() != c.first.GetSeq() {
					t.Errorf("the retry answered %s seq %d, want the stored %s seq %d", again.GetId(), again.GetSeq(), c.first.GetId(), c.first.GetSeq())
				}
				_, err = sendAs(c.chatID, "k2")
				servertest.WantCode(t, err, connect.CodePermissionDenied)
			}
		})
	}
}

// A reply refused for what it carries (a reply to no message, a file
// that is not the sender's) leaves the request as it was: the starter
// gets no acceptance, no ticks, no presence.
func TestPrivacy_RefusedReplyKeepsRequest(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	for _, p := range servertest.Protocols[:2] {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newPerson(t, srv, p), newPerson(t, srv, p)
			c := alice.startChat(t, bob)
			m := alice.send(t, c.GetId(), "hello, stranger")
			if _, err := bob.c.Message.MarkRead(ctx, tok(bob, &parleyv1.MarkReadRequest{ChatId: c.GetId(), UpToSeq: m.GetSeq()})); err != nil {
				t.Fatalf("MarkRead: %v", err)
			}
			for _, req := range []*parleyv1.SendMessageRequest{
				{ChatId: c.GetId(), ClientMessageId: servertest.UniqueName("re"), Text: "re", ReplyToMessageId: bson.NewObjectID().Hex()},
				{ChatId: c.GetId(), ClientMessageId: servertest.UniqueName("file"), Text: "file", MediaIds: []string{bson.NewObjectID().Hex()}},
			} {
				_, err := bob.c.Message.SendMessage(ctx, tok(bob, req))
				if err == nil {
					t.Fatalf("SendMessage(%v) succeeded, want refused", req)
				}
				if code := connect.CodeOf(err); code == connect.CodeInternal || code == connect.CodeUnknown {
					t.Fatalf("SendMessage(%v): %v, want a refusal", req, err)
				}
				if got := getChatOf(t, alice, c.GetId()).GetRequest(); got.GetStarterId() != alice.id {
					t.Fatalf("after bob's refused send (%v) the request is %v, want alice's still", err, got)
				}
				if got := alice.messages(t, c.GetId())[0].GetStatus(); got != parleyv1.MessageStatus_MESSAGE_STATUS_SENT {
					t.Errorf("after bob's refused send alice sees %v, want SENT", got)
				}
			}
		})
	}
}

// Users whose settings refuse an add do not count against the group's
// size: a group one short of full takes the one who may be added.
func TestPrivacy_RefusedAddsDoNotCount(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[0]
	admin, anyone, nobody := newPerson(t, srv, p), newPerson(t, srv, p), newPerson(t, srv, p)
	nobody.settings(t, &parleyv1.UpdatePrivacySettingsRequest{GroupAdds: parleyv1.GroupAdds_GROUP_ADDS_NOBODY.Enum()})
	g := servertest.GroupChat(t, admin.c.Chat, admin.token, "almost full", seedUsers(t, srv, chat.MaxGroupSize-2)...)
	res, err := admin.c.Chat.AddParticipants(ctx, tok(admin, &parleyv1.AddParticipantsRequest{ChatId: g.GetId(), UserIds: ids32(anyone, nobody)}))
	if err != nil {
		t.Fatalf("AddParticipants of one who may be added and one who may not, to a group one short of full: %v", err)
	}
	if got := res.Msg.GetNotAddedUserIds(); !slices.Equal(got, ids32(nobody)) {
		t.Errorf("not added %v, want %v", got, ids32(nobody))
	}
	if got := len(res.Msg.GetChat().GetParticipants()); got != chat.MaxGroupSize {
		t.Errorf("the group has %d members, want %d", got, chat.MaxGroupSize)
	}
}

// In a group too, a member who blocked the caller sees no typing from it;
// the others do.
func TestPrivacy_GroupTypingSkipsBlockers(t *testing.T) {
	srv := servertest.New(t)
	ctx := context.Background()
	p := servertest.Protocols[1]
	alice, blocker, friend := newPerson(t, srv, p), newPerson(t, srv, p), newPerson(t, srv, p)
	g := servertest.GroupChat(t, alice.c.Chat, alice.token, "g", blocker.id, friend.id)
	blocker.block(t, alice)
	blockerEvents, closeBlocker := blocker.online(t)
	defer closeBlocker()
	friendEvents, closeFriend := friend.online(t)
	defer closeFriend()
	if _, err := alice.c.Message.SendTyping(ctx, tok(alice, &parleyv1.SendTypingRequest{ChatId: g.GetId(), Typing: true})); err != nil {
		t.Fatalf("SendTyping: %v", err)
	}
	// A marker after the typing: the blocker would have heard of it first.
	marker := alice.send(t, g.GetId(), "marker")
	heard := func(events <-chan *parleyv1.Event) bool {
		return slices.ContainsFunc(eventsUntil(t, events, marker.GetId()), func(ev *parleyv1.Event) bool {
			return ev.GetTyping().GetUserId() == alice.id
		})
	}
	if heard(blockerEvents) {
		t.Error("the member who blocked alice saw her typing in the group")
	}
	if !heard(friendEvents) {
		t.Error("another member did not see alice typing in the group")
	}
}
