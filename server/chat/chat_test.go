package chat_test

import (
	"context"
	"slices"
	"sync"
	"testing"

	"connectrpc.com/connect"

	"google.golang.org/protobuf/proto"

	parleyv1 "github.com/parley-chat/parley/gen/parley/v1"
	"github.com/parley-chat/parley/server/servertest"
)

var twoProtocols = []servertest.Protocol{servertest.Protocols[0], servertest.Protocols[1]}

func TestChatService_CreatePrivateChat(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			alice, bob := newUser(t, srv, p), newUser(t, srv, p)
			first, err := alice.chats.CreatePrivateChat(context.Background(), req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: bob.id}))
			if err != nil {
				t.Fatalf("CreatePrivateChat: %v", err)
			}
			c := first.Msg.GetChat()
			if !first.Msg.GetCreated() || c.GetType() != parleyv1.ChatType_CHAT_TYPE_PRIVATE || len(c.GetParticipants()) != 2 {
				t.Fatalf("first CreatePrivateChat = %v", first.Msg)
			}
			again, err := bob.chats.CreatePrivateChat(context.Background(), req(bob, &parleyv1.CreatePrivateChatRequest{PeerId: alice.id}))
			if err != nil {
				t.Fatalf("CreatePrivateChat from the peer: %v", err)
			}
			if again.Msg.GetCreated() || again.Msg.GetChat().GetId() != c.GetId() {
				t.Errorf("peer's CreatePrivateChat = %v, want the existing chat %s", again.Msg, c.GetId())
			}

			_, err = alice.chats.CreatePrivateChat(context.Background(), req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: alice.id}))
			wantCode(t, err, connect.CodeInvalidArgument)
			_, err = alice.chats.CreatePrivateChat(context.Background(), req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: 1 << 30}))
			wantCode(t, err, connect.CodeNotFound)
		})
	}
	t.Run("racing creators agree on one chat", func(t *testing.T) {
		p := servertest.Protocols[1]
		alice, bob := newUser(t, srv, p), newUser(t, srv, p)
		var mu sync.Mutex
		ids := map[string]int{}
		var wg sync.WaitGroup
		for i := range 10 {
			from, to := alice, bob
			if i%2 == 1 {
				from, to = bob, alice
			}
			wg.Go(func() {
				res, err := from.chats.CreatePrivateChat(context.Background(), req(from, &parleyv1.CreatePrivateChatRequest{PeerId: to.id}))
				if err != nil {
					t.Errorf("CreatePrivateChat: %v", err)
					return
				}
				mu.Lock()
				ids[res.Msg.GetChat().GetId()]++
				mu.Unlock()
			})
		}
		wg.Wait()
		if len(ids) != 1 {
			t.Errorf("10 racing creates made chats %v, want one", ids)
		}
		if n := chatCount(t, alice); n != 1 {
			t.Errorf("alice lists %d chats, want 1", n)
		}
	})
}

func TestChatService_CreateGroupChat(t *testing.T) {
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, m1, m2 := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			name := `{"$ne": null} '; DROP TABLE chats; -- Ünïcødé`
			c := group(t, admin, name, m1, m2, admin)
			if c.GetName() != name || c.GetType() != parleyv1.ChatType_CHAT_TYPE_GROUP || c.GetRole() != parleyv1.Role_ROLE_ADMIN {
				t.Errorf("group = %v, want the name stored literally and the caller as admin", c)
			}
			want := map[int32]parleyv1.Role{admin.id: parleyv1.Role_ROLE_ADMIN, m1.id: parleyv1.Role_ROLE_MEMBER, m2.id: parleyv1.Role_ROLE_MEMBER}
			if got := roles(c); !mapsEqual(got, want) {
				t.Errorf("participants = %v, want %v", got, want)
			}
			got, err := m1.chats.GetChat(context.Background(), req(m1, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
			if err != nil {
				t.Fatalf("member GetChat: %v", err)
			}
			if got.Msg.GetChat().GetRole() != parleyv1.Role_ROLE_MEMBER {
				t.Errorf("member's role = %v", got.Msg.GetChat().GetRole())
			}

			before := chatCount(t, admin)
			for _, tc := range []struct {
				name string
				req  *parleyv1.CreateGroupChatRequest
				want connect.Code
			}{
				{"unknown member", &parleyv1.CreateGroupChatRequest{Name: "g", MemberIds: []int32{m1.id, 1 << 30}}, connect.CodeNotFound},
				{"empty name", &parleyv1.CreateGroupChatRequest{Name: "", MemberIds: []int32{m1.id}}, connect.CodeInvalidArgument},
				{"name over 100 characters", &parleyv1.CreateGroupChatRequest{Name: string(make([]rune, 101)), MemberIds: []int32{m1.id}}, connect.CodeInvalidArgument},
				{"duplicate member ids", &parleyv1.CreateGroupChatRequest{Name: "g", MemberIds: []int32{m1.id, m1.id}}, connect.CodeInvalidArgument},
				{"over 500 members", &parleyv1.CreateGroupChatRequest{Name: "g", MemberIds: seqIDs(500)}, connect.CodeInvalidArgument},
			} {
				_, err := admin.chats.CreateGroupChat(context.Background(), req(admin, tc.req))
				if connect.CodeOf(err) != tc.want {
					t.Errorf("%s: err = %v, want %v", tc.name, err, tc.want)
				}
			}
			if after := chatCount(t, admin); after != before {
				t.Errorf("chats: %d before the bad requests, %d after", before, after)
			}
		})
	}
}

func seqIDs(n int) []int32 {
	ids := make([]int32, n)
	for i := range ids {
		ids[i] = int32(i + 1)
	}
	return ids
}

func mapsEqual[K, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestChatService_Authorization runs every chat and message method as an
// outsider, a removed member, a member and an admin of a group.
func TestChatService_Authorization(t *testing.T) {
	servertest.SkipOnEmbeddedMongo(t) // the same checks on any store; minutes on FerretDB 1.x
	srv := servertest.New(t)
	for _, p := range twoProtocols {
		t.Run(p.Name, func(t *testing.T) {
			admin, member, removed, outsider, extra := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
			// fresh makes a group for one call, so that calls that change it
			// do not disturb each other.
			// fresh makes a group for one call, with a message from the
			// member, so that calls that change it do not disturb each other.
			var msgID string
			fresh := func() string {
				c := group(t, admin, "team", member, removed)
				msgID = send(t, member, c.GetId(), "hello").GetId()
				if _, err := admin.chats.RemoveParticipant(context.Background(), req(admin, &parleyv1.RemoveParticipantRequest{ChatId: c.GetId(), UserId: removed.id})); err != nil {
					t.Fatalf("RemoveParticipant: %v", err)
				}
				return c.GetId()
			}
			ok := connect.Code(0)
			calls := []struct {
				name string
				call func(u *user, chatID string) error
				// want is the code for outsider, removed, member, admin.
				want [4]connect.Code
			}{
				{"GetChat", func(u *user, id string) error {
					_, err := u.chats.GetChat(context.Background(), req(u, &parleyv1.GetChatRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, 0, 0}},
				{"UpdateChat", func(u *user, id string) error {
					_, err := u.chats.UpdateChat(context.Background(), req(u, &parleyv1.UpdateChatRequest{ChatId: id, Name: proto.String("renamed")}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, 0}},
				{"AddParticipants", func(u *user, id string) error {
					_, err := u.chats.AddParticipants(context.Background(), req(u, &parleyv1.AddParticipantsRequest{ChatId: id, UserIds: []int32{extra.id}}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, 0}},
				{"RemoveParticipant", func(u *user, id string) error {
					_, err := u.chats.RemoveParticipant(context.Background(), req(u, &parleyv1.RemoveParticipantRequest{ChatId: id, UserId: member.id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, 0}},
				{"SetParticipantRole", func(u *user, id string) error {
					_, err := u.chats.SetParticipantRole(context.Background(), req(u, &parleyv1.SetParticipantRoleRequest{ChatId: id, UserId: member.id, Role: parleyv1.Role_ROLE_ADMIN}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, 0}},
				{"LeaveChat", func(u *user, id string) error {
					_, err := u.chats.LeaveChat(context.Background(), req(u, &parleyv1.LeaveChatRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, 0, connect.CodeFailedPrecondition}},
				{"SendMessage", func(u *user, id string) error {
					_, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{ChatId: id, ClientMessageId: "k", Text: "hi"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"ListMessages", func(u *user, id string) error {
					_, err := u.msgs.ListMessages(context.Background(), req(u, &parleyv1.ListMessagesRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"EditMessage", func(u *user, id string) error {
					_, err := u.msgs.EditMessage(context.Background(), req(u, &parleyv1.EditMessageRequest{ChatId: id, MessageId: msgID, Text: "edited"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, connect.CodePermissionDenied}},
				{"DeleteMessage", func(u *user, id string) error {
					_, err := u.msgs.DeleteMessage(context.Background(), req(u, &parleyv1.DeleteMessageRequest{ChatId: id, MessageId: msgID}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"MarkDelivered", func(u *user, id string) error {
					_, err := u.msgs.MarkDelivered(context.Background(), req(u, &parleyv1.MarkDeliveredRequest{ChatId: id, UpToSeq: 1}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"MarkRead", func(u *user, id string) error {
					_, err := u.msgs.MarkRead(context.Background(), req(u, &parleyv1.MarkReadRequest{ChatId: id, UpToSeq: 1}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"SendMessage/reply", func(u *user, id string) error {
					_, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{ChatId: id, ClientMessageId: "r", Text: "re", ReplyToMessageId: msgID}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"SendMessage/forward", func(u *user, id string) error {
					// Into a chat of the caller's own, from this one.
					own := group(t, u, "own")
					_, err := u.msgs.SendMessage(context.Background(), req(u, &parleyv1.SendMessageRequest{ChatId: own.GetId(), ClientMessageId: "f",
						Forward: &parleyv1.ForwardSource{ChatId: id, MessageId: msgID}}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"AddReaction", func(u *user, id string) error {
					_, err := u.msgs.AddReaction(context.Background(), req(u, &parleyv1.AddReactionRequest{ChatId: id, MessageId: msgID, Emoji: "👍"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"RemoveReaction", func(u *user, id string) error {
					_, err := u.msgs.RemoveReaction(context.Background(), req(u, &parleyv1.RemoveReactionRequest{ChatId: id, MessageId: msgID, Emoji: "👍"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"ListReactions", func(u *user, id string) error {
					_, err := u.msgs.ListReactions(context.Background(), req(u, &parleyv1.ListReactionsRequest{ChatId: id, MessageId: msgID, Emoji: "👍"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"PinMessage", func(u *user, id string) error {
					_, err := u.msgs.PinMessage(context.Background(), req(u, &parleyv1.PinMessageRequest{ChatId: id, MessageId: msgID}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, ok}},
				{"UnpinMessage", func(u *user, id string) error {
					_, err := u.msgs.UnpinMessage(context.Background(), req(u, &parleyv1.UnpinMessageRequest{ChatId: id, MessageId: msgID}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, ok}},
				{"ListPinnedMessages", func(u *user, id string) error {
					_, err := u.msgs.ListPinnedMessages(context.Background(), req(u, &parleyv1.ListPinnedMessagesRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"GetMessageReceipts", func(u *user, id string) error {
					_, err := u.msgs.GetMessageReceipts(context.Background(), req(u, &parleyv1.GetMessageReceiptsRequest{ChatId: id, MessageId: msgID}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"DeleteMessagesForMe", func(u *user, id string) error {
					_, err := u.msgs.DeleteMessagesForMe(context.Background(), req(u, &parleyv1.DeleteMessagesForMeRequest{ChatId: id, MessageIds: []string{msgID}}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"SearchMessages", func(u *user, id string) error {
					_, err := u.msgs.SearchMessages(context.Background(), req(u, &parleyv1.SearchMessagesRequest{ChatId: id, Query: "hello"}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"UpdateChatSettings", func(u *user, id string) error {
					_, err := u.chats.UpdateChatSettings(context.Background(), req(u, &parleyv1.UpdateChatSettingsRequest{ChatId: id, Archived: proto.Bool(true)}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, ok, ok}},
				{"CreateInviteLink", func(u *user, id string) error {
					_, err := u.chats.CreateInviteLink(context.Background(), req(u, &parleyv1.CreateInviteLinkRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, ok}},
				{"ListInviteLinks", func(u *user, id string) error {
					_, err := u.chats.ListInviteLinks(context.Background(), req(u, &parleyv1.ListInviteLinksRequest{ChatId: id}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, ok}},
				{"RevokeInviteLink", func(u *user, id string) error {
					link := createInvite(t, admin, &parleyv1.CreateInviteLinkRequest{ChatId: id})
					_, err := u.chats.RevokeInviteLink(context.Background(), req(u, &parleyv1.RevokeInviteLinkRequest{ChatId: id, Code: link.GetCode()}))
					return err
				}, [4]connect.Code{connect.CodeNotFound, connect.CodeNotFound, connect.CodePermissionDenied, ok}},
			}
			callers := []struct {
				name string
				u    *user
			}{{"outsider", outsider}, {"removed member", removed}, {"member", member}, {"admin", admin}}
			for _, c := range calls {
				for i, who := range callers {
					t.Run(c.name+"/"+who.name, func(t *testing.T) {
						id := fresh()
						before, err := admin.chats.GetChat(context.Background(), req(admin, &parleyv1.GetChatRequest{ChatId: id}))
						if err != nil {
							t.Fatal(err)
						}
						err = c.call(who.u, id)
						if want := c.want[i]; want == 0 {
							if err != nil {
								t.Fatalf("err = %v, want success", err)
							}
							return
						} else {
							wantCode(t, err, want)
						}
						after, err := admin.chats.GetChat(context.Background(), req(admin, &parleyv1.GetChatRequest{ChatId: id}))
						if err != nil {
							t.Fatal(err)
						}
						if before.Msg.GetChat().GetName() != after.Msg.GetChat().GetName() || !mapsEqual(roles(before.Msg.GetChat()), roles(after.Msg.GetChat())) ||
							before.Msg.GetChat().GetLastMessage().GetSeq() != after.Msg.GetChat().GetLastMessage().GetSeq() {
							t.Errorf("a refused call changed the chat: %v -> %v", before.Msg.GetChat(), after.Msg.GetChat())
						}
						msgs := listAll(t, admin, id)
						if len(msgs) != 1 || msgs[0].GetText() != "hello" || msgs[0].GetDeleted() ||
							len(msgs[0].GetReactions()) > 0 || msgs[0].GetPin() != nil {
							t.Errorf("a refused call changed the messages: %v", msgs)
						}
						links, err := admin.chats.ListInviteLinks(context.Background(), req(admin, &parleyv1.ListInviteLinksRequest{ChatId: id}))
						if err != nil {
							t.Fatal(err)
						}
						for _, l := range links.Msg.GetInviteLinks() {
							if l.GetRevokedAt() != nil {
								t.Errorf("a refused call revoked an invite link")
							}
						}
						if n := len(links.Msg.GetInviteLinks()); n > 0 && c.name != "RevokeInviteLink" {
							t.Errorf("a refused call made %d invite links", n)
						}
					})
				}
			}
		})
	}
}

func TestChatService_PrivateChatsHaveNothingToChange(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	alice, bob, carol := newUser(t, srv, p), newUser(t, srv, p), newUser(t, srv, p)
	res, err := alice.chats.CreatePrivateChat(context.Background(), req(alice, &parleyv1.CreatePrivateChatRequest{PeerId: bob.id}))
	if err != nil {
		t.Fatal(err)
	}
	id := res.Msg.GetChat().GetId()
	ctx := context.Background()
	_, err = alice.chats.UpdateChat(ctx, req(alice, &parleyv1.UpdateChatRequest{ChatId: id, Name: proto.String("x")}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = alice.chats.AddParticipants(ctx, req(alice, &parleyv1.AddParticipantsRequest{ChatId: id, UserIds: []int32{carol.id}}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = alice.chats.RemoveParticipant(ctx, req(alice, &parleyv1.RemoveParticipantRequest{ChatId: id, UserId: bob.id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = alice.chats.SetParticipantRole(ctx, req(alice, &parleyv1.SetParticipantRoleRequest{ChatId: id, UserId: bob.id, Role: parleyv1.Role_ROLE_ADMIN}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = alice.chats.LeaveChat(ctx, req(alice, &parleyv1.LeaveChatRequest{ChatId: id}))
	wantCode(t, err, connect.CodeFailedPrecondition)
	_, err = carol.chats.GetChat(ctx, req(carol, &parleyv1.GetChatRequest{ChatId: id}))
	wantCode(t, err, connect.CodeNotFound)
}

func TestChatService_Admins(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[1]
	ctx := context.Background()
	t.Run("the last admin cannot leave or step down", func(t *testing.T) {
		admin, m := newUser(t, srv, p), newUser(t, srv, p)
		c := group(t, admin, "g", m)
		_, err := admin.chats.LeaveChat(ctx, req(admin, &parleyv1.LeaveChatRequest{ChatId: c.GetId()}))
		wantCode(t, err, connect.CodeFailedPrecondition)
		_, err = admin.chats.SetParticipantRole(ctx, req(admin, &parleyv1.SetParticipantRoleRequest{ChatId: c.GetId(), UserId: admin.id, Role: parleyv1.Role_ROLE_MEMBER}))
		wantCode(t, err, connect.CodeFailedPrecondition)
		_, err = admin.chats.RemoveParticipant(ctx, req(admin, &parleyv1.RemoveParticipantRequest{ChatId: c.GetId(), UserId: admin.id}))
		wantCode(t, err, connect.CodeFailedPrecondition)

		// Promote the member; then the first admin may go.
		if _, err := admin.chats.SetParticipantRole(ctx, req(admin, &parleyv1.SetParticipantRoleRequest{ChatId: c.GetId(), UserId: m.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
			t.Fatal(err)
		}
		if _, err := admin.chats.LeaveChat(ctx, req(admin, &parleyv1.LeaveChatRequest{ChatId: c.GetId()})); err != nil {
			t.Fatalf("LeaveChat after promoting another admin: %v", err)
		}
		got, err := m.chats.GetChat(ctx, req(m, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		if want := map[int32]parleyv1.Role{m.id: parleyv1.Role_ROLE_ADMIN}; !mapsEqual(roles(got.Msg.GetChat()), want) {
			t.Errorf("participants = %v, want %v", roles(got.Msg.GetChat()), want)
		}
		_, err = admin.chats.GetChat(ctx, req(admin, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
		wantCode(t, err, connect.CodeNotFound)
	})
	t.Run("two admins demoting each other keep one", func(t *testing.T) {
		a, b := newUser(t, srv, p), newUser(t, srv, p)
		c := group(t, a, "g", b)
		if _, err := a.chats.SetParticipantRole(ctx, req(a, &parleyv1.SetParticipantRoleRequest{ChatId: c.GetId(), UserId: b.id, Role: parleyv1.Role_ROLE_ADMIN})); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for _, pair := range [][2]*user{{a, b}, {b, a}} {
			wg.Go(func() {
				_, err := pair[0].chats.SetParticipantRole(ctx, req(pair[0], &parleyv1.SetParticipantRoleRequest{ChatId: c.GetId(), UserId: pair[1].id, Role: parleyv1.Role_ROLE_MEMBER}))
				if err != nil && connect.CodeOf(err) != connect.CodeFailedPrecondition && connect.CodeOf(err) != connect.CodePermissionDenied {
					t.Errorf("SetParticipantRole: %v", err)
				}
			})
		}
		wg.Wait()
		got, err := a.chats.GetChat(ctx, req(a, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(mapsValues(roles(got.Msg.GetChat())), parleyv1.Role_ROLE_ADMIN) {
			t.Errorf("participants = %v, want an admin left", roles(got.Msg.GetChat()))
		}
	})
	t.Run("removed member loses access at once", func(t *testing.T) {
		admin, m := newUser(t, srv, p), newUser(t, srv, p)
		c := group(t, admin, "g", m)
		res, err := admin.chats.RemoveParticipant(ctx, req(admin, &parleyv1.RemoveParticipantRequest{ChatId: c.GetId(), UserId: m.id}))
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := roles(res.Msg.GetChat())[m.id]; ok {
			t.Errorf("participants after removal = %v, still list the member", roles(res.Msg.GetChat()))
		}
		_, err = m.chats.GetChat(ctx, req(m, &parleyv1.GetChatRequest{ChatId: c.GetId()}))
		wantCode(t, err, connect.CodeNotFound)
		if n := chatCount(t, m); n != 0 {
			t.Errorf("removed member lists %d chats, want 0", n)
		}
	})
}

func mapsValues[K comparable, V any](m map[K]V) []V {
	var out []V
	for _, v := range m {
		out = append(out, v)
	}
	return out
}

func TestChatService_ListChats(t *testing.T) {
	srv := servertest.New(t)
	p := servertest.Protocols[0]
	ctx := context.Background()
	owner := newUser(t, srv, p)
	var made []string
	for range 7 {
		made = append(made, group(t, owner, "g", newUser(t, srv, p)).GetId())
	}
	// Renaming the oldest makes it the most recently active.
	if _, err := owner.chats.UpdateChat(ctx, req(owner, &parleyv1.UpdateChatRequest{ChatId: made[0], Name: proto.String("renamed")})); err != nil {
		t.Fatal(err)
	}
	want := append(slices.Clone(made[1:]), made[0])
	slices.Reverse(want)

	var got []string
	token := ""
	for pages := 0; ; pages++ {
		if pages > 5 {
			t.Fatal("too many pages")
		}
		res, err := owner.chats.ListChats(ctx, req(owner, &parleyv1.ListChatsRequest{PageSize: 3, PageToken: token}))
		if err != nil {
			t.Fatalf("ListChats: %v", err)
		}
		for _, c := range res.Msg.GetChats() {
			got = append(got, c.GetId())
		}
		if token = res.Msg.GetNextPageToken(); token == "" {
			break
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("chats = %v, want %v (newest activity first, each once)", got, want)
	}
	_, err := owner.chats.ListChats(ctx, req(owner, &parleyv1.ListChatsRequest{PageToken: "bogus"}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = owner.chats.GetChat(ctx, req(owner, &parleyv1.GetChatRequest{ChatId: "not-an-id"}))
	wantCode(t, err, connect.CodeInvalidArgument)
	_, err = owner.chats.GetChat(ctx, req(owner, &parleyv1.GetChatRequest{ChatId: `{"$ne": null}`}))
	wantCode(t, err, connect.CodeInvalidArgument)
}
